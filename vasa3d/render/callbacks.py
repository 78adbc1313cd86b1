"""``TalkingVideoWriter``: a fit ends with the result a user came for, ``talk.mp4`` in its run folder."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from vasa3d.systems.callbacks import run_dir


class TalkingVideoWriter(L.Callback):
    """At the end of a stage-2 fit, make the avatar speak: ``<run dir>/talk.mp4`` (with the audio).

    The motion comes from the speech-to-motion model that ships with the package (or ``motion``); the
    speech is ``audio`` or, when None, ``text`` spoken by espeak-ng. Seen along ``camera``.

    Args:
        audio: a speech file (wav, flac, ogg, mp3); None speaks ``text`` instead.
        text: what espeak-ng says when no ``audio`` is given.
        voice: espeak-ng voice of ``text``.
        motion: an ``Audio2Motion`` checkpoint; None uses the shipped model.
        camera: static | orbit | slow_orbit | a keyframe .json.
        size: output side in px; None uses the training size.
        filename: the video's name inside the run folder.
        seed: seed of the motion sampler.
    """

    def __init__(self, audio: str | None = None, text: str | None = None, voice: str = "en-us",
                 motion: str | None = None, camera: str = "slow_orbit", size: int | None = None,
                 filename: str = "talk.mp4", seed: int = 0) -> None:
        self.audio, self.text, self.voice, self.motion = audio, text, voice, motion
        self.camera, self.size, self.filename, self.seed = camera, size, filename, seed

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Check the inputs before the fit, not after it."""
        if stage != "fit":
            return
        from vasa3d.audio.pretrained import shipped_motion_model
        from vasa3d.errors import MissingInputError

        if self.audio is not None:
            from vasa3d.audio.io import load_audio

            load_audio(self.audio)  # raises a one-line AudioError for a missing or unreadable file
        if self.motion is not None and not Path(self.motion).is_file():
            raise MissingInputError(f"TalkingVideoWriter: motion={self.motion}: no such checkpoint")
        if self.motion is None:
            shipped_motion_model()

    @torch.no_grad()
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_rank != 0 or getattr(pl_module, "reference_camera", None) is None:
            return
        from vasa3d.audio.pretrained import describe_motion_model, shipped_motion_model
        from vasa3d.render.speak import DEFAULT_TEXT, default_speech, talking_video
        from vasa3d.render.talking import TalkingHead
        from vasa3d.systems import Audio2Motion

        motion_path = Path(self.motion) if self.motion else shipped_motion_model()
        motion = Audio2Motion.load_from_checkpoint(motion_path, map_location="cpu").eval()
        was_training = pl_module.training
        pl_module.eval()
        device = pl_module.device
        pl_module.cpu()
        try:
            head = TalkingHead(pl_module, motion, motion.feature_extractor())
            rate = head.features.sample_rate
            if self.audio is not None:
                from vasa3d.audio.io import load_audio

                waveform, _ = load_audio(self.audio, sample_rate=rate)
            else:
                import librosa

                waveform, native = default_speech(self.text or DEFAULT_TEXT, self.voice)
                waveform = librosa.resample(waveform, orig_sr=native, target_sr=rate).astype("float32")
            print(f"talk.mp4: the {describe_motion_model(motion_path)}")
            path, stats = talking_video(head, waveform, rate, run_dir(trainer) / self.filename, self.camera,
                                        self.size, self.seed)
            print(f"wrote {path} ({stats.frames} frames, {len(waveform) / rate:.1f} s of speech)")
        finally:
            pl_module.to(device)
            pl_module.train(was_training)
