"""Audio-to-motion diffusion transformer (VASA-1 style), its cosine schedule and DDIM sampler.

A window of ``T`` motion frames ``x = concat(dyn, pose[, gaze])`` per frame (normalised with stored
training statistics) is denoised by a transformer that sees, as tokens:

- condition tokens: the diffusion step, a gaze direction ``[2]``, a head distance ``[1]`` (pose
  translation z), an emotion offset ``[E]`` and (with ``pose_control``) the window's mean head rotation
  ``[3]``, each replaced by a learned null embedding when absent or dropped (classifier-free guidance);
- ``P`` prefix tokens: the last frames of the previous window (masked out where there are none), so
  the next window continues the motion seamlessly;
- ``T`` window tokens: the noisy motion plus the audio features of that frame (or a learned null).

The network predicts ``x0``, as a residual to the last real prefix frame (a learned per-channel gate
says how much of it to keep), so continuing the motion is the default; sampling is deterministic DDIM (eta = 0) from a seeded
``torch.Generator``, with guidance ``x0 = x0_u + s_audio (x0_a - x0_u) + s_control (x0_ac - x0_a)``
(u: no audio, no controls; a: audio only; ac: audio and controls). Windowed generation
(``generate``) and its streaming form (``stream``) live in :class:`WindowedMotionModel`, shared with
the regression baseline. Pure torch; no Lightning.

Long audio: a model that continues its own output can drift (measured before: yaw +37 deg after 26 s).
What drove it, measured on the shipped model over 2-5 min: audio guidance above 1. ``cfg_audio = 1.5``
extrapolates each window beyond anything seen in training, the next window continues from that
prefix, and within a minute the head turned to -90 deg; with ``cfg_audio = 1`` the same model stays
centred (yaw mean within 4 deg of the centre, std ~10 deg, in every 30 s), with or without the anchor. So guidance
defaults to 1 (it costs ~0.01 of lip-sync correlation on held-out speech), and two more things hold the
head whatever the settings: the pose control, set at inference to the anchor pose (the training mean
unless given; on its own it did not stop the cfg 1.5 drift), and a soft limit applied to each window
before it becomes the next window's prefix (``soft_limit``: identity up to 60% of the limit, then a
tanh knee), at ``pose_limit`` training std for the pose and ``motion_limit`` for the other channels, so
no prefix ever leaves the training range (with cfg 1.5 the head then stays in range but sits at the
limit).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vasa3d.motion.latent import MotionLatent

CONTROLS = ("gaze", "distance", "emotion", "pose")


def soft_limit(x: Tensor, limit: Tensor, knee: float = 0.6) -> Tensor:
    """``x [..., C]`` with each channel's magnitude softly capped at ``limit [C]`` (> 0): unchanged up to
    ``knee * limit``, then ``knee * limit + (1 - knee) * limit * tanh(excess / ((1 - knee) * limit))``."""
    start = knee * limit
    room = (1 - knee) * limit
    excess = (x.abs() - start).clamp(min=0)
    capped = start + room * torch.tanh(excess / room)
    return torch.where(x.abs() > start, x.sign() * capped, x)


def cosine_alphas_cumprod(num_timesteps: int, offset: float = 0.008) -> Tensor:
    """``[N]`` cumulative signal rates ``alpha_bar_t`` of the cosine schedule (Nichol & Dhariwal), t = 0..N-1."""
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    f = torch.cos((steps + offset) / (1 + offset) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, dim=0).float()


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """``[..., dim]`` sinusoidal embedding of (possibly negative, fractional) positions ``t [...]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[..., None] * freqs
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class MotionTransformer(nn.Module):
    """The backbone: condition + prefix + window tokens -> per-frame motion ``[B, T, C]``.

    The output adds ``anchor_gate * last real prefix frame`` (nothing where there is no prefix).

    Args:
        motion_dim: C, channels per motion frame.
        audio_dim: F, audio features per frame.
        d_model, num_layers, num_heads, dropout: transformer size.
        emotion_dim: E of the emotion control (0 = no emotion token).
        diffusion: True for the denoiser (noisy motion and step inputs); False for plain regression.
        pose_control: add the head-rotation control token (the window's mean rotation, ``[3]``).
    """

    def __init__(self, motion_dim: int, audio_dim: int, d_model: int = 128, num_layers: int = 4, num_heads: int = 4,
                 dropout: float = 0.1, emotion_dim: int = 0, diffusion: bool = True,
                 pose_control: bool = False) -> None:
        super().__init__()
        self.d_model, self.diffusion = d_model, diffusion
        self.motion_in = nn.Linear(motion_dim, d_model) if diffusion else None
        self.prefix_in = nn.Linear(motion_dim, d_model)
        self.audio_in = nn.Sequential(nn.Linear(audio_dim, d_model), nn.GELU(), nn.Linear(d_model, d_model))
        self.step_in = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, d_model))
        sizes = {"gaze": 2, "distance": 1, "emotion": emotion_dim, "pose": 3 if pose_control else 0}
        self.control_in = nn.ModuleDict({k: nn.Linear(n, d_model) for k, n in sizes.items() if n > 0})
        self.null = nn.ParameterDict({k: nn.Parameter(torch.randn(d_model) * 0.5)
                                      for k in ("audio", "step", *self.control_in.keys())})
        self.token_type = nn.Parameter(torch.randn(3, d_model) * 0.02)  # condition, prefix, window
        layer = nn.TransformerEncoderLayer(d_model, num_heads, 4 * d_model, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, motion_dim))
        self.anchor_gate = nn.Parameter(torch.ones(motion_dim))  # per channel: how much to lean on the prefix

    def forward(
        self,
        x_t: Tensor | None,  # [B, T, C] noisy normalised motion (None for regression)
        t: Tensor | None,  # [B] diffusion step (None for regression)
        audio: Tensor,  # [B, T, F] normalised audio features
        prev: Tensor,  # [B, P, C] normalised previous motion, oldest first
        prev_len: Tensor,  # [B] long: how many of the last prefix frames are real (0 = none)
        controls: dict[str, Tensor] | None = None,  # name -> [B, n] normalised control values
        keep_audio: Tensor | None = None,  # [B] bool: False drops the audio (null embedding)
        keep_controls: Tensor | None = None,  # [B] bool: False drops every control
    ) -> Tensor:
        """``[B, T, C]`` the predicted clean (normalised) motion of the window."""
        B, T, _ = audio.shape
        P = prev.shape[1]
        controls = controls or {}
        if self.diffusion:
            step = self.step_in(timestep_embedding(t, self.d_model))
        else:
            step = self.null["step"].expand(B, -1)
        cond = [step]
        for name, proj in self.control_in.items():
            null = self.null[name].expand(B, -1)
            value = controls.get(name)
            if value is None:
                cond.append(null)
            else:
                emb = proj(value)
                cond.append(emb if keep_controls is None else torch.where(keep_controls[:, None], emb, null))
        cond = torch.stack(cond, dim=1) + self.token_type[0]

        audio_emb = self.audio_in(audio)
        if keep_audio is not None:
            audio_emb = torch.where(keep_audio[:, None, None], audio_emb, self.null["audio"])
        window = audio_emb + self.token_type[2]
        if self.diffusion:
            window = window + self.motion_in(x_t)
        positions = torch.arange(-P, T, device=audio.device)
        pos = timestep_embedding(positions, self.d_model) * 0.5
        prefix = self.prefix_in(prev) + self.token_type[1] + pos[:P]
        window = window + pos[P:]

        tokens = torch.cat([cond, prefix, window], dim=1)
        pad = torch.zeros(B, tokens.shape[1], dtype=torch.bool, device=audio.device)
        pad[:, cond.shape[1]:cond.shape[1] + P] = torch.arange(P, device=audio.device) < (P - prev_len[:, None])
        hidden = self.encoder(tokens, src_key_padding_mask=pad)
        # Residual to the last real prefix frame: continuing the motion is the default, not learnt.
        anchor = torch.where((prev_len > 0)[:, None], prev[:, -1], torch.zeros_like(prev[:, -1]))
        return self.out(hidden[:, -T:]) + self.anchor_gate * anchor[:, None]


