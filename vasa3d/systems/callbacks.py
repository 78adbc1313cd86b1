"""Callbacks that write a fitted head's artefacts: turntable PNGs and a 3DGS ``.ply``."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import lightning as L
import numpy as np
import torch


def run_dir(trainer: L.Trainer) -> Path:
    """The folder of this run's outputs: the logger's version folder, else the trainer's root dir."""
    log_dir = getattr(trainer.logger, "log_dir", None) if trainer.logger is not None else None
    return Path(log_dir or trainer.default_root_dir)


class TurntableWriter(L.Callback):
    """At the end of fitting, render the head turned through ``yaws`` and save PNGs.

    Writes ``<run dir>/turntable/yaw_<angle>.png`` per view and ``turntable.png`` (all views in a row).

    Args:
        yaws: yaw angles in degrees (0 = the portrait's view).
        size: side of each rendered view in px; None uses the training image size.
    """

    def __init__(self, yaws: list[float] | None = None, size: int | None = None) -> None:
        self.yaws = list(yaws) if yaws is not None else [-60.0, -45.0, -30.0, -15.0, 0.0, 15.0, 30.0, 45.0, 60.0]
        self.size = size

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        sample = pl_module.reference_sample()
        size = self.size or sample["image"].shape[-1]
        views = pl_module.render_views(sample["viewmat"], sample["K"], size, self.yaws)
        out_dir = run_dir(trainer) / "turntable"
        out_dir.mkdir(parents=True, exist_ok=True)
        frames = (views.permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
        for yaw, frame in zip(self.yaws, frames):
            iio.imwrite(out_dir / f"yaw_{yaw:+04.0f}.png", frame)
        iio.imwrite(out_dir / "turntable.png", np.concatenate(list(frames), axis=1))


class PlyExporter(L.Callback):
    """At the end of fitting, export the head as a standard 3DGS ``.ply`` (``<run dir>/head.ply``).

    Args:
        filename: name of the file inside the run folder.
    """

    def __init__(self, filename: str = "head.ply") -> None:
        self.filename = filename

    @torch.no_grad()
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_rank == 0:
            pl_module.head.export_ply(run_dir(trainer) / self.filename)
