"""Speech to talking video with the shipped motion model: the fit's talk.mp4 and `vasa3d talk`."""

from pathlib import Path
from types import SimpleNamespace

import av
import pytest

from vasa3d.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--trainer.max_steps=3", "--data.crop_size=96", "--data.steps_per_epoch=3", "--model.num_gaussians=3000",
         "--model.max_gaussians=3500", "--model.densify=false"]


@pytest.fixture(scope="module")
def avatar_ckpt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fit")
    assert main(["fit", "--config", str(ROOT / "experiments" / "fit_portrait.yaml"), *SMALL,
                 "--trainer.default_root_dir", str(folder)]) == 0
    return folder / "version_0" / "checkpoints" / "last.ckpt"


def _streams(path: Path) -> tuple[int, float, float]:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video=0))
        audio = container.streams.audio[0]
        return frames, float(video.average_rate), float(audio.duration * audio.time_base)


def test_the_fit_callback_speaks_with_the_shipped_model(avatar_ckpt, tmp_path, capsys):
    from vasa3d.render.callbacks import TalkingVideoWriter
    from vasa3d.systems import SubjectFitting

    system = SubjectFitting.load_from_checkpoint(avatar_ckpt, map_location="cpu")
    trainer = SimpleNamespace(global_rank=0, logger=None, default_root_dir=str(tmp_path))
    TalkingVideoWriter(text="Hello there.", camera="slow_orbit").on_fit_end(trainer, system)
    frames, fps, audio_s = _streams(tmp_path / "talk.mp4")
    assert fps == 25 and abs(frames / fps - audio_s) < 0.2 and audio_s > 0.5  # speech with its audio, in sync
    assert "shipped motion model" in capsys.readouterr().out


def test_vasa3d_talk_fits_once_then_reuses_the_fit(tmp_path, monkeypatch, capsys):
    from vasa3d.audio.speech import synthesize
    from vasa3d.render.video import write_wav

    monkeypatch.chdir(tmp_path)
    from skimage.data import astronaut
    from PIL import Image

    Image.fromarray(astronaut()).save(tmp_path / "me.png")
    clip = synthesize("One two three.", voice="en-us")
    write_wav(tmp_path / "speech.wav", clip.waveform, clip.sample_rate)
    args = ["talk", "--portrait", "me.png", "--audio", "speech.wav", "--config",
            str(ROOT / "experiments" / "fit_portrait.yaml"), "--camera", "static", *SMALL]
    assert main([*args, "--out", "a.mp4"]) == 0
    assert "fitting me.png" in capsys.readouterr().out
    assert main([*args, "--out", "b.mp4"]) == 0
    assert "reusing the fit" in capsys.readouterr().out
    for name in ("a.mp4", "b.mp4"):
        frames, fps, audio_s = _streams(tmp_path / name)
        assert abs(frames / fps - audio_s) < 0.2
    assert main([*args[:4], "missing.wav", *args[5:], "--out", "c.mp4"]) == 2
    assert capsys.readouterr().err.strip() == "error: missing.wav: no such audio file"


def test_the_fit_callback_checks_its_audio_before_the_fit(tmp_path):
    from vasa3d.audio.io import AudioError
    from vasa3d.render.callbacks import TalkingVideoWriter

    with pytest.raises(AudioError):
        TalkingVideoWriter(audio=str(tmp_path / "missing.wav")).setup(None, None, "fit")
    TalkingVideoWriter().setup(None, None, "fit")  # the shipped model is there
