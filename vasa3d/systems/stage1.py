"""Where stage 2's ``M_e``/``M_p`` start: a stage-1 checkpoint, or a short landmark-only distillation."""

from __future__ import annotations

from pathlib import Path

import torch

from vasa3d import runs
from vasa3d.errors import MissingInputError


def load_stage1_weights(avatar, path: str | Path, device: torch.device | str = "cpu") -> None:
    """Copy ``M_e`` (``expression.*``) and ``M_p`` (``pose_model.*``) from a ``LatentDistillation`` checkpoint
    into ``avatar`` (a :class:`~vasa3d.gaussians.avatar.GaussianAvatar`)."""
    path = Path(path)
    if path.is_dir():  # a run folder or root: its newest last.ckpt
        path = runs.last_checkpoint(path) or path
    if not path.is_file():
        raise MissingInputError(f"model.stage1_ckpt={path}: no such checkpoint; run `lightning fit --config "
                                "experiments/distill_latent.yaml` first, or set it to null for a short distillation")
    state = torch.load(path, map_location=device, weights_only=False)["state_dict"]
    for prefix, module in (("expression.", avatar.expression), ("pose_model.", avatar.pose_model)):
        part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        missing = [name for name, _ in module.named_parameters() if name not in part]
        if missing:
            raise ValueError(f"model.stage1_ckpt={path}: not a LatentDistillation checkpoint (no {prefix}"
                             f"{missing[0]}); give the checkpoint of `experiments/distill_latent.yaml`")
        module.load_state_dict(part, strict=False)  # the rig's constant buffers may be absent


def distill_motion(system, loader, steps: int, lr: float = 3e-3) -> None:
    """Stage 1 in brief: fit ``system.avatar``'s ``M_e``/``M_p`` to the frames' landmarks for ``steps``
    batches of ``loader`` (no rendering; the identity offsets stay as they are)."""
    avatar = system.avatar
    optimizer = torch.optim.Adam(list(avatar.expression.parameters()) + list(avatar.pose_model.parameters()), lr=lr)
    step = 0
    with torch.enable_grad():
        while step < steps:
            for batch in loader:
                batch = {k: v.to(system.device) for k, v in batch.items()}
                latent = system.batch_latent(batch)
                loss = system.landmark_loss(batch, latent, avatar.frame(latent, residual=False))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
                if step >= steps:
                    break
    avatar.head.shape_offsets.grad = None
