"""Silence libraries' native loggers without hiding our own messages.

mediapipe's C++ graphs write absl/glog lines (``W0000 … inference_feedback_manager.cc``) straight to
file descriptor 2, and no Python setting turns them off. :func:`native_stderr_silenced` points fd 2
at ``/dev/null`` while such code runs and points Python's ``sys.stderr`` at a copy of the real
stderr meanwhile, so Python warnings, logging (handlers on stderr are re-pointed too) and progress bars stay visible. Nested and
concurrent uses (threads) share one redirection; ``VASA3D_NATIVE_LOGS=1`` switches it off.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_state: dict = {"depth": 0, "saved_fd": None, "python_stderr": None, "replacement": None}


def _begin() -> None:
    with _lock:
        _state["depth"] += 1
        if _state["depth"] > 1:
            return
        try:
            sys.stderr.flush()
        except (AttributeError, ValueError, OSError):
            pass
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        _state["saved_fd"] = saved
        _state["python_stderr"] = sys.stderr
        if getattr(sys.stderr, "fileno", None) is not None and _writes_to_fd2(sys.stderr):
            replacement = io.TextIOWrapper(os.fdopen(os.dup(saved), "wb", buffering=0), encoding="utf-8",
                                           errors="backslashreplace", line_buffering=True, write_through=True)
            _state["replacement"] = replacement
            _state["handlers"] = _repoint_handlers(sys.stderr, replacement)
            sys.stderr = replacement


def _end() -> None:
    with _lock:
        _state["depth"] -= 1
        if _state["depth"] > 0:
            return
        replacement = _state.pop("replacement", None)
        _state["replacement"] = None
        if replacement is not None:
            sys.stderr = _state["python_stderr"]
            for handler in _state.pop("handlers", []):
                handler.setStream(sys.stderr)
            with contextlib.suppress(OSError, ValueError):
                replacement.close()
        os.dup2(_state["saved_fd"], 2)
        os.close(_state["saved_fd"])
        _state["saved_fd"] = None


def _repoint_handlers(old: object, new: object) -> list[logging.StreamHandler]:
    """Point logging handlers that write to ``old`` (the real stderr) at ``new``; returns those moved."""
    moved = []
    loggers = [logging.getLogger(), *(item for item in logging.Logger.manager.loggerDict.values()
                                      if isinstance(item, logging.Logger))]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is old and handler not in moved:
                handler.setStream(new)
                moved.append(handler)
    return moved


def _writes_to_fd2(stream: object) -> bool:
    try:
        return stream.fileno() == 2  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False  # captured (pytest), a notebook, a file: Python's stderr is not fd 2 anyway


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Run the block with fd 2 sent to ``/dev/null``; Python's own ``sys.stderr`` keeps working."""
    if os.environ.get("VASA3D_NATIVE_LOGS", "") not in ("", "0"):
        yield
        return
    _begin()
    try:
        yield
    finally:
        _end()


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("💡 Tip")


def quiet_library_chatter() -> None:
    """Drop library messages that say nothing about the user's run: Lightning's product tips, a
    deprecation warning Lightning raises about its own use of torch's pytree (not the user's code), and
    its advice on checkpointing manual optimisation (with a code sample), torch's "no CUDA runtime" note."""
    import warnings

    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # Our systems optimise manually and checkpoint after the step; resuming is tested bit for bit.
    warnings.filterwarnings("ignore", message=r"Using ModelCheckpoint with manual optimization")
    # torch says no CUDA runtime exists when gsplat or our CPU extension imports cpp_extension: true, and
    # beside the point on a CPU machine (on a GPU machine it is not said)
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    for name in ("lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropAdverts) for f in logger.filters):
            logger.addFilter(_DropAdverts())
        for handler in logger.handlers:
            if not any(isinstance(f, _DropAdverts) for f in handler.filters):
                handler.addFilter(_DropAdverts())
