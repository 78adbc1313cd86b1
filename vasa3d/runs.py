"""Run folders: where a job's outputs live, and which checkpoint ``--ckpt_path last`` means.

A run is one folder that holds everything a job writes: TensorBoard events, ``checkpoints/``,
``config.yaml``, the turntable, ``head.ply``, videos and ``metrics.json``::

    <root>/version_<N>/                  root = --trainer.default_root_dir, else
    outputs/<config>/<subject>/            config = the --config files' stems joined by "+"
                                           subject = the portrait's stem ("astronaut" when embedded)

A new fit takes the next free ``version_N``; ``--ckpt_path last`` (fit, validate, test, predict)
takes the newest version of the same root that has ``checkpoints/last.ckpt`` and continues in it,
so two subjects (or an ablation overlay and its base) never share or resume each other's runs.
This module knows paths only; :mod:`vasa3d.cli` applies them to the Lightning config.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

OUTPUTS = Path("outputs")
EMBEDDED_SUBJECT = "astronaut"  # datamodules' `portrait: null`: scikit-image's astronaut
_VERSION = re.compile(r"^version_(\d+)$")


def slug(text: str) -> str:
    """A folder-safe name: letters, digits, ``.``, ``_``, ``-`` and ``+``; anything else becomes ``_``."""
    cleaned = re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("._")
    return cleaned or "run"


def config_name(configs: Sequence[str | Path], fallback: str = "run") -> str:
    """``fit_subject`` for one config, ``fit_subject+no_residual_mlp`` with an overlay."""
    stems = [Path(str(path)).stem for path in configs]
    return slug("+".join(stems)) if stems else slug(fallback)


def subject_name(portrait: str | Path | None = None, portraits: Iterable[str | Path | None] | None = None) -> str:
    """The subject a datamodule fits: the portrait's file stem, ``astronaut`` for the embedded one."""
    items = list(portraits) if portraits else [portrait]
    names = [EMBEDDED_SUBJECT if item is None else slug(Path(str(item)).stem) for item in items]
    return names[0] if len(names) == 1 else f"{names[0]}+{len(names) - 1}_more"


def run_root(configs: Sequence[str | Path], subject: str | None, default_root_dir: str | Path | None = None,
             fallback: str = "run") -> Path:
    """Where the versions of a job live: ``default_root_dir`` when given, else ``outputs/<config>[/<subject>]``."""
    if default_root_dir is not None:
        return Path(default_root_dir)
    root = OUTPUTS / config_name(configs, fallback)
    return root / subject if subject else root


def versions(root: Path) -> list[int]:
    """The ``version_N`` numbers under ``root``, ascending."""
    if not root.is_dir():
        return []
    found = (_VERSION.match(child.name) for child in root.iterdir() if child.is_dir())
    return sorted(int(match.group(1)) for match in found if match)


def next_version(root: Path) -> int:
    """The first version number after every existing one (0 for a new root)."""
    existing = versions(root)
    return existing[-1] + 1 if existing else 0


def last_checkpoint(root: Path) -> Path | None:
    """``checkpoints/last.ckpt`` of the newest version under ``root`` that has one (or of ``root`` itself)."""
    for number in reversed(versions(root)):
        candidate = root / f"version_{number}" / "checkpoints" / "last.ckpt"
        if candidate.is_file():
            return candidate
    candidate = root / "checkpoints" / "last.ckpt"
    return candidate if candidate.is_file() else None


def run_of_checkpoint(checkpoint: Path) -> Path | None:
    """The run folder a checkpoint belongs to (``<run>/checkpoints/x.ckpt``), else ``None``."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file from a file, a run folder or a run root (the newest ``last.ckpt`` under it).

    Raises :class:`~vasa3d.errors.MissingInputError` (a ``FileNotFoundError``) naming what was looked for.
    """
    from vasa3d.errors import MissingInputError

    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        found = last_checkpoint(path)
        if found is not None:
            return found
        raise MissingInputError(f"{path}: no checkpoints/last.ckpt in it or in any version_N under it")
    raise MissingInputError(f"{path}: no such checkpoint or run folder")
