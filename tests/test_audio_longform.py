"""Long audio: the head stays in range, the shipped model loads and holds its pose over a minute of speech."""

import numpy as np
import pytest
import torch

from vasa3d.audio.diffusion import WindowedMotionModel, soft_limit
from vasa3d.audio.evaluation import POSE_BOUNDS, pose_statistics
from vasa3d.audio.pretrained import DEFAULT_MOTION_MODEL, describe_motion_model, shipped_motion_model


def test_soft_limit_is_identity_inside_the_knee_and_never_passes_the_limit():
    limit = torch.tensor([1.0, 2.5, 4.0])
    x = torch.linspace(-20, 20, 4001)[:, None].expand(-1, 3)
    y = soft_limit(x, limit)
    assert (y.abs() <= limit).all()
    inside = x.abs() <= 0.6 * limit
    torch.testing.assert_close(y[inside], x[inside])
    assert (y.diff(dim=0) >= 0).all()  # monotone: the order of poses is kept


class _Drifting(WindowedMotionModel):
    """A model that adds a constant step to its prefix every frame: a pure random-walk drift."""

    def denoise(self, *args, **kwargs):
        raise NotImplementedError

    def sample_window(self, audio, prev, prev_len, controls, generator=None, cfg_audio=1.0, cfg_control=1.0,
                      **kwargs):
        start = torch.where((prev_len > 0)[:, None], prev[:, -1], torch.zeros_like(prev[:, -1]))
        steps = torch.arange(1, audio.shape[1] + 1, dtype=torch.float32)[None, :, None]
        return start[:, None] + 0.05 * steps


@pytest.mark.parametrize("limited", [False, True])
def test_a_drifting_model_is_held_by_the_limits(limited):
    model = _Drifting(latent_dim=12, audio_dim=4, window=25, prev_frames=5,
                      pose_limit=2.5 if limited else None, motion_limit=4.0 if limited else None)
    model.fit_stats(torch.randn(500, model.motion_dim), torch.randn(500, 4))
    latent = model.generate(torch.zeros(1500, 4))  # 60 s at 25 fps
    x = model.pack(latent.dyn, latent.pose, latent.gaze)
    if limited:
        assert x[:, 12:18].abs().max() < 2.5 and x.abs().max() < 4.0
    else:
        assert x.abs().max() > 50  # without the limits the walk leaves any range


def _minute_of_speech() -> tuple[np.ndarray, int]:
    """About 60 s of espeak speech in four languages with pauses, 16 kHz."""
    from vasa3d.audio.corpora import sentences
    from vasa3d.audio.io import resample
    from vasa3d.audio.speech import synthesize

    parts, total = [], 0
    languages = [("en", "en-us"), ("de", "de+m3"), ("cmn", "cmn+f2"), ("es", "es")]
    i = 0
    while total < 60 * 16000:
        language, voice = languages[i % len(languages)]
        clip = synthesize(sentences(language)[i % 20], voice, rate_wpm=160 + 10 * (i % 8))
        wave = resample(clip.waveform, clip.sample_rate, 16000)
        pause = np.zeros(int(16000 * (0.3 + 0.2 * (i % 4))), np.float32)
        parts += [wave, pause]
        total += len(wave) + len(pause)
        i += 1
    return np.concatenate(parts)[:60 * 16000], 16000


@pytest.mark.skipif(not DEFAULT_MOTION_MODEL.is_file(), reason="the shipped motion model is not built "
                    "(python scripts/build_motion_model.py)")
def test_the_shipped_model_keeps_the_head_in_range_for_a_minute():
    from vasa3d.systems import Audio2Motion

    path = shipped_motion_model()
    assert path.stat().st_size <= 20e6
    assert "shipped motion model" in describe_motion_model(path) and "18 languages" in describe_motion_model(path)
    system = Audio2Motion.load_from_checkpoint(path, map_location="cpu").eval()
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["feature_config"]["normalization"] == "running"
    assert checkpoint["vasa3d_build"]["phonemes_unmapped"] == 0
    waveform, rate = _minute_of_speech()
    features = system.feature_extractor()(waveform)
    assert len(features) == 1500
    latent = system.generate(features, seed=0)
    stats = pose_statistics(latent, 25.0, system.model.motion_mean[16 + 3:16 + 6])
    assert len(stats) == 1 and stats[0]["in_bounds"] == 1.0, stats
    assert stats[0]["yaw_absmax"] <= POSE_BOUNDS["yaw_deg"] and stats[0]["pitch_absmax"] <= POSE_BOUNDS["pitch_deg"]
    # the expression stays in its training range too, and the mouth still moves in the last 10 s
    x = system.model.pack(latent.dyn, latent.pose, latent.gaze)
    assert x.abs().max() < system.hparams.motion_limit
    assert latent.dyn[-250:, 0].std() > 0.3 * latent.dyn[:250, 0].std()


@pytest.mark.skipif(not DEFAULT_MOTION_MODEL.is_file(), reason="the shipped motion model is not built "
                    "(python scripts/build_motion_model.py)")
def test_render_without_motion_uses_the_shipped_model(tmp_path, capsys):
    import av
    import lightning as L

    from vasa3d.audio.speech import synthesize
    from vasa3d.cli import main
    from vasa3d.render.video import write_wav
    from vasa3d.systems import SubjectFitting

    size = 48
    avatar = SubjectFitting(num_gaussians=2000, residual=False, identity_steps=0, backend="cpp")
    camera = {"viewmat": torch.tensor([[1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 0.6], [0, 0, 0, 1]]),
              "K": torch.tensor([[110.0, 0, size / 2], [0, 110.0, size / 2], [0, 0, 1]]), "size": torch.tensor(size)}
    torch.save({"state_dict": avatar.state_dict(), "hyper_parameters": dict(avatar.hparams),
                "pytorch-lightning_version": L.__version__, "reference_camera": camera}, tmp_path / "avatar.ckpt")
    clip = synthesize("Hallo, wie geht es dir?", voice="de")
    write_wav(tmp_path / "speech.wav", clip.waveform, clip.sample_rate)
    out = tmp_path / "talk.mp4"
    assert main(["render", "--avatar", str(tmp_path / "avatar.ckpt"), "--audio", str(tmp_path / "speech.wav"),
                 "--camera", "static", "--out", str(out), "--size", str(size)]) == 0
    printed = capsys.readouterr().out
    assert f"using the shipped motion model {DEFAULT_MOTION_MODEL}" in printed
    with av.open(str(out)) as container:
        assert sum(1 for _ in container.decode(video=0)) == int(round(clip.duration_s * 25))
