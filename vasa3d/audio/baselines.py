"""Baselines for the audio-to-motion model; same ``generate`` interface as ``MotionDiffusion``.

- :class:`RegressionMotion`: the diffusion model's transformer backbone trained with a plain L1/L2
  regression to the motion (no noise, no sampling); deterministic, so it has no diversity.
- :class:`EnergyJaw`: audio energy mapped straight to jaw opening by an affine map fitted with least
  squares on training frames; every other channel stays at its training mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vasa3d.audio.diffusion import (
    MotionTransformer, WindowedMotionModel, condition_dropout, prepare_batch, velocity_loss)
from vasa3d.motion.latent import MotionLatent


class RegressionMotion(WindowedMotionModel):
    """Transformer regression baseline: audio + prefix + controls -> motion window.

    Args (beyond :class:`WindowedMotionModel`'s): ``loss`` "l1" or "l2"; condition dropout
    probabilities as in ``MotionDiffusion`` (so controls stay optional); ``w_velocity`` weight of the
    velocity loss; transformer sizes as in :class:`MotionTransformer`.
    """

    def __init__(self, latent_dim: int, audio_dim: int, with_gaze: bool = True, emotion_dim: int = 0,
                 window: int = 50, prev_frames: int = 10, fps: float = 25.0, d_model: int = 128,
                 num_layers: int = 4, num_heads: int = 4, dropout: float = 0.1, loss: str = "l1",
                 p_drop_audio: float = 0.1, p_drop_control: float = 0.3, p_drop_prev: float = 0.1,
                 w_velocity: float = 1.0, pose_control: bool = False, pose_limit: float | None = None,
                 motion_limit: float | None = None) -> None:
        super().__init__(latent_dim, audio_dim, with_gaze, emotion_dim, window, prev_frames, fps, pose_control,
                         pose_limit, motion_limit)
        if loss not in ("l1", "l2"):
            raise ValueError(f"loss={loss!r}: use 'l1' or 'l2'")
        self.loss_fn = F.l1_loss if loss == "l1" else F.mse_loss
        self.p_drop = {"audio": p_drop_audio, "control": p_drop_control, "prev": p_drop_prev}
        self.w_velocity = w_velocity
        self.net = MotionTransformer(self.motion_dim, audio_dim, d_model, num_layers, num_heads, dropout,
                                     emotion_dim, diffusion=False, pose_control=pose_control)

    def denoise(self, x_t, t, audio, prev, prev_len, controls, keep_audio, keep_controls) -> Tensor:
        return self.net(None, None, audio, prev, prev_len, controls, keep_audio, keep_controls)

    def training_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Regression and velocity losses on a batch of raw windows; ``loss`` is the total."""
        x0, audio, prev, prev_len, controls = prepare_batch(self, batch)
        keep_audio, keep_controls, prev_len = condition_dropout(self, prev_len)
        x0_hat = self.denoise(None, None, audio, prev, prev_len, controls, keep_audio, keep_controls)
        losses = {"regression": self.loss_fn(x0_hat, x0), "velocity": velocity_loss(x0_hat, x0, prev, prev_len)}
        losses["loss"] = losses["regression"] + self.w_velocity * losses["velocity"]
        return losses

    def sample_window(self, audio, prev, prev_len, controls, generator=None, cfg_audio=1.0, cfg_control=1.0,
                      **kwargs) -> Tensor:
        """One network pass (guidance applies to the regression output the same way); the seed is unused."""
        controls = {k: v.expand(audio.shape[0], -1) for k, v in controls.items()}
        return self.guided(None, None, audio, prev, prev_len, controls, cfg_audio, cfg_control)


class EnergyJaw(nn.Module):
    """Energy-to-jaw baseline: ``jaw_open = a * energy + b``; other channels at their training mean.

    Args:
        latent_dim: D of ``MotionLatent.dyn``.
        audio_dim: F, audio features per frame.
        energy_channel: index of the energy (loudness) feature among the F.
        jaw_channel: dyn channel of the mouth opening (0 = the rig's ``jaw_open``).
        with_gaze: whether generated latents carry a gaze channel.
    """

    def __init__(self, latent_dim: int, audio_dim: int, energy_channel: int = 0, jaw_channel: int = 0,
                 with_gaze: bool = True) -> None:
        super().__init__()
        if not 0 <= energy_channel < audio_dim:
            raise ValueError(f"EnergyJaw: energy_channel={energy_channel} is outside the {audio_dim} audio features")
        self.energy_channel, self.jaw_channel, self.with_gaze = energy_channel, jaw_channel, with_gaze
        self.register_buffer("coef", torch.zeros(2))  # slope, intercept
        self.register_buffer("mean_dyn", torch.zeros(latent_dim))
        self.register_buffer("mean_pose", torch.zeros(6))
        self.register_buffer("mean_gaze", torch.zeros(2))

    @torch.no_grad()
    def fit(self, audio: Tensor, dyn: Tensor, pose: Tensor, gaze: Tensor | None = None) -> "EnergyJaw":
        """Least squares on training frames: ``audio [..., F]``, ``dyn [..., D]``, ``pose [..., 6]``,
        ``gaze [..., 2]`` (optional)."""
        energy = audio[..., self.energy_channel].reshape(-1).double()
        jaw = dyn[..., self.jaw_channel].reshape(-1).double()
        design = torch.stack([energy, torch.ones_like(energy)], dim=1)
        self.coef.copy_(torch.linalg.lstsq(design, jaw[:, None]).solution[:, 0].float())
        self.mean_dyn.copy_(dyn.reshape(-1, dyn.shape[-1]).mean(0))
        self.mean_pose.copy_(pose.reshape(-1, 6).mean(0))
        if gaze is not None:
            self.mean_gaze.copy_(gaze.reshape(-1, 2).mean(0))
        return self

    @torch.no_grad()
    def jaw(self, audio_features: Tensor) -> Tensor:
        """The baseline's ``jaw_open [T]`` for audio features ``[T, F]``: frame by frame, so a stream of
        chunks gets what the whole clip would."""
        return self.coef[0] * audio_features[:, self.energy_channel].to(self.coef) + self.coef[1]

    @torch.no_grad()
    def generate(self, audio_features: Tensor, fps: float | None = None, seed: int = 0, **kwargs) -> MotionLatent:
        """``MotionLatent [T]`` from audio features ``[T, F]``; deterministic (seed and other options unused)."""
        T = audio_features.shape[0]
        dyn = self.mean_dyn.expand(T, -1).clone()
        dyn[:, self.jaw_channel] = self.jaw(audio_features).to(dyn)
        return MotionLatent(dyn, self.mean_pose.expand(T, -1).clone(),
                            self.mean_gaze.expand(T, -1).clone() if self.with_gaze else None)
