"""``SubjectFitting`` (stage 2): fit an animatable 3D Gaussian head to one subject.

The head (:class:`~vasa3d.gaussians.avatar.GaussianAvatar`) is Gaussians bound to the head
template, deformed per frame by ``M_e(z_dyn)`` and ``M_p(z_pose)`` (from a stage-1 checkpoint,
a short distillation, or the rig), plus a residual MLP on ``(z_dyn, gaze, Gaussian features)``.
It is fitted to teacher frames (``datamodules.SyntheticVideoDataModule``) under VASA-3D's three
consistencies, each term a weight in config (0 switches it off):

- rendering: trimmed L1 (robust to teacher artifacts), D-SSIM, silhouette, optional LPIPS; frames
  whose re-detected landmarks disagree with their latent are down-weighted;
- expression: landmarks of the deformed template against the teacher frame's, lips and eyes
  weighted up;
- geometry: binding, scale, identity-offset smoothness, colour diffusion into unseen regions,
  small residuals, and depth consistency (the depth the Gaussians render agrees with their
  triangles' surface in every view).

Given a single portrait (``datamodules.PortraitDataModule``, no latents) the same module fits
the static head of the foundation issue: a zero latent and no expression model.
Densification and pruning use gsplat's ``DefaultStrategy`` with a cap on the Gaussian count.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from gsplat.strategy import DefaultStrategy
from gsplat.strategy.ops import remove
from torch import Tensor

from vasa3d.face.template import load_template
from vasa3d.gaussians.avatar import AvatarFrame, GaussianAvatar, ResidualDeformer
from vasa3d.gaussians.binding import take, triangle_frames
from vasa3d.gaussians.head import GaussianHead
from vasa3d.gaussians.render import Backend, rasterize
from vasa3d.losses import (
    binding_regularizer, face_adjacency, landmark_reprojection, landmark_weights, laplacian_smoothness, mesh_edges,
    neighbour_color_smoothness, photometric_losses, scale_regularizer, teacher_frame_weights)
from vasa3d.motion.deformation import ExpressionDeformer, PoseDeformer
from vasa3d.motion.latent import MotionLatent
from vasa3d.motion.rig import ExpressionRig
from vasa3d.systems.stage1 import distill_motion, load_stage1_weights
from vasa3d.systems.subject_eval import SubjectEvaluation
from vasa3d.teachers.mesh_lift import fit_identity

DEPTH_UNIT_M = 0.01  # depth-consistency residuals are measured in centimetres


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss."""


