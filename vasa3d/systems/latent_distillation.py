"""``LatentDistillation`` (stage 1): learn ``M_e`` and ``M_p`` from teacher frames.

The motion latent of each teacher frame drives the template: ``M_e(z_dyn)`` deforms the
subject's identity-shaped template, ``M_p(z_pose)`` poses it (the neck bends), and the
projected landmarks of the result must match the landmarks mediapipe detects on the frame,
lips and eyes weighted up. Training on several subjects at once makes ``M_e``/``M_p``
subject-independent; stage 2 starts from the checkpoint. Validation reports the landmark
error on held-out clips beside the zero-deformation baseline (``M_p`` only).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from vasa3d.face.template import load_template
from vasa3d.gaussians.head import GaussianHead
from vasa3d.losses import inter_ocular, landmark_weights, project_points
from vasa3d.motion.deformation import ExpressionDeformer, PoseDeformer
from vasa3d.motion.latent import MotionLatent
from vasa3d.motion.rig import ExpressionRig
from vasa3d.teachers.mesh_lift import fit_identity

class LatentDistillation(L.LightningModule):
    """Stage 1: distil the teacher's motion into ``M_e`` (expression) and ``M_p`` (pose).

    Args:
        latent_dim: D of ``MotionLatent.dyn``; must match the data.
        num_basis: learnt per-vertex deformation bases of ``M_e``.
        hidden: width of ``M_e``'s MLP.
        init_from_rig: start ``M_e`` at the procedural rig instead of from scratch.
        lr: Adam learning rate.
        w_lips: weight of the lip landmarks (others 1).
        w_eyes: weight of the eyelid and iris landmarks.
        identity_steps: optimisation steps fitting each subject's identity offsets to its portrait.
        template_path: head template .npz; None uses the packaged one.
    """

    def __init__(
        self,
        latent_dim: int = 16,
        num_basis: int = 32,
        hidden: int = 128,
        init_from_rig: bool = False,
        lr: float = 3e-3,
        w_lips: float = 2.0,
        w_eyes: float = 2.0,
        identity_steps: int = 200,
        template_path: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.template = load_template(template_path)
        rig = ExpressionRig(self.template)
        self.rig = rig
        if init_from_rig:
            self.expression = ExpressionDeformer.from_rig(rig, latent_dim, num_basis=num_basis, hidden=hidden,
                                                          template=template_path)
        else:
            self.expression = ExpressionDeformer(latent_dim, num_basis=num_basis, hidden=hidden, template=template_path)
        self.pose_model = PoseDeformer(template=template_path)
        self.register_buffer("landmark_weights", landmark_weights(w_lips, w_eyes), persistent=False)
        self.register_buffer("identities", torch.zeros(0, len(self.template.vertices), 3))

    # ------------------------------------------------------------ set-up
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(list(self.expression.parameters()) + list(self.pose_model.parameters()),
                                lr=self.hparams.lr)

    def on_fit_start(self) -> None:
        if self.identities.shape[0] == 0:
            self.identities = self.fit_identities(self.trainer.datamodule.cameras).to(self.device)

    @torch.no_grad()
    def fit_identities(self, cameras: list[dict[str, Tensor]]) -> Tensor:
        """``[S, V, 3]`` identity-shaped neutral vertices of each subject, fitted to its portrait landmarks."""
        out = []
        for camera in cameras:
            head = GaussianHead(self.template.vertices, self.template.faces, num_gaussians=1)
            size = int(round(2 * float(camera["K"][0, 2])))
            with torch.enable_grad():
                fit_identity(head, camera["reference_landmarks"][:468, :2], camera["viewmat"], camera["K"], size,
                             self.hparams.identity_steps)
            out.append(head.vertices().detach())
        return torch.stack(out)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint["state_dict"].get("identities")
        if saved is not None:
            self.identities = torch.zeros_like(saved)

    # ------------------------------------------------------------ model
    def landmarks(self, batch: dict[str, Tensor], deform: bool = True) -> Tensor:
        """``[B, 478, 2]`` projected landmarks of the template driven by the batch's latents."""
        latent = MotionLatent(batch["dyn"], batch["pose"], batch.get("gaze"))
        identity = self.identities[batch["subject"]]
        verts = identity + self.expression(latent.dyn, identity) if deform else identity
        posed = self.pose_model(verts, latent.pose)
        iris = self.rig.iris(verts, latent.gaze)
        head = latent.head_transform()
        iris = iris @ head[:, :3, :3].transpose(-1, -2) + head[:, None, :3, 3]
        points = torch.cat([posed[:, :468], iris], dim=1)
        return project_points(points, batch["viewmat"], batch["K"])

    def landmark_errors(self, batch: dict[str, Tensor], deform: bool = True) -> Tensor:
        """``[B, 478]`` pixel distances to the detected landmarks."""
        return (self.landmarks(batch, deform) - batch["landmarks"]).norm(dim=-1)

    # ------------------------------------------------------------ loops
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        errors = self.landmark_errors(batch) / batch["image"].shape[-1]
        loss = (errors * self.landmark_weights).sum(-1).mean() / self.landmark_weights.sum()
        if not torch.isfinite(loss):
            raise RuntimeError(f"step {self.global_step}: the landmark loss is not finite; lower model.lr")
        self.log("train/loss", loss, prog_bar=True)
        return loss

    @torch.no_grad()
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._log_errors("val", batch)

    @torch.no_grad()
    def test_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._log_errors(("test/heldout_latent", "test/heldout_pose")[dataloader_idx], batch)

    def _log_errors(self, prefix: str, batch: dict[str, Tensor]) -> None:
        iod = inter_ocular(batch["reference_landmarks"])
        for name, deform in (("landmark", True), ("zero_deformation", False)):
            px = self.landmark_errors(batch, deform).mean(-1)
            self.log(f"{prefix}/{name}_px", px.mean(), prog_bar=name == "landmark", add_dataloader_idx=False,
                     batch_size=len(px))
            self.log(f"{prefix}/{name}_iod", (px / iod).mean(), add_dataloader_idx=False, batch_size=len(px))