class WindowedMotionModel(nn.Module, abc.ABC):
    """Shared parts of the audio-to-motion models: normalisation, controls, windowed/streaming generation.

    Subclasses implement ``denoise`` (one network call) and ``sample_window``. ``pose_control``: the
    head-rotation control; ``pose_limit`` / ``motion_limit``: soft limits of generated pose / other channels
    in training std (None = no limit).
    """

    def __init__(self, latent_dim: int, audio_dim: int, with_gaze: bool = True, emotion_dim: int = 0,
                 window: int = 50, prev_frames: int = 10, fps: float = 25.0, pose_control: bool = False,
                 pose_limit: float | None = None, motion_limit: float | None = None) -> None:
        super().__init__()
        self.pose_control, self.pose_limit, self.motion_limit = pose_control, pose_limit, motion_limit
        self.latent_dim, self.audio_dim = latent_dim, audio_dim
        self.with_gaze, self.emotion_dim = with_gaze, emotion_dim
        self.window, self.prev_frames, self.fps = window, prev_frames, fps
        self.motion_dim = latent_dim + 6 + (2 if with_gaze else 0)
        self.register_buffer("motion_mean", torch.zeros(self.motion_dim))
        self.register_buffer("motion_std", torch.ones(self.motion_dim))
        self.register_buffer("audio_mean", torch.zeros(audio_dim))
        self.register_buffer("audio_std", torch.ones(audio_dim))
        self.register_buffer("stats_ready", torch.tensor(False))

    # ------------------------------------------------------------ normalisation
    @torch.no_grad()
    def fit_stats(self, motion: Tensor, audio: Tensor) -> None:
        """Store mean/std of raw motion ``[N, C]`` and audio features ``[N, F]`` (training frames)."""
        for prefix, data in (("motion", motion), ("audio", audio)):
            data = data.reshape(-1, data.shape[-1]).float()
            std = data.std(0) if len(data) > 1 else torch.ones_like(data[0])
            getattr(self, f"{prefix}_mean").copy_(data.mean(0))
            getattr(self, f"{prefix}_std").copy_(torch.where(std < 1e-5, torch.ones_like(std), std))
        self.stats_ready.fill_(True)

    def pack(self, dyn: Tensor, pose: Tensor, gaze: Tensor | None = None) -> Tensor:
        """``[..., C]`` normalised motion from raw channels (missing gaze counts as looking straight)."""
        if dyn.shape[-1] != self.latent_dim:
            raise ValueError(f"motion: dyn has {dyn.shape[-1]} channels, the model expects latent_dim="
                             f"{self.latent_dim}; set model.latent_dim to match the data")
        parts = [dyn, pose]
        if self.with_gaze:
            parts.append(gaze if gaze is not None else torch.zeros_like(pose[..., :2]))
        return (torch.cat(parts, dim=-1) - self.motion_mean) / self.motion_std

    def unpack(self, x: Tensor) -> MotionLatent:
        """Raw ``MotionLatent`` from normalised motion ``[..., C]``."""
        raw = x * self.motion_std + self.motion_mean
        D = self.latent_dim
        return MotionLatent(raw[..., :D], raw[..., D:D + 6], raw[..., D + 6:D + 8] if self.with_gaze else None)

    def normalize_audio(self, audio: Tensor) -> Tensor:
        if audio.shape[-1] != self.audio_dim:
            raise ValueError(f"audio features: got {audio.shape[-1]} per frame, the model was trained on "
                             f"{self.audio_dim}; extract them with the same feature settings")
        return (audio - self.audio_mean) / self.audio_std

    def controls_from_motion(self, x0: Tensor) -> dict[str, Tensor]:
        """Training controls from a normalised window ``[B, T, C]``: mean gaze, mean head distance and (with
        ``pose_control``) mean head rotation."""
        D = self.latent_dim
        out = {"distance": x0[..., D + 5:D + 6].mean(1)}
        if self.pose_control:
            out["pose"] = x0[..., D:D + 3].mean(1)
        if self.with_gaze:
            out["gaze"] = x0[..., D + 6:D + 8].mean(1)
        return out

    def normalize_controls(self, gaze: Tensor | None = None, distance: float | Tensor | None = None,
                           emotion: Tensor | None = None, anchor_pose: Tensor | None = None) -> dict[str, Tensor]:
        """``name -> [1, n]`` model-unit controls from raw gaze (yaw, pitch rad), distance (m), emotion [E] and
        the anchor head rotation (axis-angle ``[3]``, rad; with ``pose_control``, None = the training mean)."""
        D, out = self.latent_dim, {}
        dev = self.motion_mean.device
        if self.pose_control:
            if anchor_pose is None:
                out["pose"] = torch.zeros(1, 3, device=dev)
            else:
                rotation = torch.as_tensor(anchor_pose, dtype=torch.float32, device=dev).reshape(1, 3)
                out["pose"] = (rotation - self.motion_mean[D:D + 3]) / self.motion_std[D:D + 3]
        elif anchor_pose is not None:
            raise ValueError("anchor_pose: this model was trained without the pose control (pose_control=False)")
        if gaze is not None:
            if not self.with_gaze:
                raise ValueError("gaze control: this model was trained without gaze channels (with_gaze=False)")
            gaze = torch.as_tensor(gaze, dtype=torch.float32, device=dev).reshape(1, 2)
            out["gaze"] = (gaze - self.motion_mean[D + 6:D + 8]) / self.motion_std[D + 6:D + 8]
        if distance is not None:
            distance = torch.as_tensor(distance, dtype=torch.float32, device=dev).reshape(1, 1)
            out["distance"] = (distance - self.motion_mean[D + 5]) / self.motion_std[D + 5]
        if emotion is not None:
            if self.emotion_dim == 0:
                raise ValueError("emotion control: this model has no emotion input (emotion_dim=0)")
            out["emotion"] = torch.as_tensor(emotion, dtype=torch.float32, device=dev).reshape(1, self.emotion_dim)
        return out

    def channel_limits(self) -> Tensor | None:
        """``[C]`` soft limits in normalised units (training std), or None where no limit is set."""
        if self.pose_limit is None and self.motion_limit is None:
            return None
        big = torch.tensor(float("inf"))
        limits = torch.full((self.motion_dim,), float(self.motion_limit) if self.motion_limit else big.item())
        if self.pose_limit:
            limits[self.latent_dim:self.latent_dim + 6] = float(self.pose_limit)
        return limits.to(self.motion_mean.device)

    # ------------------------------------------------------------ guidance
    @abc.abstractmethod
    def denoise(self, x_t: Tensor, t: Tensor, audio: Tensor, prev: Tensor, prev_len: Tensor,
                controls: dict[str, Tensor], keep_audio: Tensor, keep_controls: Tensor) -> Tensor:
        """``[B, T, C]`` normalised clean motion predicted by one network call (each model defines it)."""

    def guided(self, x_t: Tensor, t: Tensor, audio: Tensor, prev: Tensor, prev_len: Tensor,
               controls: dict[str, Tensor], cfg_audio: float = 1.0, cfg_control: float = 1.0) -> Tensor:
        """Classifier-free guided clean motion: ``x0_u + s_a (x0_a - x0_u) + s_c (x0_ac - x0_a)``; with
        ``s_c = 1`` the controls stay on in both passes, ``x0_c + s_a (x0_ac - x0_c)`` (two passes, not three)."""
        B = audio.shape[0]
        has_controls = bool(controls)
        if cfg_audio == 1.0 and (cfg_control == 1.0 or not has_controls):
            keep = torch.ones(B, dtype=torch.bool, device=audio.device)
            return self.denoise(x_t, t, audio, prev, prev_len, controls, keep, keep)
        if cfg_control == 1.0 and has_controls:
            passes = [(False, True), (True, True)]
        else:
            passes = [(False, False), (True, False)] + ([(True, True)] if has_controls else [])
        n = len(passes)
        flags = torch.tensor(passes, device=audio.device).repeat_interleave(B, dim=0)
        rep = lambda v: None if v is None else v.repeat(n, *([1] * (v.dim() - 1)))  # noqa: E731
        out = self.denoise(rep(x_t), rep(t), rep(audio), rep(prev), rep(prev_len),
                           {k: rep(v) for k, v in controls.items()}, flags[:, 0], flags[:, 1]).chunk(n)
        x0 = out[0] + cfg_audio * (out[1] - out[0])
        if n == 3:
            x0 = x0 + cfg_control * (out[2] - out[1])
        return x0

    @abc.abstractmethod
    def sample_window(self, audio: Tensor, prev: Tensor, prev_len: Tensor, controls: dict[str, Tensor],
                      generator: torch.Generator | None = None, cfg_audio: float = 1.0, cfg_control: float = 1.0,
                      **kwargs) -> Tensor:
        """``[B, T, C]`` normalised motion for normalised audio ``[B, T, F]`` after prefix ``prev [B, P, C]``
        (each model defines it: DDIM for the diffusion model, one pass for the regression baseline)."""

    # ------------------------------------------------------------ windowed generation
    @torch.no_grad()
    def stream(self, feature_chunks: Iterable[Tensor], window: int | None = None, prev: int | None = None,
               seed: int = 0, gaze: Tensor | None = None, distance: float | None = None,
               emotion: Tensor | None = None, cfg_audio: float = 1.0, cfg_control: float = 1.0,
               crossfade: int = 0, anchor_pose: Tensor | None = None, **sample_kwargs) -> Iterator[MotionLatent]:
        """Yield ``MotionLatent [n]`` windows as audio feature chunks ``[t, F]`` (video frame rate) arrive.

        A window is generated once ``window`` frames of features are buffered, conditioned on the last
        ``prev`` generated frames; the tail shorter than a window is generated when the chunks end.
        ``gaze`` (yaw, pitch rad), ``distance`` (m) and ``emotion [E]`` are optional controls;
        ``cfg_audio``/``cfg_control`` the guidance scales; ``seed`` makes the output reproducible.
        ``crossfade > 0`` smooths each border without added latency: the first frame's deviation from
        the constant-velocity continuation of the previous window fades out over that many frames.
        ``anchor_pose``: the head rotation (axis-angle ``[3]``, rad) windows centre on, for models with the
        pose control (None = the training mean). Each window is soft-limited (see the module docstring)
        before it is emitted and becomes the next prefix.
        """
        window = window or self.window
        prev = self.prev_frames if prev is None else prev
        if window < 1 or not 0 <= prev <= self.prev_frames:
            raise ValueError(f"stream: window={window} must be >= 1 and prev={prev} in [0, {self.prev_frames}] "
                             "(the prefix length the model was built with)")
        if not bool(self.stats_ready):
            raise RuntimeError("stream: the model has no normalisation statistics; train it (or fit_stats) first")
        dev = self.motion_mean.device
        generator = torch.Generator().manual_seed(seed)
        controls = self.normalize_controls(gaze, distance, emotion, anchor_pose)
        limits = self.channel_limits()
        history = torch.zeros(self.prev_frames, self.motion_dim, device=dev)
        have, pending = 0, []

        def emit(audio: Tensor) -> MotionLatent:
            nonlocal history, have
            prev_len = torch.tensor([min(prev, have)], device=dev)
            x = self.sample_window(self.normalize_audio(audio.to(dev).float())[None], history[None], prev_len,
                                   controls, generator, cfg_audio, cfg_control, **sample_kwargs)[0]
            if crossfade > 0 and prev_len.item() >= 2:
                velocity = history[-1] - history[-2]
                new_velocity = x[1] - x[0] if len(x) >= 2 else velocity  # a one-frame tail has no velocity
                residual = (x[0] - history[-1]) - 0.5 * (new_velocity + velocity)
                fade = 1 - torch.arange(min(crossfade, len(x)), device=dev) / crossfade
                x = torch.cat([x[:len(fade)] - fade[:, None] * residual, x[len(fade):]])
            if limits is not None:
                x = soft_limit(x, limits)
            history = torch.cat([history, x])[-self.prev_frames:]
            have += len(x)
            return self.unpack(x)

        for chunk in feature_chunks:
            pending.append(torch.as_tensor(chunk).reshape(-1, self.audio_dim))
            buffered = torch.cat(pending)
            while len(buffered) >= window:
                yield emit(buffered[:window])
                buffered = buffered[window:]
            pending = [buffered]
        rest = torch.cat(pending) if pending else torch.zeros(0, self.audio_dim)
        if len(rest):
            yield emit(rest)

    @torch.no_grad()
    def generate(self, audio_features: Tensor, fps: float | None = None, window: int | None = None,
                 prev: int | None = None, seed: int = 0, **kwargs) -> MotionLatent:
        """``MotionLatent [T]`` for audio features ``[T, F]`` at ``fps`` (must be the training frame rate)."""
        if fps is not None and abs(fps - self.fps) > 1e-3:
            raise ValueError(f"generate: features at {fps} fps, the model was trained at {self.fps} fps; "
                             "extract the features at the model's frame rate")
        return MotionLatent.cat(list(self.stream([audio_features], window, prev, seed, **kwargs)))


