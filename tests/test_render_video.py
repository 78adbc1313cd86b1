"""Camera paths and the mp4 writer: frame-accurate video with its audio stream."""

import json

import av
import numpy as np
import pytest
import torch

from vasa3d.render.cameras import camera_path, view_about_head
from vasa3d.render.video import Mp4Writer

VIEW = torch.tensor([[1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 0.6], [0, 0, 0, 1]])


def _camera_centre(viewmat):
    return -viewmat[:3, :3].T @ viewmat[:3, 3]


def test_views_turn_about_the_head_and_dolly_closer():
    centre = _camera_centre(VIEW)
    turned = _camera_centre(view_about_head(VIEW, 30.0))
    assert torch.isclose(turned.norm(), centre.norm(), atol=1e-6)  # same distance from the head centre
    # the head appears turned by +30 degrees (as a head-pose yaw would turn it): the camera goes the other way
    assert torch.isclose(torch.atan2(turned[0], turned[2]).rad2deg(), torch.tensor(-30.0), atol=1e-4)
    assert torch.isclose(_camera_centre(view_about_head(VIEW, 0.0, dolly_m=0.1)).norm(), centre.norm() - 0.1)


def test_camera_paths(tmp_path):
    assert torch.equal(camera_path("static", VIEW, 5, 25.0), VIEW.expand(5, 4, 4))
    orbit = camera_path("orbit", VIEW, 150, 25.0)
    yaws = torch.stack([torch.atan2(*_camera_centre(v)[[0, 2]]).rad2deg() for v in orbit])
    assert yaws.max() > 25 and yaws.min() < -25  # swings both ways within one period
    keys = tmp_path / "path.json"
    keys.write_text(json.dumps([{"t": 0, "yaw": -20}, {"t": 1.0, "yaw": 20}]))
    path = camera_path(str(keys), VIEW, 26, 25.0)
    mid = -torch.atan2(*_camera_centre(path[12])[[0, 2]]).rad2deg()
    assert torch.isclose(mid, torch.tensor(-20 + 40 * 12 / 25), atol=1e-3)
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="keyframes"):
        camera_path(str(bad), VIEW, 3, 25.0)
    with pytest.raises(ValueError, match="static, orbit"):
        camera_path("spiral", VIEW, 3, 25.0)


def test_mp4_has_the_frames_and_an_audio_stream_of_the_same_length(tmp_path):
    fps, seconds, sr = 25.0, 2.0, 16000
    writer = Mp4Writer(tmp_path / "clip.mp4", fps)
    for t in range(int(fps * seconds)):
        writer.write(np.full((64, 64, 3), t * 5 % 255, np.uint8))
    tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(int(sr * 2.3)) / sr).astype(np.float32)  # longer: trimmed
    path = writer.close(tone, sr)
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0]
        frames = sum(1 for _ in container.decode(video=0))
        assert frames == 50
        assert abs(float(video.duration * video.time_base) - seconds) < 0.05
        assert audio.codec_context.name == "aac"
        assert abs(float(audio.duration * audio.time_base) - seconds) < 0.1


def test_background_writer_keeps_order_and_reports_errors(tmp_path):
    from vasa3d.render.video import BackgroundWriter

    class Recorder:
        frames = 0

        def __init__(self):
            self.seen = []

        def write(self, frame):
            if frame[0, 0, 0] == 99:
                raise OSError("disk full")
            self.seen.append(int(frame[0, 0, 0]))
            self.frames += 1

        def close(self, *args):
            return ("closed", args)

    recorder = Recorder()
    writer = BackgroundWriter(recorder, max_queue=2)
    for t in range(20):
        writer.write(np.full((4, 4, 3), t, np.uint8))
    assert writer.close("audio") == ("closed", ("audio",))
    assert recorder.seen == list(range(20)) and writer.frames == 20 and writer.encode_s >= 0

    failing = BackgroundWriter(Recorder())
    failing.write(np.full((4, 4, 3), 99, np.uint8))
    with pytest.raises(RuntimeError, match="disk full"):
        for _ in range(50):  # the error surfaces on a later write or at the latest on close
            failing.write(np.zeros((4, 4, 3), np.uint8))
        failing.close()


def test_motion_runs_ahead_in_order_and_errors_reach_the_consumer():
    from vasa3d.render.talking import RenderStats, _run_ahead

    stats = RenderStats()
    assert list(_run_ahead(iter(range(7)), stats)) == list(range(7))

    def broken():
        yield 1
        raise ValueError("bad window")

    with pytest.raises(ValueError, match="bad window"):
        list(_run_ahead(broken(), RenderStats()))
    # a consumer that stops early does not leave the producer blocked
    ahead = _run_ahead(iter(range(1000)), RenderStats(), depth=1)
    assert next(ahead) == 0
    ahead.close()


def test_the_second_window_waits_for_the_first_frame():
    """after_first: the producer makes nothing past the first window until the event is set (the first
    frame is out), and asking for the next window sets it, so a consumer never waits on itself."""
    import threading
    import time

    from vasa3d.render.talking import RenderStats, _run_ahead

    made, threads = [], []

    def windows():
        for i in range(4):
            made.append(i)
            threads.append(threading.current_thread().name)
            yield i

    shown = threading.Event()
    ahead = _run_ahead(windows(), RenderStats(), after_first=shown)
    assert next(ahead) == 0
    time.sleep(0.3)
    assert made == [0]  # held back while the first frame renders
    shown.set()
    time.sleep(0.3)
    assert made[:2] == [0, 1]
    assert list(ahead) == [1, 2, 3]
    # the first window is made on the caller's thread (all of its cores, nothing to overlap), the rest ahead
    assert threads == [threading.current_thread().name] + ["vasa3d-motion"] * 3
    never = _run_ahead(iter(range(3)), RenderStats(), after_first=threading.Event())
    assert list(never) == [0, 1, 2]  # no frame shown: the next request releases it

    def broken_first():
        raise ValueError("bad first window")
        yield 0

    with pytest.raises(ValueError, match="bad first window"):
        next(_run_ahead(broken_first(), RenderStats(), after_first=threading.Event()))
    assert list(_run_ahead(iter(()), RenderStats(), after_first=threading.Event())) == []
