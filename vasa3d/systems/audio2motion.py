"""``Audio2Motion``: train the speech-to-motion diffusion transformer (or its regression baseline).

Batches follow the speech-motion contract (``datamodules.speech_motion``): ``audio [B, T, F]``
features at the video frame rate, ``dyn [B, T, D]``, ``pose [B, T, 6]``, ``gaze [B, T, 2]``, the
``P`` frames before the window as ``prev_dyn``/``prev_pose``/``prev_gaze`` with ``has_prev [B]``.
Normalisation statistics and the energy-to-jaw baseline are fitted on training batches before the
first step and stored in the checkpoint, with the feature size in the hyperparameters, so
``Audio2Motion.load_from_checkpoint(path).generate(features)`` works without the data.
Validation (and test) generate the held-out utterances of the datamodule with several seeds and log
lip-sync correlation, mouth-opening error and diversity for the model and the energy baseline.
"""

from __future__ import annotations

import math
from itertools import islice
from typing import Literal

import lightning as L
import torch
from torch import Tensor

from vasa3d.audio.baselines import EnergyJaw, RegressionMotion
from vasa3d.audio.diffusion import MotionDiffusion, WindowedMotionModel
from vasa3d.audio.evaluation import evaluate_generator
from vasa3d.motion.latent import MotionLatent