class MotionDiffusion(WindowedMotionModel):
    """The diffusion model: ``MotionTransformer`` denoiser, cosine schedule, DDIM sampler, CFG dropout.

    The denoiser predicts the clean motion x0 (as a residual to the last prefix frame, see
    :class:`MotionTransformer`). Args (beyond :class:`WindowedMotionModel`'s): ``num_timesteps``
    training steps; ``p_drop_audio`` / ``p_drop_control`` / ``p_drop_prev`` condition dropout
    probabilities in training; ``w_velocity`` weight of the frame-to-frame velocity loss on x0;
    ``sample_steps`` default DDIM steps; transformer sizes as in :class:`MotionTransformer`.
    """

    def __init__(self, latent_dim: int, audio_dim: int, with_gaze: bool = True, emotion_dim: int = 0,
                 window: int = 50, prev_frames: int = 10, fps: float = 25.0, d_model: int = 128,
                 num_layers: int = 4, num_heads: int = 4, dropout: float = 0.1, num_timesteps: int = 100,
                 p_drop_audio: float = 0.1, p_drop_control: float = 0.3,
                 p_drop_prev: float = 0.1, w_velocity: float = 1.0, sample_steps: int = 20,
                 pose_control: bool = False, pose_limit: float | None = None,
                 motion_limit: float | None = None) -> None:
        super().__init__(latent_dim, audio_dim, with_gaze, emotion_dim, window, prev_frames, fps, pose_control,
                         pose_limit, motion_limit)
        self.num_timesteps, self.sample_steps = num_timesteps, sample_steps
        self.p_drop = {"audio": p_drop_audio, "control": p_drop_control, "prev": p_drop_prev}
        self.w_velocity = w_velocity
        self.net = MotionTransformer(self.motion_dim, audio_dim, d_model, num_layers, num_heads, dropout,
                                     emotion_dim, diffusion=True, pose_control=pose_control)
        self.register_buffer("alphas_cumprod", cosine_alphas_cumprod(num_timesteps), persistent=False)

    def _rates(self, t: Tensor) -> tuple[Tensor, Tensor]:
        a = self.alphas_cumprod[t][:, None, None]
        return a.sqrt(), (1 - a).sqrt()

    def denoise(self, x_t, t, audio, prev, prev_len, controls, keep_audio, keep_controls) -> Tensor:
        return self.net(x_t, t, audio, prev, prev_len, controls, keep_audio, keep_controls)

    def training_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Losses on a batch of raw windows (keys of the speech-motion batch contract); ``loss`` is the total."""
        x0, audio, prev, prev_len, controls = prepare_batch(self, batch)
        keep_audio, keep_controls, prev_len = condition_dropout(self, prev_len)
        t = torch.randint(0, self.num_timesteps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        s, n = self._rates(t)
        x_t = s * x0 + n * noise
        x0_hat = self.net(x_t, t, audio, prev, prev_len, controls, keep_audio, keep_controls)
        losses = {"diffusion": F.mse_loss(x0_hat, x0)}
        losses["velocity"] = velocity_loss(x0_hat, x0, prev, prev_len)
        losses["loss"] = losses["diffusion"] + self.w_velocity * losses["velocity"]
        return losses

    def sample_window(self, audio, prev, prev_len, controls, generator=None, cfg_audio=1.0, cfg_control=1.0,
                      steps: int | None = None) -> Tensor:
        """DDIM (eta = 0) from seeded noise; ``steps`` defaults to ``sample_steps``."""
        steps = min(steps or self.sample_steps, self.num_timesteps)
        B, T, dev = audio.shape[0], audio.shape[1], audio.device
        x = torch.randn(B, T, self.motion_dim, generator=generator).to(dev)
        times = torch.linspace(self.num_timesteps - 1, 0, steps).round().long().tolist()
        controls = {k: v.expand(B, -1) for k, v in controls.items()}
        for i, step in enumerate(times):
            t = torch.full((B,), step, device=dev, dtype=torch.long)
            x0 = self.guided(x, t, audio, prev, prev_len, controls, cfg_audio, cfg_control).clamp(-8, 8)
            if i + 1 == len(times):
                return x0
            a, a_next = self.alphas_cumprod[step], self.alphas_cumprod[times[i + 1]]
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
        return x


def condition_dropout(model: WindowedMotionModel, prev_len: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Training-time dropout of the conditions (classifier-free guidance): ``(keep_audio [B], keep_controls [B],
    prev_len [B])`` with the audio, the controls and the prefix each dropped with the model's probability."""
    B, dev = prev_len.shape[0], prev_len.device
    keep_audio = torch.rand(B, device=dev) >= model.p_drop["audio"]
    keep_controls = torch.rand(B, device=dev) >= model.p_drop["control"]
    return keep_audio, keep_controls, torch.where(torch.rand(B, device=dev) < model.p_drop["prev"], 0, prev_len)


