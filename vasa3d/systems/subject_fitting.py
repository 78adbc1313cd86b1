"""``SubjectFitting``: fit a Gaussian head bound to the head template to one subject's images.

This issue's version fits a static head to one aligned portrait (one view): L1 + D-SSIM
inside the head region, a silhouette term, landmark reprojection of the identity-shaped
template, and regularisers that keep what the photo never shows (the back and sides of
the head) a plausible, coloured surface. Densification and pruning use gsplat's
``DefaultStrategy`` (it runs on CPU tensors), with a cap on the Gaussian count.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from gsplat.strategy import DefaultStrategy
from gsplat.strategy.ops import remove
from torch import Tensor

from vasa3d.face.template import load_template
from vasa3d.gaussians.binding import triangle_frames
from vasa3d.gaussians.head import PARAM_NAMES, GaussianHead
from vasa3d.gaussians.render import Backend
from vasa3d.losses import (
    binding_regularizer, dssim, face_adjacency, landmark_reprojection, laplacian_smoothness, masked_l1, mesh_edges,
    neighbour_color_smoothness, scale_regularizer)
from vasa3d.systems.views import yaw_viewmats


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss."""


class SubjectFitting(L.LightningModule):
    """Fit a template-bound Gaussian head to one subject.

    Args:
        num_gaussians: Gaussians at the start (at least one per template triangle).
        max_gaussians: cap on the count during densification; the least opaque go first.
        densify: grow and prune Gaussians with gsplat's DefaultStrategy.
        densify_start: step of the first densification.
        densify_stop: step after which the count stays fixed.
        densify_every: steps between densifications.
        densify_grad_threshold: screen-space gradient above which a Gaussian grows.
        strategy_scene_scale: local (triangle) units that gsplat's size thresholds are relative to.
        lr_means: learning rate of the local positions (triangle units).
        lr_scales: learning rate of the log scales.
        lr_quats: learning rate of the local rotations.
        lr_opacities: learning rate of the opacity logits.
        lr_colors: learning rate of the colour logits.
        lr_shape: learning rate of the identity offsets of the template vertices (metres).
        w_l1: weight of the L1 photometric loss.
        w_dssim: weight of the D-SSIM loss.
        w_silhouette: weight of the L1 between rendered alpha and the foreground mask.
        w_landmarks: weight of the landmark reprojection loss (in units of the image size).
        w_laplacian: weight of the smoothness of the identity offsets.
        w_scale: weight of the penalty on Gaussians larger than ``max_scale``.
        max_scale: largest Gaussian extent before the scale penalty applies (metres).
        w_binding: weight of keeping Gaussians within one triangle-scale of their triangle.
        w_color_smooth: weight of pulling colours towards their mesh neighbours (fills unseen regions).
        background: RGB behind the head, in [0, 1].
        backend: renderer backend ("auto": gsplat on CUDA, compiled C++ on CPU).
        template_path: head template .npz; None uses the packaged one.
        preview_yaws: yaw angles (degrees) of the novel views logged at validation.
        seed: seed of the initial Gaussian placement.
    """

    def __init__(
        self,
        num_gaussians: int = 20000,
        max_gaussians: int = 40000,
        densify: bool = True,
        densify_start: int = 300,
        densify_stop: int = 1200,
        densify_every: int = 100,
        densify_grad_threshold: float = 0.0002,
        strategy_scene_scale: float = 25.0,
        lr_means: float = 0.005,
        lr_scales: float = 0.005,
        lr_quats: float = 0.001,
        lr_opacities: float = 0.05,
        lr_colors: float = 0.02,
        lr_shape: float = 0.0002,
        w_l1: float = 0.8,
        w_dssim: float = 0.2,
        w_silhouette: float = 0.3,
        w_landmarks: float = 1.0,
        w_laplacian: float = 100.0,
        w_scale: float = 1.0,
        max_scale: float = 0.01,
        w_binding: float = 0.1,
        w_color_smooth: float = 0.01,
        background: tuple[float, float, float] = (1.0, 1.0, 1.0),
        backend: Backend = "auto",
        template_path: str | None = None,
        preview_yaws: tuple[float, ...] = (-60.0, -30.0, 0.0, 30.0, 60.0),
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False  # one optimiser per Gaussian attribute, as gsplat's strategies expect
        template = load_template(template_path)
        self.head = GaussianHead(template.vertices, template.faces, num_gaussians, seed=seed)
        faces = self.head.faces
        self.register_buffer("edges", mesh_edges(faces), persistent=False)
        self.register_buffer("face_pairs", face_adjacency(faces), persistent=False)
        self.register_buffer("background", torch.tensor(background, dtype=torch.float32), persistent=False)
        self.num_landmarks = template.num_landmark_vertices
        self.strategy = DefaultStrategy(
            refine_start_iter=densify_start, refine_stop_iter=densify_stop, refine_every=densify_every,
            grow_grad2d=densify_grad_threshold, reset_every=10**9, verbose=False)
        self.strategy_state: dict[str, Any] = self.strategy.initialize_state(scene_scale=strategy_scene_scale)

    # ----------------------------------------------------------------- set-up
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        hp = self.hparams
        lrs = {"means": hp.lr_means, "quats": hp.lr_quats, "scales": hp.lr_scales,
               "opacities": hp.lr_opacities, "colors": hp.lr_colors}
        optimizers = [torch.optim.Adam([self.head.splats[name]], lr=lrs[name], eps=1e-15) for name in PARAM_NAMES]
        optimizers.append(torch.optim.Adam([self.head.shape_offsets], lr=hp.lr_shape))
        return optimizers

    def on_fit_start(self) -> None:
        self.strategy_state = {k: (v.to(self.device) if isinstance(v, Tensor) else v)
                               for k, v in self.strategy_state.items()}
        if self.global_step == 0:
            self.initialize_colors(self.reference_sample())

    def reference_sample(self) -> dict[str, Tensor]:
        """The datamodule's reference view (the portrait), on this module's device."""
        datamodule = getattr(self.trainer, "datamodule", None)
        sample = getattr(datamodule, "sample", None)
        if sample is None:
            raise RuntimeError("SubjectFitting needs a datamodule with a `sample` (e.g. PortraitDataModule)")
        return {k: v.to(self.device) for k, v in sample.items()}

    @torch.no_grad()
    def initialize_colors(self, sample: dict[str, Tensor]) -> None:
        """Colour the Gaussians from the reference photo (see :meth:`GaussianHead.paint_from_image`)."""
        self.head.paint_from_image(sample["image"], sample["region"] * sample["mask"], sample["viewmat"], sample["K"])

    # ----------------------------------------------------------------- training
    def render_batch(self, batch: dict[str, Tensor]):
        size = batch["image"].shape[-1]
        return self.head.render(batch["viewmat"], batch["K"], size, size, background=self.background,
                                backend=self.hparams.backend)

    def compute_losses(self, batch: dict[str, Tensor], out) -> dict[str, Tensor]:
        hp = self.hparams
        render = out.rgb.permute(0, 3, 1, 2)
        alpha = out.alpha.permute(0, 3, 1, 2)
        mask, region = batch["mask"], batch["region"]
        target = batch["image"] * mask + self.background[None, :, None, None] * (1 - mask)
        verts = self.head.vertices()
        landmarks = verts[None, : self.num_landmarks].expand(render.shape[0], -1, -1)
        g_scales = torch.exp(self.head.splats["scales"]) * self._triangle_scales()[:, None]
        losses = {
            "l1": masked_l1(render, target, region),
            "dssim": dssim(render, target, region),
            "silhouette": masked_l1(alpha, mask, region),
            "landmarks": landmark_reprojection(landmarks, batch["landmarks"][:, : self.num_landmarks],
                                               batch["viewmat"], batch["K"], render.shape[-1]),
            "laplacian": laplacian_smoothness(self.head.shape_offsets, self.edges),
            "scale": scale_regularizer(g_scales, hp.max_scale),
            "binding": binding_regularizer(self.head.splats["means"]),
            "color_smooth": neighbour_color_smoothness(torch.sigmoid(self.head.splats["colors"]), self.head.binding,
                                                       self.face_pairs, self.head.faces.shape[0]),
        }
        losses["total"] = sum(getattr(hp, f"w_{name}") * value for name, value in losses.items())
        return losses

    def _triangle_scales(self) -> Tensor:
        return triangle_frames(self.head.vertices(), self.head.faces).scales[self.head.binding]

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        optimizers = self.optimizers()
        out = self.render_batch(batch)
        losses = self.compute_losses(batch, out)
        if not torch.isfinite(losses["total"]):
            raise DivergenceError(
                f"step {self.global_step}: the loss is not finite ({ {k: float(v) for k, v in losses.items()} }); "
                "lower the learning rates (model.lr_*) or resume from the last good checkpoint")
        if self.hparams.densify:
            self.strategy.step_pre_backward(self.head.splats, self._splat_optimizers(), self.strategy_state,
                                            self.global_step, out.info)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        self.manual_backward(losses["total"])
        # Lightning counts a step per wrapped optimiser stepped; step one wrapped, the rest raw,
        # so that trainer.global_step is the number of training iterations.
        optimizers[0].step()
        for opt in optimizers[1:]:
            opt.optimizer.step()
        if self.hparams.densify:
            self._densify(out.info)
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, prog_bar=False)
        self.log("train/loss", losses["total"].detach(), prog_bar=True)
        self.log("train/num_gaussians", float(self.head.num_gaussians), prog_bar=True)
        return losses["total"].detach()

    def _splat_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        opts = self.optimizers()
        return {name: opt.optimizer for name, opt in zip(PARAM_NAMES, opts)}

    def _densify(self, info: dict[str, Any]) -> None:
        step = self.global_step - 1  # the step just taken
        self.strategy.step_post_backward(self.head.splats, self._splat_optimizers(), self.strategy_state, step, info,
                                         packed=False)
        excess = self.head.num_gaussians - self.hparams.max_gaussians
        if excess > 0:
            drop = torch.zeros(self.head.num_gaussians, dtype=torch.bool, device=self.device)
            drop[torch.argsort(self.head.splats["opacities"].detach())[:excess]] = True
            remove(self.head.splats, self._splat_optimizers(), self.strategy_state, drop)

    # ----------------------------------------------------------------- validation
    @torch.no_grad()
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        out = self.render_batch(batch)
        losses = self.compute_losses(batch, out)
        render = out.rgb.permute(0, 3, 1, 2).clamp(0, 1)
        mask, region = batch["mask"], batch["region"]
        target = batch["image"] * mask + self.background[None, :, None, None] * (1 - mask)
        mse = ((render - target) ** 2 * region).sum() / (region.sum() * 3)
        self.log("val/psnr", -10 * torch.log10(mse.clamp(min=1e-10)), prog_bar=True)
        self.log("val/loss", losses["total"])
        self.log("val/landmark_px", losses["landmarks"] * render.shape[-1])
        if batch_idx == 0:
            self._log_images(batch, render, target)

    def _log_images(self, batch: dict[str, Tensor], render: Tensor, target: Tensor) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_image"):
            return
        size = render.shape[-1]
        views = self.render_views(batch["viewmat"][0], batch["K"][0], size, self.hparams.preview_yaws)
        experiment.add_image("val/target_render_error", torch.cat(
            [target[0], render[0], (render[0] - target[0]).abs().clamp(0, 1)], dim=-1), self.global_step)
        experiment.add_image("val/novel_views", torch.cat(list(views), dim=-1), self.global_step)

    @torch.no_grad()
    def render_views(self, viewmat: Tensor, K: Tensor, size: int, yaws_deg: tuple[float, ...] | list[float]) -> Tensor:
        """Renders ``[Y, 3, size, size]`` of the head turned by each yaw (degrees) in front of the camera."""
        scale = size / (2 * float(K[0, 2]))
        K = K.clone()
        K[:2] *= scale
        out = self.head.render(yaw_viewmats(viewmat, yaws_deg), K.expand(len(yaws_deg), 3, 3), size, size,
                               background=self.background, backend=self.hparams.backend)
        return out.rgb.permute(0, 3, 1, 2).clamp(0, 1)

    # ----------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["strategy_state"] = {k: (v.cpu() if isinstance(v, Tensor) else v)
                                        for k, v in self.strategy_state.items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.head.resize_to(checkpoint["state_dict"], prefix="head.")
        if "strategy_state" in checkpoint:
            self.strategy_state = dict(checkpoint["strategy_state"])

