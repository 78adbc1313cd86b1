"""Write frames and their audio as one mp4 (H.264 + AAC) with the bundled ffmpeg of imageio-ffmpeg."""

from __future__ import annotations

import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np


def write_wav(path: str | Path, waveform: np.ndarray, sample_rate: int) -> None:
    """16-bit mono PCM ``.wav`` of ``waveform [N]`` in [-1, 1]."""
    pcm = (np.clip(waveform, -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(int(sample_rate))
        out.writeframes(pcm.tobytes())


class Mp4Writer:
    """Stream RGB frames ``[H, W, 3]`` uint8 into an mp4 and mux the audio in at :meth:`close`.

    The audio is trimmed or padded with silence to exactly ``frames / fps`` seconds, so picture and
    sound end together and stay frame-accurate.

    Args:
        path: the ``.mp4`` to write.
        fps: video frame rate.
        crf: H.264 quality (lower is better; 18 is visually lossless).
    """

    def __init__(self, path: str | Path, fps: float, crf: int = 18) -> None:
        import imageio_ffmpeg

        self.path, self.fps, self.crf = Path(path), float(fps), crf
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
        self._tmp = tempfile.TemporaryDirectory()
        self._video = Path(self._tmp.name) / "video.mp4"
        self._writer = None
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        """Append one frame ``[H, W, 3]`` uint8 (H and W even)."""
        import imageio_ffmpeg

        if self._writer is None:
            height, width = frame.shape[:2]
            self._writer = imageio_ffmpeg.write_frames(
                str(self._video), (width, height), fps=self.fps, codec="libx264", pix_fmt_out="yuv420p",
                quality=None, output_params=["-crf", str(self.crf)], macro_block_size=2)
            self._writer.send(None)
        self._writer.send(np.ascontiguousarray(frame))
        self.frames += 1

    def close(self, waveform: np.ndarray | None = None, sample_rate: int | None = None) -> Path:
        """Finish the video and mux ``waveform [N]`` (mono, [-1, 1]) as AAC; returns the mp4 path."""
        if self._writer is None:
            raise ValueError(f"{self.path}: no frames were written")
        self._writer.close()
        try:
            if waveform is None:
                self._video.replace(self.path)
                return self.path
            samples = int(round(self.frames / self.fps * sample_rate))
            audio = np.zeros(samples, np.float32)
            audio[: min(samples, len(waveform))] = waveform[:samples]
            wav = Path(self._tmp.name) / "audio.wav"
            write_wav(wav, audio, sample_rate)
            command = [self.ffmpeg, "-y", "-loglevel", "error", "-i", str(self._video), "-i", str(wav),
                       "-c:v", "copy", "-c:a", "aac", "-b:a", "128k", "-map", "0:v:0", "-map", "1:a:0",
                       str(self.path)]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"ffmpeg could not mux {self.path}: {result.stderr.strip()}")
            return self.path
        finally:
            self._tmp.cleanup()


class BackgroundWriter:
    """Feed a writer (``.write(frame)``, ``.close(...)``) from a thread, so that encoding overlaps rendering.

    :meth:`write` queues the frame (blocking only when ``max_queue`` frames wait) and returns;
    :meth:`close` waits for the queue, re-raises any error of the writer and closes it.
    ``encode_s`` is the time the thread spent in the writer's ``write``.
    """

    def __init__(self, writer, max_queue: int = 8) -> None:
        import queue
        import threading

        self.writer, self.encode_s = writer, 0.0
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="vasa3d-encoder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import time

        while True:
            frame = self._queue.get()
            if frame is None:
                return
            if self._error is not None:
                continue  # drain after a failure; close() reports it
            start = time.perf_counter()
            try:
                self.writer.write(frame)
            except BaseException as exc:  # noqa: BLE001 - re-raised by close()
                self._error = exc
            self.encode_s += time.perf_counter() - start

    @property
    def frames(self) -> int:
        return self.writer.frames

    def write(self, frame: np.ndarray) -> None:
        """Queue one frame ``[H, W, 3]`` uint8."""
        if self._error is not None:
            raise RuntimeError(f"the video writer failed: {self._error}") from self._error
        self._queue.put(frame)

    def close(self, *args, **kwargs):
        """Wait for the queued frames, then close the writer (same arguments as its ``close``)."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise RuntimeError(f"the video writer failed: {self._error}") from self._error
        return self.writer.close(*args, **kwargs)