class SubjectFitting(SubjectEvaluation, L.LightningModule):
    """Fit a template-bound, latent-driven Gaussian head to one subject.

    Args:
        num_gaussians: Gaussians at the start (at least one per template triangle).
        max_gaussians: cap on the count during densification; the least opaque go first.
        densify: grow and prune Gaussians with gsplat's DefaultStrategy.
        densify_start: step of the first densification.
        densify_stop: step after which the count stays fixed.
        densify_every: steps between densifications.
        densify_grad_threshold: screen-space gradient above which a Gaussian grows.
        strategy_scene_scale: local (triangle) units that gsplat's size thresholds are relative to.
        latent_dim: D of ``MotionLatent.dyn``; must match the data.
        num_basis: learnt deformation bases of ``M_e``.
        expression_hidden: width of ``M_e``'s network.
        expression_init: start ``M_e`` at the procedural rig ("rig") or from scratch ("random").
        stage1_ckpt: a ``LatentDistillation`` checkpoint whose ``M_e``/``M_p`` start this fit.
        distill_steps: without ``stage1_ckpt``, landmark-only steps that distil ``M_e``/``M_p`` first.
        residual: use the residual MLP on (z_dyn, gaze, Gaussian features).
        residual_features: size of each Gaussian's learnt feature.
        residual_hidden: width of the residual MLP.
        residual_layers: hidden layers of the residual MLP.
        identity_steps: steps fitting the identity offsets to the portrait's landmarks before painting.
        lr_means: learning rate of the local positions (triangle units).
        lr_scales: learning rate of the log scales.
        lr_quats: learning rate of the local rotations.
        lr_opacities: learning rate of the opacity logits.
        lr_colors: learning rate of the colour logits.
        lr_features: learning rate of the per-Gaussian features.
        lr_shape: learning rate of the identity offsets of the template vertices (metres).
        lr_motion: learning rate of ``M_e`` and ``M_p`` during the fit (0 freezes them).
        lr_residual: learning rate of the residual MLP.
        w_l1: weight of the (trimmed) L1 photometric loss.
        w_dssim: weight of the D-SSIM loss.
        w_silhouette: weight of the L1 between rendered alpha and the foreground mask.
        w_lpips: weight of LPIPS (needs ``lpips_weights``).
        lpips_weights: path of the LPIPS backbone weights (no package ships them).
        robust_trim: fraction of each frame's worst pixels the L1 ignores (teacher artifacts).
        frame_tolerance_iod: teacher frames whose landmarks miss their latent by this much
            (inter-ocular distances) count half; 0 weighs all frames equally.
        use_reliability: weight each pixel's photometric loss by the teacher's reliability there
            (observed 1, completed 0.6, guessed 0.25), when the teacher gives one.
        complete_colors: complete the initial colours where the portrait does not show the head (mirror
            image, hair and skin priors) instead of copying the nearest painted Gaussian. The static fit
            (``fit_portrait.yaml``) needs it: nothing else colours the sides; a stage-2 fit learns them
            from the teacher's completed frames.
        w_landmarks: weight of the expression (landmark) loss, in units of the image size.
        w_lips: landmark weight of the lips.
        w_eyes: landmark weight of the eyelids and irises.
        w_laplacian: weight of the smoothness of the identity offsets.
        w_scale: weight of the penalty on Gaussians larger than ``max_scale``.
        max_scale: largest Gaussian extent before the scale penalty applies (metres).
        w_binding: weight of keeping Gaussians within one triangle-scale of their triangle.
        w_color_smooth: weight of pulling colours towards their mesh neighbours (fills unseen regions).
        w_depth: weight of depth consistency (rendered depth vs the triangles' surface, in cm).
        w_residual: weight of keeping the residual MLP's outputs small.
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
        latent_dim: int = 16,
        num_basis: int = 32,
        expression_hidden: int = 128,
        expression_init: Literal["rig", "random"] = "rig",
        stage1_ckpt: str | None = None,
        distill_steps: int = 100,
        residual: bool = True,
        residual_features: int = 16,
        residual_hidden: int = 64,
        residual_layers: int = 1,
        identity_steps: int = 200,
        lr_means: float = 0.005,
        lr_scales: float = 0.005,
        lr_quats: float = 0.001,
        lr_opacities: float = 0.05,
        lr_colors: float = 0.02,
        lr_features: float = 0.005,
        lr_shape: float = 0.0002,
        lr_motion: float = 0.0002,
        lr_residual: float = 0.001,
        w_l1: float = 0.8,
        w_dssim: float = 0.2,
        w_silhouette: float = 0.3,
        w_lpips: float = 0.0,
        lpips_weights: str | None = None,
        robust_trim: float = 0.05,
        frame_tolerance_iod: float = 0.05,
        use_reliability: bool = True,
        complete_colors: bool = False,
        w_landmarks: float = 1.0,
        w_lips: float = 2.0,
        w_eyes: float = 2.0,
        w_laplacian: float = 100.0,
        w_scale: float = 1.0,
        max_scale: float = 0.01,
        w_binding: float = 0.1,
        w_color_smooth: float = 0.01,
        w_depth: float = 0.1,
        w_residual: float = 1.0,
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
        head = GaussianHead(template.vertices, template.faces, num_gaussians, seed=seed,
                            feature_dim=residual_features if residual else 0)
        rig = ExpressionRig(template)
        with torch.random.fork_rng(devices=[]):  # the networks' initialisation depends on `seed` alone
            torch.manual_seed(seed)
            if expression_init == "rig":
                expression = ExpressionDeformer.from_rig(rig, latent_dim, num_basis=num_basis,
                                                         hidden=expression_hidden, template=template_path)
            else:
                expression = ExpressionDeformer(latent_dim, num_basis=num_basis, hidden=expression_hidden,
                                                template=template_path)
            residual_mlp = ResidualDeformer(latent_dim + 2, residual_features, residual_hidden, residual_layers) \
                if residual else None
        self.avatar = GaussianAvatar(head, expression, PoseDeformer(template=template_path), residual_mlp)
        faces = head.faces
        self.register_buffer("edges", mesh_edges(faces), persistent=False)
        self.register_buffer("face_pairs", face_adjacency(faces), persistent=False)
        self.register_buffer("background", torch.tensor(background, dtype=torch.float32), persistent=False)
        self.register_buffer("landmark_weights", landmark_weights(w_lips, w_eyes), persistent=False)
        self.strategy = DefaultStrategy(
            refine_start_iter=densify_start, refine_stop_iter=densify_stop, refine_every=densify_every,
            grow_grad2d=densify_grad_threshold, reset_every=10**9, verbose=False)
        self.strategy_state: dict[str, Any] = self.strategy.initialize_state(scene_scale=strategy_scene_scale)
        self._lpips = None
        self._fit_started: float | None = None
        self._train_seconds_before = 0.0  # training time of earlier runs of this fit (restored on resume)
        self._resumed = False
        self.reference_camera: dict[str, Tensor] | None = None  # the portrait's viewmat and K, kept in checkpoints

    @property
    def head(self) -> GaussianHead:
        """The Gaussians and identity offsets (neutral, unposed)."""
        return self.avatar.head

    # ----------------------------------------------------------------- set-up
    def _splat_names(self) -> list[str]:
        return [name for name, p in self.head.splats.items() if p.requires_grad]

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        hp = self.hparams
        optimizers = [torch.optim.Adam([self.head.splats[name]], lr=getattr(hp, f"lr_{name}"), eps=1e-15)
                      for name in self._splat_names()]
        optimizers.append(torch.optim.Adam([self.head.shape_offsets], lr=hp.lr_shape))
        motion = list(self.avatar.expression.parameters()) + list(self.avatar.pose_model.parameters())
        optimizers.append(torch.optim.Adam(motion, lr=hp.lr_motion))
        if self.avatar.residual is not None:
            optimizers.append(torch.optim.Adam(self.avatar.residual.parameters(), lr=hp.lr_residual))
        return optimizers

    def on_fit_start(self) -> None:
        self._fit_started = time.perf_counter()
        self.strategy_state = {k: (v.to(self.device) if isinstance(v, Tensor) else v)
                               for k, v in self.strategy_state.items()}
        if self._resumed:
            return  # everything below is in the checkpoint (on_fit_start runs before the step count is restored)
        portraits = getattr(self.trainer.datamodule, "portraits", [None])
        if len(portraits) > 1:
            raise ValueError(f"SubjectFitting fits one subject; the datamodule has {len(portraits)} portraits "
                             f"({portraits}); give one with --data.portrait photo.jpg")
        sample = self.reference_sample()
        self.reference_camera = {"viewmat": sample["viewmat"].cpu(), "K": sample["K"].cpu(),
                                 "size": torch.tensor(sample["image"].shape[-1])}
        if self.hparams.identity_steps > 0:
            with torch.enable_grad():
                fit_identity(self.head, sample["landmarks"][:468], sample["viewmat"], sample["K"],
                             sample["image"].shape[-1], self.hparams.identity_steps)
        self.initialize_colors(sample)
        if self.hparams.stage1_ckpt:
            self.load_stage1(self.hparams.stage1_ckpt)
        elif self.hparams.distill_steps > 0 and hasattr(self.trainer.datamodule, "clips"):
            self.distill(self.trainer.datamodule.train_dataloader(), self.hparams.distill_steps)

    def reference_sample(self) -> dict[str, Tensor]:
        """The datamodule's reference view (the portrait), on this module's device."""
        datamodule = getattr(self.trainer, "datamodule", None)
        sample = getattr(datamodule, "sample", None)
        if sample is None:
            raise RuntimeError("SubjectFitting needs a datamodule with a `sample` (the portrait), e.g. "
                               "PortraitDataModule or SyntheticVideoDataModule")
        return {k: v.to(self.device) for k, v in sample.items()}

    @torch.no_grad()
    def initialize_colors(self, sample: dict[str, Tensor]) -> None:
        """Colour the Gaussians from the reference photo (see :meth:`GaussianHead.paint_from_image`), completing
        what it hides from its mirror image and hair/skin priors (:mod:`vasa3d.teachers.completion`) when
        ``complete_colors`` is set."""
        matte = sample["region"] * sample["mask"]
        self.head.paint_from_image(sample["image"], matte, sample["viewmat"], sample["K"])
        if self.hparams.complete_colors:
            from vasa3d.teachers.completion import complete_head_colors

            template = load_template(self.hparams.template_path)
            region_of = {name: template.bound_to(self.head.binding, name) for name in template.regions}
            colors, _ = complete_head_colors(self.head, self.head.vertices(), torch.sigmoid(self.head.splats["colors"]),
                                             matte, sample["viewmat"], sample["K"], region_of, self.hparams.backend)
            self.head.set_colors(colors)

    def load_stage1(self, path: str | Path) -> None:
        """Start ``M_e``/``M_p`` from a ``LatentDistillation`` checkpoint."""
        load_stage1_weights(self.avatar, path, self.device)

    def distill(self, loader, steps: int, lr: float = 3e-3) -> None:
        """Stage 1 in brief: fit ``M_e``/``M_p`` to the frames' landmarks (no rendering)."""
        distill_motion(self, loader, steps, lr)

    # ----------------------------------------------------------------- model
    def batch_latent(self, batch: dict[str, Tensor]) -> MotionLatent:
        """The batch's ``MotionLatent [B]``; a zero latent for a still portrait (no ``dyn`` in the batch)."""
        if "dyn" in batch:
            return MotionLatent(batch["dyn"], batch["pose"], batch.get("gaze"))
        size = batch["image"].shape[0]
        return MotionLatent(batch["image"].new_zeros(size, self.hparams.latent_dim), batch["image"].new_zeros(size, 6))

    def render_frames(self, batch: dict[str, Tensor], frame: AvatarFrame) -> dict[str, Any]:
        """Render each frame of the batch in its camera: ``rgb [B, 3, S, S]``, ``alpha [B, 1, S, S]``,
        ``depth_offset [B, 1, S, S]`` (rendered depth minus the triangles' surface depth, metres), ``infos``."""
        size = batch["image"].shape[-1]
        background = torch.cat([self.background, self.background.new_zeros(1)])
        rgbs, alphas, offsets, infos = [], [], [], []
        for b in range(batch["image"].shape[0]):
            g = self.avatar.world_gaussians(frame, b)
            viewmat = batch["viewmat"][b]
            depth = g["means"] @ viewmat[2, :3] + viewmat[2, 3]
            surface = g["anchors"] @ viewmat[2, :3] + viewmat[2, 3]
            colors = torch.cat([g["colors"], (depth - surface)[:, None]], dim=-1)
            out = rasterize(g["means"], g["quats"], g["scales"], g["opacities"], colors, viewmat[None],
                            batch["K"][b:b + 1], size, size, backgrounds=background, backend=self.hparams.backend,
                            depth=False)
            image = out.rgb[0].permute(2, 0, 1)
            rgbs.append(image[:3])
            offsets.append(image[3:])
            alphas.append(out.alpha[0].permute(2, 0, 1))
            infos.append(out.info)
        return {"rgb": torch.stack(rgbs), "alpha": torch.stack(alphas), "depth_offset": torch.stack(offsets),
                "infos": infos}

    def landmark_loss(self, batch: dict[str, Tensor], latent: MotionLatent, frame: AvatarFrame) -> Tensor:
        """Expression consistency: projected template landmarks vs the frame's detected ones (image-size units)."""
        count = batch["landmarks"].shape[1]  # 478, or the 468 face points of data without irises
        points = self.avatar.landmarks(latent, frame)[:, :count]
        return landmark_reprojection(points, batch["landmarks"], batch["viewmat"], batch["K"],
                                     batch["image"].shape[-1], self.landmark_weights[:count])

    def target(self, batch: dict[str, Tensor]) -> Tensor:
        """The frames on this module's background (outside their foreground mask)."""
        mask = batch["mask"]
        return batch["image"] * mask + self.background[None, :, None, None] * (1 - mask)

    def compute_losses(self, batch: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """All loss terms (and ``total``, their weighted sum) and the renders they came from (with the
        batch's ``latent`` and the avatar's ``frame`` geometry)."""
        hp = self.hparams
        latent = self.batch_latent(batch)
        frame = self.avatar.frame(latent, rigid=self._rigid(batch))
        out = self.render_frames(batch, frame)
        out.update(latent=latent, frame=frame)
        weight = batch.get("region")
        if hp.use_reliability and "reliability" in batch:  # trust what the teacher saw more than what it guessed
            weight = batch["reliability"] if weight is None else weight * batch["reliability"]
        photo = photometric_losses(out["rgb"], out["alpha"], self.target(batch), batch["mask"], weight,
                                   trim=hp.robust_trim, lpips=self.lpips_fn(), reduction="frame")
        if "intended_landmarks" in batch:
            weights = teacher_frame_weights(batch["landmarks"], batch["intended_landmarks"],
                                            batch["reference_landmarks"], hp.frame_tolerance_iod)
        else:
            weights = torch.ones_like(photo["l1"])
        losses = {name: (value * weights).sum() / weights.sum() for name, value in photo.items()}
        splats = self.head.splats
        g_scales = torch.exp(splats["scales"]) * take(triangle_frames(self.head.vertices(), self.head.faces).scales,
                                                      self.head.binding)[:, None]
        losses.update({
            "landmarks": self.landmark_loss(batch, latent, frame),
            "laplacian": laplacian_smoothness(self.head.shape_offsets, self.edges),
            "scale": scale_regularizer(g_scales, hp.max_scale),
            "binding": binding_regularizer(splats["means"]),
            "color_smooth": neighbour_color_smoothness(torch.sigmoid(splats["colors"]), self.head.binding,
                                                       self.face_pairs, self.head.faces.shape[0]),
            "depth": out["depth_offset"].abs().mean() / DEPTH_UNIT_M,
        })
        if frame.residuals is not None:
            losses["residual"] = torch.cat([v.flatten(2) for v in frame.residuals.values()], dim=-1).pow(2).mean()
        losses["total"] = sum(getattr(hp, f"w_{name}") * value for name, value in losses.items())
        return losses, out

    def lpips_fn(self):
        """LPIPS as a loss, loaded from ``lpips_weights`` when ``w_lpips > 0``; else None."""
        if self.hparams.w_lpips <= 0:
            return None
        if self._lpips is None:
            from vasa3d.metrics.image import LPIPS

            self._lpips = LPIPS(self.hparams.lpips_weights).to(self.device)
        return self._lpips

    # ----------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        optimizers = self.optimizers()
        losses, out = self.compute_losses(batch)
        if not torch.isfinite(losses["total"]):
            raise DivergenceError(
                f"step {self.global_step}: the loss is not finite ({ {k: float(v.detach()) for k, v in losses.items()} }); "
                "lower the learning rates (model.lr_*) or resume from the last good checkpoint")
        if self.hparams.densify:
            for info in out["infos"]:
                self.strategy.step_pre_backward(self.head.splats, self._splat_optimizers(), self.strategy_state,
                                                self.global_step, info)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        self.manual_backward(losses["total"])
        # Lightning counts a step per wrapped optimiser stepped; step one wrapped, the rest raw,
        # so that trainer.global_step is the number of training iterations.
        optimizers[0].step()
        for opt in optimizers[1:]:
            opt.optimizer.step()
        if self.hparams.densify:
            self._densify(out["infos"])
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, prog_bar=False)
        self.log("train/loss", losses["total"].detach(), prog_bar=True)
        self.log("train/num_gaussians", float(self.head.num_gaussians), prog_bar=True)
        return losses["total"].detach()

    def _splat_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        opts = self.optimizers()
        return {name: opt.optimizer for name, opt in zip(self._splat_names(), opts)}

    def _densify(self, infos: list[dict[str, Any]]) -> None:
        # One frame per render: merge them as one multi-camera render for gsplat's bookkeeping.
        means2d = torch.cat([info["means2d"].detach() for info in infos])
        means2d.grad = torch.cat([info["means2d"].grad for info in infos])
        merged = {"means2d": means2d, "radii": torch.cat([info["radii"] for info in infos]),
                  "width": infos[0]["width"], "height": infos[0]["height"], "n_cameras": len(infos),
                  "gaussian_ids": None}
        step = self.global_step - 1  # the step just taken
        # Splitting samples new positions: seed it by the step, so that a resumed fit splits as an
        # uninterrupted one would.
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(self.hparams.seed * 1_000_003 + step)
            self.strategy.step_post_backward(self.head.splats, self._splat_optimizers(), self.strategy_state, step,
                                             merged, packed=False)
        excess = self.head.num_gaussians - self.hparams.max_gaussians
        if excess > 0:
            drop = torch.zeros(self.head.num_gaussians, dtype=torch.bool, device=self.device)
            drop[torch.argsort(self.head.splats["opacities"].detach())[:excess]] = True
            remove(self.head.splats, self._splat_optimizers(), self.strategy_state, drop)

    @property
    def train_seconds(self) -> float:
        """Wall time spent fitting so far, over every resumed run (set-up and teacher video excluded)."""
        running = time.perf_counter() - self._fit_started if self._fit_started is not None else 0.0
        return self._train_seconds_before + running

    # ----------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["strategy_state"] = {k: (v.cpu() if isinstance(v, Tensor) else v)
                                        for k, v in self.strategy_state.items()}
        checkpoint["train_time_s"] = self.train_seconds
        if self.reference_camera is not None:
            checkpoint["reference_camera"] = self.reference_camera

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.head.resize_to(checkpoint["state_dict"], prefix="avatar.head.")
        if "strategy_state" in checkpoint:
            self.strategy_state = dict(checkpoint["strategy_state"])
        self._train_seconds_before = float(checkpoint.get("train_time_s", 0.0))
        self._resumed = True
        self.reference_camera = checkpoint.get("reference_camera")
