"""Real-time talking head on this machine: motion generation and rendering timed apart, at 256 and 512 px.

For a synthesised sentence (espeak-ng; no files needed), measures:
- audio features: ms per second of audio;
- motion: ``Audio2Motion`` windows generated per second of audio (diffusion sampling, DDIM steps
  from the checkpoint), as frames per second of compute;
- rendering: the fitted avatar's deformation + rasterisation per frame at each size;
- online: the streaming loop of ``vasa3d render --online`` (audio in 200 ms chunks): compute latency to
  the first frame, the audio that must be buffered before it, and the sustained end-to-end FPS.

Run:  python benchmarks/realtime.py [--avatar CKPT] [--motion CKPT] [--sizes 256 512]
Writes benchmarks/results/<date>-realtime.{md,csv,json}.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vasa3d.metrics.table import write_table

ROOT = Path(__file__).resolve().parents[1]
TEXT = ("The quick brown fox jumps over the lazy dog, and then it walks back home "
        "along the river, where the water shines in the evening light.")


class _Discard:
    def write(self, frame) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--avatar", type=Path, default=ROOT / "outputs/fit_subject/checkpoints/last.ckpt")
    parser.add_argument("--motion", type=Path, default=ROOT / "outputs/audio2motion/checkpoints/last.ckpt")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--chunk-ms", type=float, default=200.0)
    parser.add_argument("--online-window", type=int, default=10,
                        help="frames per generated window in the low-latency online rows")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks/results")
    args = parser.parse_args(argv)

    from vasa3d.audio.io import resample
    from vasa3d.audio.speech import synthesize
    from vasa3d.render.talking import TalkingHead

    head = TalkingHead.from_checkpoints(args.avatar, args.motion)
    clip = synthesize(TEXT, voice="en-us")
    sample_rate = head.features.sample_rate
    waveform = resample(clip.waveform, clip.sample_rate, sample_rate).astype(np.float32)
    seconds = len(waveform) / sample_rate
    print(f"speech: {seconds:.2f} s, {torch.get_num_threads()} threads", flush=True)

    start = time.perf_counter()
    features = head.features(waveform)
    features_ms_per_s = 1000 * (time.perf_counter() - start) / seconds
    head.motion.generate(features[: head.motion.hparams.window])  # warm-up
    start = time.perf_counter()
    latents = head.motion.generate(features, seed=0)
    motion_s = time.perf_counter() - start
    motion_fps = len(latents) / motion_s

    rows = {}
    for size in args.sizes:
        for t in range(3):  # warm-up (the kernel's first call, caches)
            head.render_frame(latents[t:t + 1], head.viewmat, size)
        stats = head.render_latents(latents, "orbit", size, _Discard())
        render_ms = statistics.median(stats.per_frame_render_ms)
        chunk = int(args.chunk_ms / 1000 * sample_rate)
        online = {}
        for window in (None, args.online_window):
            chunks = (waveform[i:i + chunk] for i in range(0, len(waveform), chunk))
            for _, online[window] in head.stream(chunks, len(latents), "orbit", size, seed=0, window=window):
                pass
        trained = head.motion.hparams.window
        rows[f"{size} px"] = {
            "features_ms_per_audio_s": features_ms_per_s,
            "motion_fps": motion_fps,
            "render_ms": render_ms,
            "render_fps": 1000.0 / render_ms,
            "offline_fps": len(latents) / (motion_s + stats.render_s),
            f"online_w{trained}_fps": online[None].fps,
            f"online_w{trained}_first_frame_ms": 1000 * online[None].first_frame_s,
            f"online_w{trained}_buffering_ms": 1000 * online[None].buffering_s,
            f"online_w{args.online_window}_fps": online[args.online_window].fps,
            f"online_w{args.online_window}_first_frame_ms": 1000 * online[args.online_window].first_frame_s,
            f"online_w{args.online_window}_buffering_ms": 1000 * online[args.online_window].buffering_s,
            "realtime_factor": online[None].fps / head.fps,
        }
        print(size, {k: round(v, 2) for k, v in rows[f"{size} px"].items()}, flush=True)

    notes = (f"CPU, {torch.get_num_threads()} threads; {seconds:.1f} s of espeak-ng speech at {head.fps:g} FPS; "
             f"{head.avatar.head.num_gaussians} Gaussians; motion: Audio2Motion "
             f"{head.motion.hparams.model_type}, {head.motion.hparams.sample_steps} DDIM steps, window "
             f"{head.motion.hparams.window} frames. online_*: the streaming loop of `vasa3d render --online` with "
             f"{args.chunk_ms:g} ms audio chunks, windows of the training length (w{head.motion.hparams.window}) and of "
             f"{args.online_window} frames; first-frame latency is compute only, buffering is the audio a window "
             "needs before it can start. realtime_factor = online FPS (training window) / video FPS (>= 1 keeps up).")
    directions = {"features_ms_per_audio_s": -1, "motion_fps": 1, "render_ms": -1, "render_fps": 1,
                  "offline_fps": 1, "realtime_factor": 1}
    for key in next(iter(rows.values())):
        if key.startswith("online_"):
            directions[key] = 1 if key.endswith("_fps") else -1
    paths = write_table(rows, "realtime", out_dir=args.out_dir, reference=None, notes=notes, directions=directions,
                        command="python " + shlex.join(["benchmarks/realtime.py", *sys.argv[1:]]))
    print("wrote", ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
