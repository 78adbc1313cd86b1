"""The command line: ``vasa3d`` / ``lightning`` / ``python -m vasa3d``.

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI's, driven by the YAML files
in ``experiments/`` (model and data given by ``class_path``). Further subcommands are
plain functions registered in ``EXTRA_COMMANDS``; later tools (render, bench, sweep)
join there.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningCLI

from vasa3d.sweep import sweep_command


class VasaCLI(LightningCLI):
    """LightningCLI with vasa3d's defaults: any LightningModule/DataModule by class path, seed 0."""


def datamodule_from_config(*configs: str | Path, args: Sequence[str] = ()) -> L.LightningDataModule:
    """The DataModule a job config (plus overlays and CLI-style ``args``) describes, without its model:
    for benchmarks that evaluate on the data a fit used (same settings, so the same cached clips)."""
    cli_args = [arg for config in configs for arg in ("--config", str(config))]
    cli = VasaCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                  run=False, auto_configure_optimizers=False,
                  args=[*cli_args, "--model", "lightning.LightningModule", *args])
    return cli.datamodule


def export_command(argv: Sequence[str]) -> int:
    """``vasa3d export --ckpt run.ckpt --out head.ply``: a fitted head as a standard 3DGS .ply."""
    parser = argparse.ArgumentParser(prog="vasa3d export", description=export_command.__doc__)
    parser.add_argument("--ckpt", required=True, type=Path, help="checkpoint written by `vasa3d fit`")
    parser.add_argument("--out", required=True, type=Path, help="where to write the .ply")
    args = parser.parse_args(list(argv))
    if not args.ckpt.is_file():
        parser.error(f"{args.ckpt}: no such checkpoint")
    from vasa3d.systems import SubjectFitting

    system = SubjectFitting.load_from_checkpoint(args.ckpt, map_location="cpu")
    path = system.head.export_ply(args.out)
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


EXTRA_COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "export": export_command, "render": render_command, "sweep": sweep_command, "bench": bench_command}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vasa3d`` and ``lightning`` console scripts."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in EXTRA_COMMANDS:
        return EXTRA_COMMANDS[args[0]](args[1:])
    cli_args = None if argv is None else args  # LightningCLI reads sys.argv itself when given None
    VasaCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=cli_args,
    )
    return 0
