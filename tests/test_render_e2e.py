"""End to end: `vasa3d render` turns two seconds of speech into an mp4 with the right length and its audio."""

import av
import lightning as L
import numpy as np
import pytest
import torch

from vasa3d.audio.features import AudioFeatureExtractor
from vasa3d.audio.speech import synthesize
from vasa3d.cli import main
from vasa3d.render.talking import TalkingHead
from vasa3d.render.video import write_wav
from vasa3d.systems import Audio2Motion, SubjectFitting

SIZE = 64


def _save(module: L.LightningModule, path, **extra) -> None:
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": L.__version__, **extra}, path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("render")
    avatar = SubjectFitting(num_gaussians=5000, residual=False, identity_steps=0, backend="cpp")
    viewmat = torch.tensor([[1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 0.6], [0, 0, 0, 1]])
    K = torch.tensor([[150.0, 0, SIZE / 2], [0, 150.0, SIZE / 2], [0, 0, 1]])
    camera = {"viewmat": viewmat, "K": K, "size": torch.tensor(SIZE)}
    _save(avatar, folder / "avatar.ckpt", reference_camera=camera)

    features = AudioFeatureExtractor()
    motion = Audio2Motion(audio_dim=features.dim, d_model=32, num_layers=1, num_heads=2, window=20, prev_frames=5,
                          num_timesteps=10, sample_steps=3, feature_config=features.config())
    gen = torch.Generator().manual_seed(0)
    frames = 200
    batch = {"audio": torch.randn(1, frames, features.dim, generator=gen), "dyn": torch.rand(1, frames, 16, generator=gen),
             "pose": 0.05 * torch.randn(1, frames, 6, generator=gen), "gaze": torch.zeros(1, frames, 2)}
    motion.fit_statistics([batch])
    _save(motion, folder / "motion.ckpt")

    clip = synthesize("Hello there, this is a short test.", voice="en-us")
    speech = folder / "speech.wav"
    write_wav(speech, clip.waveform, clip.sample_rate)
    return folder, len(clip.waveform) / clip.sample_rate


@pytest.mark.parametrize("online", [False, True])
def test_render_writes_a_frame_accurate_mp4_with_audio(checkpoints, online, capsys):
    folder, seconds = checkpoints
    out = folder / f"talk_{online}.mp4"
    args = ["render", "--avatar", str(folder / "avatar.ckpt"), "--motion", str(folder / "motion.ckpt"),
            "--audio", str(folder / "speech.wav"), "--camera", "orbit", "--out", str(out), "--size", str(SIZE)]
    assert main(args + (["--online", "--window", "7"] if online else []) + ["--profile"]) == 0
    printed = capsys.readouterr().out
    assert "FPS sustained" in printed and "first frame" in printed
    # --profile: ms per frame of each stage, every one measured
    table = dict(line.split() for line in printed.splitlines()[-8:] if len(line.split()) == 2)
    for stage in ("deformation", "projection", "binning", "compositing", "motion", "encoding"):
        assert float(table[stage]) > 0, printed
    expected = int(round(seconds * 25))
    with av.open(str(out)) as container:
        assert sum(1 for _ in container.decode(video=0)) == expected
        audio = container.streams.audio[0]
        assert abs(float(audio.duration * audio.time_base) - expected / 25) < 0.1


