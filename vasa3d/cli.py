"""The command line: ``vasa3d`` / ``lightning`` / ``python -m vasa3d``.

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI's, driven by the YAML files
in ``experiments/`` (model and data given by ``class_path``). Further subcommands are
plain functions registered in ``EXTRA_COMMANDS``; later tools (render, bench, sweep)
join there.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import lightning as L
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from vasa3d import runs
from vasa3d.errors import ConfigError, UserInputError, one_line
from vasa3d.quiet import quiet_library_chatter
from vasa3d.sweep import sweep_command

RUN_DIR_ENV = "VASA3D_RUN_DIR"  # the run folder, handed by rank 0 to the processes a DDP launcher starts
LOGGERS_WITH_VERSIONS = ("TensorBoardLogger", "CSVLogger")


class _Parser(LightningArgumentParser):
    """Reports a bad option or config value as :class:`ConfigError` (one line in :func:`main`), not usage + exit."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        raise ConfigError(one_line(message)) from ex


class RunTracker:
    """What the CLI created for this run, so that an expected error can take a half-made run folder away."""

    def __init__(self) -> None:
        self.run_dir: Path | None = None
        self.created: list[Path] = []  # folders that did not exist before this command, outermost first

    def claim(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        missing, folder = [], run_dir.absolute()
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        self.created = list(reversed(missing))

    def discard(self) -> None:
        """Remove the folders this command created (innermost first), with whatever it wrote in them, unless
        a checkpoint was written: a failure after training (say, in an end-of-fit callback) keeps the run."""
        if self.run_dir is not None and any((self.run_dir / "checkpoints").glob("*.ckpt")):
            return
        for folder in reversed(self.created):
            if folder == self.created[-1]:
                shutil.rmtree(folder, ignore_errors=True)
            elif folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


class VasaCLI(LightningCLI):
    """LightningCLI with vasa3d's defaults: any LightningModule/DataModule by class path, seed 0, and one
    run folder per job and subject (see :mod:`vasa3d.runs`): ``outputs/<config>/<subject>/version_N/``
    holds the logs, ``checkpoints/`` and every artefact; ``--ckpt_path last`` resumes the newest one."""

    def __init__(self, *args: Any, tracker: RunTracker | None = None, **kwargs: Any) -> None:
        self.tracker = tracker or RunTracker()
        kwargs.setdefault("parser_class", _Parser)
        super().__init__(*args, **kwargs)

    def before_instantiate_classes(self) -> None:
        if self.subcommand is None:
            return
        place_run(self.config[self.subcommand], self.subcommand, self.tracker)


def _short(class_path: Any) -> str:
    return str(class_path or "").rsplit(".", 1)[-1]


def _subject(config: Namespace) -> str | None:
    data = config.get("data")
    init = data.get("init_args") if isinstance(data, Namespace) else None
    if not isinstance(init, Namespace) or not ({"portrait", "portraits"} & set(vars(init))):
        return None
    return runs.subject_name(init.get("portrait"), init.get("portraits"))


def place_run(config: Namespace, subcommand: str, tracker: RunTracker) -> Path:
    """Point the trainer's logger, checkpoints and root dir at this run's folder (see :mod:`vasa3d.runs`).

    A DDP launcher re-runs the command in new processes; they take the folder rank 0 chose.
    """
    trainer = config.trainer
    if trainer.get("strategy") == "ddp":
        # Our systems own parameters that a given configuration leaves out of the loss (the static head's
        # expression model, the motion model's unused condition embeddings): plain DDP stops at the first
        # step; DDP that looks for unused parameters runs every config.
        trainer.strategy = "ddp_find_unused_parameters_true"
    model = config.get("model")
    fallback = _short(model.get("class_path") if isinstance(model, Namespace) else "run").lower() or "run"
    root = runs.run_root([str(c) for c in (config.get("config") or [])], _subject(config),
                         trainer.get("default_root_dir"), fallback)
    ckpt_path = config.get("ckpt_path")
    loggers = trainer.get("logger")
    logger_list = [item for item in (loggers if isinstance(loggers, list) else [loggers])
                   if isinstance(item, Namespace) and _short(item.get("class_path")) in LOGGERS_WITH_VERSIONS]
    # A config that pins the logger's version and the root (as `vasa3d sweep` does) chose its own layout.
    pinned = trainer.get("default_root_dir") is not None and any(
        (item.get("init_args") or Namespace()).get("version") is not None for item in logger_list)
    inherited = os.environ.get(RUN_DIR_ENV) if os.environ.get("LOCAL_RANK", "0") != "0" else None
    if inherited:
        run_dir = Path(inherited)
    elif pinned:
        run_dir = root
        if ckpt_path == "last":
            last = runs.last_checkpoint(root)
            config.ckpt_path = str(last) if last is not None else None
    elif ckpt_path == "last":
        last = runs.last_checkpoint(root)
        if last is None:
            raise UserInputError(f"--ckpt_path last: no run under {root} has checkpoints/last.ckpt; "
                                 f"start one with `{subcommand}` without --ckpt_path")
        config.ckpt_path = str(last)
        run_dir = runs.run_of_checkpoint(last) or root
    elif ckpt_path and runs.run_of_checkpoint(Path(ckpt_path)) is not None and Path(ckpt_path).is_file():
        run_dir = runs.run_of_checkpoint(Path(ckpt_path))  # continue (or test) inside the run it came from
    elif ckpt_path and not Path(ckpt_path).is_file():
        raise UserInputError(f"--ckpt_path {ckpt_path}: no such checkpoint (give a .ckpt file, or `last`)")
    else:
        run_dir = root / f"version_{runs.next_version(root)}"
    os.environ[RUN_DIR_ENV] = str(run_dir)
    tracker.claim(run_dir)
    trainer.default_root_dir = str(run_dir)
    version = run_dir.name
    for logger in [] if pinned else logger_list:
        init = logger.get("init_args") or Namespace()
        init.save_dir, init.name, init.version = str(run_dir.parent), "", version
        logger.init_args = init
    if loggers in (None, True) and not pinned:
        trainer.logger = Namespace(class_path="lightning.pytorch.loggers.TensorBoardLogger",
                                   init_args=Namespace(save_dir=str(run_dir.parent), name="", version=version))
    for callback in trainer.get("callbacks") or []:
        if isinstance(callback, Namespace) and _short(callback.get("class_path")) == "ModelCheckpoint":
            init = callback.get("init_args") or Namespace()
            if init.get("dirpath") is None:
                init.dirpath = str(run_dir / "checkpoints")
                callback.init_args = init
    return run_dir


def datamodule_from_config(*configs: str | Path, args: Sequence[str] = ()) -> L.LightningDataModule:
    """The DataModule a job config (plus overlays and CLI-style ``args``) describes, without its model:
    for benchmarks that evaluate on the data a fit used (same settings, so the same cached clips)."""
    cli_args = [arg for config in configs for arg in ("--config", str(config))]
    cli = VasaCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                  run=False, auto_configure_optimizers=False,
                  args=[*cli_args, "--model", "lightning.LightningModule", *args])
    return cli.datamodule


