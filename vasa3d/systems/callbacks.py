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
    """At the end of fitting, render the head turned through ``yaws`` and save PNGs, with wide-pose metrics.

    Writes ``<run dir>/turntable/yaw_<angle>.png`` per view and ``turntable.png`` (all views in a row,
    from the portrait's camera), and ``<run dir>/wide_pose.png``: the neutral head turned in front of a
    frontal camera, each view labelled with its yaw, whether mediapipe finds the face and dlib's
    identity cosine to the portrait; the numbers go to ``wide_pose.json``/``wide_pose.md`` and to
    TensorBoard (``wide/*``). See :mod:`vasa3d.metrics.wide_pose`.

    Args:
        yaws: yaw angles in degrees (0 = the portrait's view).
        size: side of each rendered view in px; None uses the training image size.
        wide_pose: also measure the wide-pose metrics (a few seconds: mediapipe and dlib on each view).
    """

    def __init__(self, yaws: list[float] | None = None, size: int | None = None, wide_pose: bool = True) -> None:
        self.yaws = list(yaws) if yaws is not None else [-60.0, -45.0, -30.0, -15.0, 0.0, 15.0, 30.0, 45.0, 60.0]
        self.size = size
        self.wide_pose = wide_pose

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
        if self.wide_pose and hasattr(pl_module, "wide_pose"):
            write_wide_pose(pl_module, run_dir(trainer), self.yaws, size)


def write_wide_pose(system, out_dir: Path, yaws: list[float], size: int) -> dict:
    """``wide_pose.png`` (labelled strip), ``wide_pose.json`` and ``wide_pose.md`` of ``system`` in ``out_dir``;
    logs the summary and the strip to the system's TensorBoard logger when it has one. Returns the metrics."""
    import json

    from vasa3d.metrics.wide_pose import labelled_strip, per_yaw_markdown

    turntable, metrics = system.wide_pose(yaws, size)
    strip = labelled_strip(turntable, metrics)
    iio.imwrite(out_dir / "wide_pose.png", strip)
    (out_dir / "wide_pose.json").write_text(json.dumps(metrics, indent=1))
    (out_dir / "wide_pose.md").write_text(per_yaw_markdown(metrics))
    logger = getattr(system, "logger", None)
    experiment = getattr(logger, "experiment", None)
    if experiment is not None and hasattr(experiment, "add_image"):
        step = system.global_step
        experiment.add_image("wide/turntable", strip, step, dataformats="HWC")
        for name, value in metrics["summary"].items():
            experiment.add_scalar(f"wide/{name}", value, step)
    return metrics


class PlyExporter(L.Callback):
    """At the end of fitting, export the head as a standard 3DGS ``.ply`` (``<run dir>/head.ply``).

    Args:
        filename: name of the file inside the run folder.
        orientation: ``y_down`` (3DGS/COLMAP convention: opens upright in common splat viewers) or
            ``y_up`` (the template frame, three.js style).
    """

    def __init__(self, filename: str = "head.ply", orientation: str = "y_down") -> None:
        self.filename, self.orientation = filename, orientation

    @torch.no_grad()
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_rank == 0:
            pl_module.head.export_ply(run_dir(trainer) / self.filename, orientation=self.orientation)


class ValidationVideoWriter(L.Callback):
    """At the end of fitting, render held-out clips from several viewpoints beside the teacher's frames.

    Writes ``<run dir>/validation_video.mp4`` (one row per frame: teacher | the avatar at each yaw) and
    ``validation_video.png`` (its first frame). Needs a datamodule with ``clips(split)`` and ``sample``
    (``SyntheticVideoDataModule``).

    Args:
        split: which held-out split to show.
        clips: how many of its clips, one after another.
        yaws: viewpoints, degrees of head turn relative to the teacher's camera.
        fps: frame rate of the video.
    """

    def __init__(self, split: str = "heldout_latent", clips: int = 1, yaws: list[float] | None = None,
                 fps: float = 25.0) -> None:
        self.split, self.clips, self.fps = split, clips, fps
        self.yaws = list(yaws) if yaws is not None else [-35.0, 0.0, 35.0]

    @torch.no_grad()
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        if trainer.global_rank != 0 or not hasattr(datamodule, "clips"):
            return
        from vasa3d.motion.latent import MotionLatent
        from vasa3d.systems.views import yaw_viewmats

        sample = pl_module.reference_sample()
        size = sample["image"].shape[-1]
        viewmats = yaw_viewmats(sample["viewmat"], self.yaws)
        Ks = sample["K"].expand(len(self.yaws), 3, 3)
        rows = []
        for clip in datamodule.clips(self.split)[: self.clips]:
            latent = MotionLatent(*(torch.from_numpy(clip[k]).float().to(pl_module.device)
                                    for k in ("dyn", "pose", "gaze")))
            renders = pl_module.avatar.render_latents(latent, viewmats, Ks, size, pl_module.background,
                                                      pl_module.hparams.backend)  # [T, Y, 3, S, S]
            teacher = torch.from_numpy(clip["frames"]).float().div(255).permute(0, 3, 1, 2).to(renders.device)
            rows.append(torch.cat([teacher[:, None], renders], dim=1))
        if not rows:
            return
        video = torch.cat(rows)  # [T, 1 + Y, 3, S, S]
        frames = video.permute(0, 3, 1, 4, 2).flatten(2, 3)  # [T, S, (1 + Y) S, 3]
        frames = (frames.clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
        out = run_dir(trainer)
        out.mkdir(parents=True, exist_ok=True)
        iio.imwrite(out / "validation_video.mp4", frames, fps=self.fps, codec="libx264", macro_block_size=8)
        iio.imwrite(out / "validation_video.png", frames[0])