def test_the_avatar_moves_with_the_speech(checkpoints):
    folder, _ = checkpoints
    head = TalkingHead.from_checkpoints(folder / "avatar.ckpt", folder / "motion.ckpt")
    waveform = synthesize("Open wide and say ah.", voice="en-us")
    from vasa3d.audio.io import resample

    audio = resample(waveform.waveform, waveform.sample_rate, head.features.sample_rate)
    latents = head.motion.generate(head.features(audio.astype(np.float32)), seed=0)
    a = head.render_frame(latents[0:1], head.viewmat, SIZE)
    b = head.render_frame(latents[len(latents) // 2:len(latents) // 2 + 1], head.viewmat, SIZE)
    assert a.shape == (SIZE, SIZE, 3) and not np.array_equal(a, b)


def test_clear_errors(checkpoints, tmp_path, capsys):
    folder, _ = checkpoints
    # no speech and no latents: nothing to drive the avatar
    assert main(["render", "--avatar", str(folder / "avatar.ckpt"), "--out", str(tmp_path / "x.mp4")]) == 2
    assert main(["render", "--avatar", str(tmp_path / "missing.ckpt"), "--motion", str(folder / "motion.ckpt"),
                 "--audio", str(folder / "speech.wav"), "--out", str(tmp_path / "x.mp4")]) == 2
    assert main(["render", "--avatar", str(folder / "avatar.ckpt"), "--motion", str(folder / "motion.ckpt"),
                 "--audio", str(folder / "speech.wav"), "--energy-jaw", "1.5", "--out", str(tmp_path / "x.mp4")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("error: ") for line in lines), lines
    assert "--audio" in lines[0] and "no such checkpoint" in lines[1] and "--energy-jaw 1.5" in lines[2]
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.parametrize("window", [7, 20])
def test_online_closes_the_mouth_in_pauses_as_offline_does(checkpoints, window):
    """The online loop hears voice activity chunk by chunk and gates each window's mouth: the latents
    it renders equal the offline ones (generate with the whole file's activity); the mouth is shut in
    the pause, and without vad it is not."""
    from vasa3d.audio.io import resample
    from vasa3d.audio.vad import voice_activity
    from vasa3d.audio.visemes import MOUTH_CHANNELS
    from vasa3d.motion.latent import MotionLatent

    folder, _ = checkpoints
    head = TalkingHead.from_checkpoints(folder / "avatar.ckpt", folder / "motion.ckpt")
    rate = head.features.sample_rate
    words = [resample(c.waveform, c.sample_rate, rate) for c in (synthesize("Hello there.", voice="en-us"),
                                                                   synthesize("Goodbye now.", voice="en-us"))]
    audio = np.concatenate([words[0], np.zeros(rate), words[1]]).astype(np.float32)
    features = head.features(audio)
    activity = voice_activity(audio, rate, head.fps, len(features))
    offline = head.motion.generate(features, seed=0, window=window, voice_activity=activity)

    def online(vad: bool) -> MotionLatent:
        rendered = []
        head.render_frame = lambda latent, *args, **kwargs: rendered.append(latent) or np.zeros((SIZE, SIZE, 3))
        chunks = (audio[i:i + rate // 5] for i in range(0, len(audio), rate // 5))
        for _ in head.stream(chunks, len(features), "orbit", SIZE, seed=0, window=window, vad=vad):
            pass
        return MotionLatent.cat(rendered)

    gated, open_ = online(True), online(False)
    assert len(gated) == len(offline) == len(features)
    torch.testing.assert_close(gated.dyn, offline.dyn, atol=1e-5, rtol=0)
    model_jaw = head.motion.generate(features, seed=0, window=window, voice_activity=activity, energy_jaw=0.0)
    assert (gated.dyn[:, 0] - model_jaw.dyn[:, 0]).abs().max() > 1e-3  # the energy jaw is blended in, online too
    quiet = activity < 0.05
    pause = torch.from_numpy(np.convolve(quiet, np.ones(10), mode="full")[:len(quiet)] == 10)  # and the 9 before
    assert pause.sum() > 10
    mouth, mouth_open = gated.dyn[:, MOUTH_CHANNELS].abs(), open_.dyn[:, MOUTH_CHANNELS].abs()
    assert mouth_open[pause].mean() > 1e-2
    assert (mouth[pause] <= 0.05 * mouth_open[pause] + 1e-7).all()
    speech = torch.from_numpy(activity > 0.9)
    assert (mouth[speech] >= 0.9 * mouth_open[speech] - 1e-7).all()  # speech: the gain is the activity, > 0.9
