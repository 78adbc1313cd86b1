"""Validation, test and preview renders of :class:`~vasa3d.systems.SubjectFitting` (a mixin).

Validation (the datamodule's ``val_split``, held-out latents by default) logs PSNR, SSIM and the
landmark error of the deformed template, with render/teacher/error grids and novel views. Where the
teacher gives a per-pixel reliability, PSNR is also split into the pixels it observed in the portrait
(``psnr_observed``) and those it completed or guessed (``psnr_completed``).
Test runs the held-out-latent and held-out-pose splits and adds the landmark error that mediapipe
re-detects on the renders against the teacher frames' (what the render shows, not what the mesh
says) and dlib's identity cosine of the renders to the portrait; ``<run dir>/metrics.json``
collects every number, with the wide-pose metrics of the neutral head turned to ±60° (``wide/*``,
:mod:`vasa3d.metrics.wide_pose`). ``rigid_only = True`` evaluates the head as the static
baseline: posed rigidly by the latent, with no expression model or residual.
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure

from vasa3d.losses import inter_ocular, project_points
from vasa3d.motion.latent import MotionLatent
from vasa3d.systems.callbacks import run_dir
from vasa3d.systems.views import yaw_viewmats

TEST_SPLITS = ("heldout_latent", "heldout_pose")
OBSERVED_RELIABILITY = 0.9  # teacher pixels at least this reliable count as observed in the portrait


class SubjectEvaluation:
    """Evaluation hooks shared by subject fits; expects ``compute_losses``, ``avatar``, ``target``."""

    rigid_only: bool = False

    def _metrics(self, batch: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict, Tensor, Tensor]:
        losses, out = self.compute_losses(batch)
        render = out["rgb"].clamp(0, 1)
        target = self.target(batch)
        region = batch.get("region", torch.ones_like(batch["mask"]))
        mse = ((render - target) ** 2 * region).sum(dim=(1, 2, 3)) / (region.sum(dim=(1, 2, 3)) * 3)
        count = batch["landmarks"].shape[1]
        points = self.avatar.landmarks(out["latent"], out["frame"])[:, :count]  # the residual does not move them
        mesh_px = (project_points(points, batch["viewmat"], batch["K"])
                   - batch["landmarks"]).norm(dim=-1).mean(-1)
        metrics = {
            "psnr": (-10 * torch.log10(mse.clamp(min=1e-10))).mean(),
            "ssim": structural_similarity_index_measure(render, target, data_range=1.0),
            "landmark_px": mesh_px.mean(),
            "loss": losses["total"],
        }
        if "reliability" in batch:  # where the teacher showed what the portrait saw, and where it completed or guessed
            observed = (batch["reliability"] >= OBSERVED_RELIABILITY).to(region.dtype)
            for name, part in (("psnr_observed", region * observed), ("psnr_completed", region * (1 - observed))):
                count = part.sum(dim=(1, 2, 3))
                keep = count > 0
                if keep.any():
                    part_mse = ((render - target) ** 2 * part).sum(dim=(1, 2, 3))[keep] / (count[keep] * 3)
                    metrics[name] = (-10 * torch.log10(part_mse.clamp(min=1e-10))).mean()
        return metrics, out, render, target

    def _rigid(self, batch: dict[str, Tensor]) -> bool:
        return "dyn" not in batch or self.rigid_only

    @torch.no_grad()
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        metrics, _, render, target = self._metrics(batch)
        for name, value in metrics.items():
            self.log(f"val/{name}", value, prog_bar=name == "psnr", batch_size=render.shape[0])
        if batch_idx == 0:
            self._log_images(batch, render, target)

    @torch.no_grad()
    def test_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        from vasa3d.teachers.evaluation import detect_landmarks

        split = TEST_SPLITS[dataloader_idx] if dataloader_idx < len(TEST_SPLITS) else f"split{dataloader_idx}"
        metrics, _, render, _ = self._metrics(batch)
        found = detect_landmarks(render.cpu())[..., :2].to(render.device)
        per_frame = (found - batch["landmarks"]).norm(dim=-1).mean(-1)  # NaN where no face was found
        ok = ~torch.isnan(per_frame)
        iod = inter_ocular(batch["reference_landmarks"]) if "reference_landmarks" in batch else None
        metrics["redetect_px"] = per_frame[ok].mean() if ok.any() else torch.tensor(math.nan)
        if iod is not None:
            metrics["redetect_iod"] = (per_frame[ok] / iod[ok]).mean() if ok.any() else torch.tensor(math.nan)
        metrics["face_found"] = ok.float().mean()
        metrics["identity_cos"] = self._identity(render)
        for name, value in metrics.items():
            self.log(f"test/{split}/{name}", value, add_dataloader_idx=False, batch_size=render.shape[0])

    def _identity(self, render: Tensor) -> Tensor:
        """Mean dlib identity cosine of ``render [B, 3, S, S]`` to the portrait (NaN where no face is found);
        the embedder and the portrait's embedding are made once per module."""
        from vasa3d.metrics.identity import DlibFaceEmbedder, _similarities

        if getattr(self, "_embedder", None) is None:
            self._embedder = DlibFaceEmbedder()
            self._portrait_embedding = self._embedder.embed(self.reference_sample()["image"].cpu())
        if self._portrait_embedding is None:
            return torch.tensor(math.nan)
        cosines, _ = _similarities([self._embedder.embed(frame) for frame in render.cpu()], self._portrait_embedding)
        found = [c for c in cosines if not math.isnan(c)]
        return torch.tensor(sum(found) / len(found) if found else math.nan)

    def on_test_epoch_end(self) -> None:
        if self.trainer.global_rank != 0:
            return
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("test/")}
        metrics["num_gaussians"] = self.head.num_gaussians
        metrics["rigid_only"] = self.rigid_only
        metrics["train_time_s"] = self.train_seconds
        _, wide = self.wide_pose()
        metrics.update({f"wide/{name}": value for name, value in wide["summary"].items()})
        metrics["wide/per_yaw"] = wide["per_yaw"]
        path = run_dir(self.trainer) / "metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(metrics, indent=1, sort_keys=True))

    # ----------------------------------------------------------------- previews
    def _log_images(self, batch: dict[str, Tensor], render: Tensor, target: Tensor) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_image"):
            return
        size = render.shape[-1]
        views = self.render_views(batch["viewmat"][0], batch["K"][0], size, self.hparams.preview_yaws,
                                  latent=self.batch_latent(batch)[0:1])
        rows = [torch.cat([target[i], render[i], (render[i] - target[i]).abs().clamp(0, 1)], dim=-1)
                for i in range(min(4, render.shape[0]))]
        experiment.add_image("val/target_render_error", torch.cat(rows, dim=-2), self.global_step)
        experiment.add_image("val/novel_views", torch.cat(list(views), dim=-1), self.global_step)

    @torch.no_grad()
    def wide_pose(self, yaws: tuple[float, ...] | list[float] | None = None, size: int | None = None,
                  embedder=None, sample: dict[str, Tensor] | None = None) -> tuple[Any, dict]:
        """The neutral head turned through ``yaws`` (default :data:`~vasa3d.metrics.wide_pose.WIDE_YAWS`) in
        front of the portrait camera's frontal counterpart, and its wide-pose metrics (see
        :mod:`vasa3d.metrics.wide_pose`): ``(turntable, {"per_yaw": [...], "summary": {...}})``. ``sample``:
        the portrait (``image``, ``viewmat``, ``K``); None takes the datamodule's."""
        from vasa3d.metrics.wide_pose import WIDE_YAWS, render_turntable, speckle_mask, wide_pose_metrics

        sample = {k: v.to(self.device) for k, v in (sample or self.reference_sample()).items()}
        size = size or sample["image"].shape[-1]
        zeros = sample["viewmat"].new_zeros
        frame = self.avatar.frame(MotionLatent(zeros(1, self.hparams.latent_dim), zeros(1, 6)), rigid=self.rigid_only)
        gaussians = {k: v for k, v in self.avatar.world_gaussians(frame, 0).items() if k != "anchors"}
        turntable = render_turntable(gaussians, speckle_mask(self.head.binding, self.hparams.template_path),
                                     sample["viewmat"], sample["K"], size,
                                     tuple(yaws) if yaws is not None else WIDE_YAWS, self.background,
                                     self.hparams.backend)
        return turntable, wide_pose_metrics(turntable, sample["image"].float().cpu(), embedder)

    @torch.no_grad()
    def render_views(self, viewmat: Tensor, K: Tensor, size: int, yaws_deg: tuple[float, ...] | list[float],
                     latent: MotionLatent | None = None) -> Tensor:
        """Renders ``[Y, 3, size, size]`` of the head (neutral, or showing ``latent [1]``) turned by each yaw
        (degrees) in front of the camera ``viewmat [4, 4]``, ``K [3, 3]`` (rescaled to ``size``)."""
        scale = size / (2 * float(K[0, 2]))
        K = K.clone()
        K[:2] *= scale
        if latent is None:
            zeros = viewmat.new_zeros
            latent = MotionLatent(zeros(1, self.hparams.latent_dim), zeros(1, 6))
        frame = self.avatar.frame(latent, rigid=self.rigid_only)
        out = self.avatar.render(frame, 0, yaw_viewmats(viewmat, yaws_deg), K.expand(len(yaws_deg), 3, 3), size,
                                 background=self.background, backend=self.hparams.backend)
        return out.rgb.permute(0, 3, 1, 2).clamp(0, 1)