def prepare_batch(model: WindowedMotionModel, batch: dict[str, Tensor]):
    """Normalised ``(x0 [B,T,C], audio [B,T,F], prev [B,P,C], prev_len [B], controls)`` from a raw batch."""
    x0 = model.pack(batch["dyn"], batch["pose"], batch.get("gaze"))
    audio = model.normalize_audio(batch["audio"])
    prev = model.pack(batch["prev_dyn"], batch["prev_pose"], batch.get("prev_gaze"))
    if prev.shape[1] != model.prev_frames:
        raise ValueError(f"batch: {prev.shape[1]} previous frames, the model was built with prev_frames="
                         f"{model.prev_frames}; set both to the same value")
    has_prev = batch.get("has_prev", torch.ones(len(x0), dtype=torch.bool, device=x0.device))
    prev_len = torch.where(has_prev.bool(), model.prev_frames, 0).long()
    controls = model.controls_from_motion(x0)
    if "emotion" in batch and model.emotion_dim:
        controls["emotion"] = batch["emotion"].float()
    return x0, audio, prev, prev_len, controls


def velocity_loss(x0_hat: Tensor, x0: Tensor, prev: Tensor, prev_len: Tensor) -> Tensor:
    """MSE of frame-to-frame differences, the step from the last prefix frame included where there is one."""
    loss = F.mse_loss(x0_hat.diff(dim=1), x0.diff(dim=1)) if x0.shape[1] > 1 else x0_hat.sum() * 0
    # The border step (last prefix frame -> first frame) differs from the target's by the first frame's error.
    has = (prev_len > 0).float()[:, None]
    border = (x0_hat[:, 0] - x0[:, 0]).pow(2).mean(-1, keepdim=True)
    return loss + (border * has).sum() / has.sum().clamp(min=1)