class Audio2Motion(L.LightningModule):
    """Speech features -> motion latents, trained on audio-motion windows.

    Args:
        model_type: "diffusion" (the VASA-1 style model) or "regression" (the baseline, same backbone).
        latent_dim: D of ``MotionLatent.dyn``; must match the data.
        audio_dim: audio features per frame; None takes the datamodule's ``feature_dim``.
        with_gaze: generate the gaze channels (and accept a gaze control).
        emotion_dim: size of the emotion-offset control (0 = none; batches may carry ``emotion [B, E]``).
        window: frames per generated window (the training window length).
        prev_frames: previous frames the model is conditioned on; must match the data's P.
        fps: video frame rate of the features and motion.
        d_model: transformer width.
        num_layers: transformer layers.
        num_heads: attention heads.
        dropout: transformer dropout.
        num_timesteps: diffusion training steps (cosine schedule).
        regression_loss: "l1" or "l2" for the regression model.
        p_drop_audio: probability of dropping the audio in training (classifier-free guidance).
        p_drop_control: probability of dropping the gaze/distance/emotion controls in training.
        p_drop_prev: probability of dropping the previous-window prefix in training.
        w_velocity: weight of the frame-to-frame velocity loss on the predicted motion.
        sample_steps: DDIM steps at inference.
        cfg_audio: default audio guidance scale at inference (1 = none; above 1 the head drifts on long
            audio, see ``vasa3d.audio.diffusion``).
        cfg_control: default control guidance scale at inference (1 = none).
        crossfade: default frames over which a window border's residual jump fades out (0 = off).
        lr: AdamW peak learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up steps before the cosine decay.
        energy_channel: index of the RMS energy feature (after the n_mels log-mel bands of
            ``vasa3d.audio.features``), for the energy-to-jaw baseline.
        stats_batches: training batches used for the normalisation statistics and the energy baseline.
        eval_utterances: held-out utterances generated at each validation (0 = no generation metrics).
        eval_seeds: seeds per utterance, for the diversity metric.
        pose_control: condition on the window's mean head rotation (set to the anchor pose at inference,
            so long audio keeps the head centred).
        pose_limit: soft limit of the generated pose, in training std (None = none).
        motion_limit: soft limit of the other generated channels, in training std (None = none).
        energy_jaw: weight of the energy-to-jaw baseline in the generated ``jaw_open``, before the silence
            gate: ``(1 - w) * model + w * baseline`` (0 = the model alone). A hedge against voices unlike
            the training speech: loudness relative to the speech level reads the same on any recording,
            where the model's jaw fades (``benchmarks/real_speech.py``). Inference only: training ignores
            it. ``benchmarks/energy_jaw.py`` measures it on synthetic held-out speech.
        feature_config: the audio feature extractor's settings (``AudioFeatureExtractor.config()``);
            None takes the datamodule's, and the checkpoint keeps them so inference extracts the same features.
    """

    def __init__(
        self,
        model_type: Literal["diffusion", "regression"] = "diffusion",
        latent_dim: int = 16,
        audio_dim: int | None = None,
        with_gaze: bool = True,
        emotion_dim: int = 0,
        window: int = 50,
        prev_frames: int = 10,
        fps: float = 25.0,
        d_model: int = 128,
        num_layers: int = 4,
        num_heads: int = 4,
        dropout: float = 0.1,
        num_timesteps: int = 100,
        regression_loss: Literal["l1", "l2"] = "l1",
        p_drop_audio: float = 0.1,
        p_drop_control: float = 0.3,
        p_drop_prev: float = 0.1,
        w_velocity: float = 1.0,
        sample_steps: int = 20,
        cfg_audio: float = 1.0,
        cfg_control: float = 1.0,
        crossfade: int = 2,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 100,
        energy_channel: int = 40,
        stats_batches: int = 16,
        eval_utterances: int = 4,
        eval_seeds: int = 3,
        feature_config: dict | None = None,
        pose_control: bool = False,
        pose_limit: float | None = 2.5,
        motion_limit: float | None = 4.0,
        energy_jaw: float = 0.5,
    ) -> None:
        super().__init__()
        if model_type not in ("diffusion", "regression"):
            raise ValueError(f"model_type={model_type!r}: use 'diffusion' or 'regression'")
        if not 0.0 <= energy_jaw <= 1.0:
            raise ValueError(f"Audio2Motion: energy_jaw={energy_jaw} must be a weight in [0, 1]")
        self.save_hyperparameters()
        self.model: WindowedMotionModel | None = None
        self.energy: EnergyJaw | None = None
        if audio_dim is not None:
            self._build(audio_dim)

    # ------------------------------------------------------------ set-up
    def _build(self, audio_dim: int) -> None:
        hp = self.hparams
        hp.audio_dim = int(audio_dim)  # stored in the checkpoint, so loading rebuilds the same model
        common = dict(latent_dim=hp.latent_dim, audio_dim=hp.audio_dim, with_gaze=hp.with_gaze,
                      emotion_dim=hp.emotion_dim, window=hp.window, prev_frames=hp.prev_frames, fps=hp.fps,
                      d_model=hp.d_model, num_layers=hp.num_layers, num_heads=hp.num_heads, dropout=hp.dropout,
                      p_drop_audio=hp.p_drop_audio, p_drop_control=hp.p_drop_control, p_drop_prev=hp.p_drop_prev,
                      w_velocity=hp.w_velocity, pose_control=hp.pose_control, pose_limit=hp.pose_limit,
                      motion_limit=hp.motion_limit)
        if hp.model_type == "diffusion":
            self.model = MotionDiffusion(**common, num_timesteps=hp.num_timesteps, sample_steps=hp.sample_steps)
        else:
            self.model = RegressionMotion(**common, loss=hp.regression_loss)
        self.energy = EnergyJaw(hp.latent_dim, hp.audio_dim, hp.energy_channel, with_gaze=hp.with_gaze)

    @property
    def datamodule(self):
        return getattr(self._trainer, "datamodule", None) if self._trainer is not None else None

    def setup(self, stage: str) -> None:
        dm = self.datamodule
        if self.model is None:
            if dm is None or getattr(dm, "feature_dim", None) is None:
                raise ValueError("Audio2Motion: audio_dim is unset and there is no datamodule with feature_dim; "
                                 "set model.audio_dim to the number of audio features per frame")
            self._build(dm.feature_dim)
        if self.hparams.feature_config is None and getattr(dm, "feature", None) is not None:
            self.hparams.feature_config = dict(dm.feature.config())
        if stage == "fit" and not bool(self.model.stats_ready) and dm is not None:
            self.fit_statistics(islice(iter(dm.train_dataloader()), self.hparams.stats_batches))

    @torch.no_grad()
    def fit_statistics(self, batches) -> None:
        """Normalisation statistics and the energy baseline from raw training batches."""
        keys = ("audio", "dyn", "pose", "gaze")
        parts: dict[str, list[Tensor]] = {k: [] for k in keys}
        for batch in batches:
            for k in keys:
                if batch.get(k) is not None:
                    parts[k].append(batch[k].detach().cpu().reshape(-1, batch[k].shape[-1]).float())
        if not parts["dyn"]:
            raise ValueError("Audio2Motion: no training batches to compute the normalisation statistics from")
        data = {k: torch.cat(v) if v else None for k, v in parts.items()}
        raw = [data["dyn"], data["pose"]] + ([data["gaze"] if data["gaze"] is not None
                                              else torch.zeros(len(data["dyn"]), 2)] if self.hparams.with_gaze else [])
        dev = self.model.motion_mean.device
        self.model.fit_stats(torch.cat(raw, dim=-1).to(dev), data["audio"].to(dev))
        self.energy.fit(data["audio"], data["dyn"], data["pose"], data["gaze"])

    def on_train_batch_start(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        if not bool(self.model.stats_ready):  # no datamodule: fall back to the first batch
            self.fit_statistics([batch])

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.hparams.lr,
                                      weight_decay=self.hparams.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = min(self.hparams.warmup_steps, total // 2)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------ inference
    def feature_extractor(self):
        """The ``AudioFeatureExtractor`` this model was trained with (from ``feature_config``)."""
        from vasa3d.audio.features import AudioFeatureExtractor

        if self.hparams.feature_config is None:
            raise ValueError("Audio2Motion: this checkpoint records no audio feature settings (feature_config); "
                             "retrain it, or set model.feature_config to the datamodule's feature settings")
        return AudioFeatureExtractor(**self.hparams.feature_config)

    def generate(self, audio_features: Tensor, fps: float | None = None, window: int | None = None,
                 prev: int | None = None, seed: int = 0, cfg_audio: float | None = None,
                 cfg_control: float | None = None, voice_activity=None, energy_jaw: float | None = None,
                 **kwargs) -> MotionLatent:
        """``MotionLatent [T]`` for audio features ``[T, F]``; see ``WindowedMotionModel.stream`` for options.

        ``voice_activity [T]`` in [0, 1] (``vasa3d.audio.vad.voice_activity`` of the same audio) closes the
        mouth where nobody speaks (``vasa3d.audio.visemes.close_mouth_in_silence``), after the energy
        baseline's jaw is blended in (:meth:`blend_energy_jaw`; ``energy_jaw`` overrides the weight).
        """
        latent = MotionLatent.cat(list(self.stream([audio_features], window, prev, seed, cfg_audio, cfg_control,
                                                   fps=fps, **kwargs)))
        latent = self.blend_energy_jaw(latent, audio_features, energy_jaw)
        if voice_activity is not None:
            from vasa3d.audio.visemes import close_mouth_in_silence

            latent = close_mouth_in_silence(latent, voice_activity, self.hparams.fps)
        return latent

    def blend_energy_jaw(self, latent: MotionLatent, audio_features: Tensor, weight: float | None = None) -> MotionLatent:
        """``latent [T]`` with its ``jaw_open`` moved toward the energy baseline's for the same audio features
        ``[T, F]``: ``(1 - w) * jaw + w * baseline``, ``w`` = ``weight`` or ``hparams.energy_jaw``. Frame by
        frame, so the online loop applies it window by window with the same result."""
        weight = float(self.hparams.energy_jaw if weight is None else weight)
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"blend_energy_jaw: weight {weight} must be in [0, 1]")
        if weight == 0.0:
            return latent
        if len(audio_features) != len(latent):
            raise ValueError(f"blend_energy_jaw: {len(audio_features)} feature frames for a latent of {len(latent)}")
        dyn = latent.dyn.clone()
        channel = self.energy.jaw_channel
        baseline = self.energy.jaw(audio_features.to(self.energy.coef.device)).to(dyn)
        dyn[:, channel] = (1.0 - weight) * dyn[:, channel] + weight * baseline
        return MotionLatent(dyn, latent.pose, latent.gaze, latent.blink)

    def stream(self, feature_chunks, window: int | None = None, prev: int | None = None, seed: int = 0,
               cfg_audio: float | None = None, cfg_control: float | None = None, fps: float | None = None,
               **kwargs):
        """Yield ``MotionLatent`` windows as feature chunks ``[t, F]`` arrive (for the online renderer)."""
        if fps is not None and abs(fps - self.hparams.fps) > 1e-3:
            raise ValueError(f"generate: features at {fps} fps, the model was trained at {self.hparams.fps} fps; "
                             "extract the features at the model's frame rate")
        was_training = self.model.training
        self.model.eval()
        try:
            yield from self.model.stream(
                feature_chunks, window, prev, seed,
                cfg_audio=self.hparams.cfg_audio if cfg_audio is None else cfg_audio,
                cfg_control=self.hparams.cfg_control if cfg_control is None else cfg_control,
                **{"crossfade": self.hparams.crossfade, **kwargs})
        finally:
            self.model.train(was_training)

    # ------------------------------------------------------------ loops
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        losses = self.model.training_loss(batch)
        if not torch.isfinite(losses["loss"]):
            raise RuntimeError(f"step {self.global_step}: the audio-to-motion loss is not finite; lower model.lr")
        B = batch["dyn"].shape[0]
        for name, value in losses.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=B)
        return losses["loss"]

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(batch_idx)  # the same noise levels and dropout draws at every validation
            losses = self.model.training_loss(batch)
        self.log("val/loss", losses["loss"], prog_bar=True, batch_size=batch["dyn"].shape[0])

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(batch_idx)
            losses = self.model.training_loss(batch)
        self.log("test/loss", losses["loss"], batch_size=batch["dyn"].shape[0])

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._log_heldout("val")

    def on_test_epoch_end(self) -> None:
        self._log_heldout("test")

    def heldout_metrics(self, utterances: list[dict], seeds: int | None = None) -> dict[str, dict[str, float]]:
        """``{"model": metrics, "energy_baseline": metrics}`` on held-out utterances (see ``audio.evaluation``)."""
        seeds = tuple(range(seeds or self.hparams.eval_seeds))
        utterances = [{"audio": u["audio"].to(self.device).float(), "latent": u["latent"]} for u in utterances]
        return {
            "model": evaluate_generator(lambda a, s: self.generate(a, seed=s), utterances, seeds),
            "energy_baseline": evaluate_generator(lambda a, s: self.energy.generate(a, seed=s), utterances, seeds),
        }

    def _log_heldout(self, split: str) -> None:
        dm = self.datamodule
        if self.hparams.eval_utterances <= 0 or dm is None or not hasattr(dm, "heldout_utterances"):
            return
        utterances = list(dm.heldout_utterances(split=split))[:self.hparams.eval_utterances]
        if not utterances:
            return
        for row, metrics in self.heldout_metrics(utterances).items():
            prefix = f"{split}/" if row == "model" else f"{split}/{row}/"
            for name, value in metrics.items():
                self.log(prefix + name, value, prog_bar=row == "model" and name == "lipsync_corr")