def export_command(argv: Sequence[str]) -> int:
    """``vasa3d export --ckpt run.ckpt --out head.ply``: a fitted head as a standard 3DGS .ply (a run folder names
    its newest ``last.ckpt``)."""
    parser = argparse.ArgumentParser(prog="vasa3d export", description=export_command.__doc__)
    parser.add_argument("--ckpt", required=True, type=Path, help="checkpoint written by `vasa3d fit`")
    parser.add_argument("--out", required=True, type=Path, help="where to write the .ply")
    parser.add_argument("--orientation", choices=("y_down", "y_up"), default="y_down",
                        help="y_down: the 3DGS/COLMAP frame splat viewers expect (default); y_up: three.js style")
    args = parser.parse_args(list(argv))
    ckpt = runs.resolve_checkpoint(args.ckpt)
    from vasa3d.systems import SubjectFitting

    system = SubjectFitting.load_from_checkpoint(ckpt, map_location="cpu")
    path = system.head.export_ply(args.out, orientation=args.orientation)
    print(f"wrote {path} ({system.head.num_gaussians} Gaussians)")
    return 0


def render_command(argv: Sequence[str]) -> int:
    """``vasa3d render``: a talking video (see :mod:`vasa3d.render.command`)."""
    from vasa3d.render.command import render_command as run

    return run(argv)


def bench_command(argv: Sequence[str]) -> int:
    """``vasa3d bench``: the benchmark table (see :mod:`vasa3d.bench`)."""
    from vasa3d.bench import bench_command as run

    return run(argv)


def talk_command(argv: Sequence[str]) -> int:
    """``vasa3d talk``: portrait + speech to a talking video (see :mod:`vasa3d.render.talk`)."""
    from vasa3d.render.talk import talk_command as run

    return run(argv)


EXTRA_COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "export": export_command, "render": render_command, "sweep": sweep_command, "bench": bench_command,
    "talk": talk_command}


@contextlib.contextmanager
def _argparse_errors_raise(prog: str) -> Iterator[None]:
    """Inside the block, argparse's usage errors raise :class:`ConfigError` (one line) instead of printing
    the usage and exiting; ``--help`` still prints and exits."""

    def error(parser: argparse.ArgumentParser, message: str) -> NoReturn:
        raise ConfigError(f"{prog}: {message} (see {prog} --help)")

    original = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = error  # type: ignore[method-assign]
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original  # type: ignore[method-assign]


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input (see :mod:`vasa3d.errors`): one line, exit code 2, no traceback."""
    from vasa3d.audio.io import AudioError

    return UserInputError, AudioError


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vasa3d`` and ``lightning`` console scripts.

    Bad input ends with ``error: …`` on one line and exit code 2 (``VASA3D_DEBUG=1``: the traceback),
    and a run folder this command had just created is removed.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    quiet_library_chatter()
    tracker = RunTracker()
    try:
        if args and args[0] in EXTRA_COMMANDS:
            with _argparse_errors_raise(f"vasa3d {args[0]}"):
                return EXTRA_COMMANDS[args[0]](args[1:])
        VasaCLI(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            args=None if argv is None else args,  # None: LightningCLI reads sys.argv itself
            tracker=tracker,
        )
        return 0
    except _expected_errors() as error:
        if os.environ.get("VASA3D_DEBUG", "") not in ("", "0"):
            raise
        tracker.discard()
        print(f"error: {one_line(str(error).strip(chr(39)))}", file=sys.stderr)
        return 2
