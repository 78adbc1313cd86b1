"""Real-time talking head on this machine: motion generation and rendering timed apart, at 256 and 512 px.

For a synthesised sentence (espeak-ng; no files needed), measures:
- audio features: ms per second of audio;
- motion: ``Audio2Motion`` windows generated per second of audio (diffusion sampling, DDIM steps
  from the checkpoint), as frames per second of compute;
- rendering: the fitted avatar's deformation + rasterisation per frame at each size;
- online: the streaming loop of ``vasa3d render --online`` (audio in 200 ms chunks): compute latency to
  the first frame, the audio that must be buffered before it, and the sustained end-to-end FPS;
- where the time goes: ms per frame of each stage (deformation, projection, binning, compositing,
  motion, video encoding);
- the reference point: a minimal compiled rasterizer (``benchmarks/minimal_rasterizer.py``, plain loops)
  renders the same head's frame in the same run; its FPS is printed next to ours, with the mean
  absolute difference of the two images, so runs on busy machines can be compared by the ratio.
- quality: the mean absolute difference between the inference path's frame and the autograd path's.

Without checkpoints (``--synthetic``, the default when ``--avatar`` does not exist) the head is a
stage-2 ``SubjectFitting`` built from ``experiments/fit_subject.yaml`` at its ``max_gaussians``
(30k), unfitted, and the motion model an ``Audio2Motion`` of ``experiments/audio2motion.yaml``'s
size with random weights: the same computation per frame as fitted ones.

Run:  python benchmarks/realtime.py [--avatar CKPT|RUN] [--motion CKPT] [--synthetic] [--sizes 256 512]
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

from vasa3d.runs import last_checkpoint
from vasa3d.audio.pretrained import DEFAULT_MOTION_MODEL
from vasa3d.metrics.table import write_table

ROOT = Path(__file__).resolve().parents[1]
TEXT = ("The quick brown fox jumps over the lazy dog, and then it walks back home "
        "along the river, where the water shines in the evening light.")


class _Discard:
    def write(self, frame) -> None:
        pass


class _Keep:
    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []

    def write(self, frame) -> None:
        self.frames.append(frame)


def _init_args(config: Path) -> dict:
    import yaml

    return dict(yaml.safe_load(config.read_text())["model"]["init_args"])


def synthetic_head(size: int = 256):
    """A ``TalkingHead`` with a stage-2 head of ``fit_subject.yaml``'s size (``max_gaussians``) and an
    ``Audio2Motion`` of ``audio2motion.yaml``'s size, both with untrained weights, on the CPU."""
    from vasa3d.audio.features import AudioFeatureExtractor
    from vasa3d.render.talking import TalkingHead
    from vasa3d.systems import Audio2Motion, SubjectFitting

    torch.manual_seed(0)
    args = _init_args(ROOT / "experiments/fit_subject.yaml")
    args.update(num_gaussians=args["max_gaussians"], identity_steps=0, stage1_ckpt=None)
    avatar = SubjectFitting(**args).eval()
    with torch.no_grad():  # a non-zero residual MLP, so the per-frame residual really runs
        for p in avatar.avatar.residual.out.parameters():
            p.normal_(0.0, 0.01)
    centre = avatar.avatar.head.vertices().mean(0)
    viewmat = torch.tensor([[1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 0.6], [0, 0, 0, 1]])
    viewmat[:3, 3] -= viewmat[:3, :3] @ centre  # the head's centre on the optical axis, 0.6 m away
    focal = 2.0 * size  # the head fills about 80 % of the frame's height, as in a portrait crop
    K = torch.tensor([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1]])
    avatar.reference_camera = {"viewmat": viewmat, "K": K, "size": torch.tensor(size)}

    features = AudioFeatureExtractor()
    margs = _init_args(ROOT / "experiments/audio2motion.yaml")
    margs.update(audio_dim=features.dim, feature_config=dict(features.config()))
    motion = Audio2Motion(**margs)
    gen = torch.Generator().manual_seed(0)
    frames = 400
    batch = {"audio": torch.randn(1, frames, features.dim, generator=gen),
             "dyn": torch.rand(1, frames, margs["latent_dim"], generator=gen),
             "pose": 0.05 * torch.randn(1, frames, 6, generator=gen), "gaze": torch.zeros(1, frames, 2)}
    motion.fit_statistics([batch])
    return TalkingHead(avatar, motion.eval(), features)


def encoding_ms(frames: list[np.ndarray], fps: float) -> float:
    """ms per frame to encode ``frames`` into an H.264 mp4 (wall time of writing them and closing)."""
    import tempfile

    from vasa3d.render.video import Mp4Writer

    with tempfile.TemporaryDirectory() as tmp:
        writer = Mp4Writer(Path(tmp) / "encode.mp4", fps)
        start = time.perf_counter()
        for frame in frames:
            writer.write(frame)
        writer.close()
        return 1000 * (time.perf_counter() - start) / len(frames)


def reference_comparison(head, latent, size: int, repeats: int = 5) -> dict[str, float]:
    """Our rasterizer against the minimal compiled one on the same frame, interleaved, best of ``repeats``;
    and our inference path against the autograd path (mean absolute difference of the frames)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from minimal_rasterizer import minimal_render

    from vasa3d.gaussians.render import rasterize

    avatar, background = head.avatar.avatar, head.avatar.background
    with torch.inference_mode():
        g = avatar.world_gaussians(avatar.frame(latent), 0)
    params = [g[k].clone() for k in ("means", "quats", "scales", "opacities", "colors")]
    viewmat, K = head.viewmat, head.intrinsics(size)
    ours_s, minimal_s = [], []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        with torch.inference_mode():
            ours = rasterize(*params, viewmat[None], K[None], size, size, backgrounds=background)
        ours_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        ref_rgb, ref_alpha = minimal_render(*params, viewmat, K, size, size, background)
        minimal_s.append(time.perf_counter() - start)
    grad_params = [p.clone().requires_grad_() for p in params]
    autograd = rasterize(*grad_params, viewmat[None], K[None], size, size, backgrounds=background)
    ours_ms, minimal_ms = 1000 * min(ours_s[1:]), 1000 * min(minimal_s[1:])
    return {"rasterize_ms": ours_ms, "minimal_ms": minimal_ms, "rasterize_over_minimal": ours_ms / minimal_ms,
            "mad_vs_minimal": float((ours.rgb[0] - ref_rgb).abs().mean()),
            "mad_vs_autograd_path": float((ours.rgb - autograd.rgb.detach()).abs().mean())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--avatar", type=Path, default=ROOT / "outputs/fit_subject/astronaut",
                        help="stage-2 checkpoint, run folder or run root (its newest last.ckpt)")
    parser.add_argument("--motion", type=Path, default=DEFAULT_MOTION_MODEL,
                        help="Audio2Motion checkpoint (default: the shipped model)")
    parser.add_argument("--synthetic", action="store_true",
                        help="an unfitted 30k-Gaussian stage-2 head and an untrained motion model of the configs' "
                        "sizes (the default when --avatar does not exist)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()],
                        help="torch threads of the main loop, one set of rows each (the online loop's motion thread "
                        "always uses one); e.g. --threads 2 1 on a machine whose cores other processes share")
    parser.add_argument("--chunk-ms", type=float, default=200.0)
    parser.add_argument("--online-window", type=int, default=10,
                        help="frames per generated window in the low-latency online rows")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks/results")
    parser.add_argument("--name", default="", help="a suffix for the result files, so that a second run on the same "
                        "day does not replace the first")
    args = parser.parse_args(argv)

    from vasa3d.audio.io import resample
    from vasa3d.audio.speech import synthesize
    from vasa3d.render.talking import STAGES, TalkingHead

    if args.avatar.is_dir():
        args.avatar = last_checkpoint(args.avatar) or args.avatar
    synthetic = args.synthetic or not args.avatar.is_file()
    if synthetic:
        print(f"{args.avatar}: not found; using a synthetic stage-2 head (see --synthetic)" if not args.synthetic
              else "synthetic stage-2 head", flush=True)
        head = synthetic_head()
    else:
        head = TalkingHead.from_checkpoints(args.avatar, args.motion)
    clip = synthesize(TEXT, voice="en-us")
    sample_rate = head.features.sample_rate
    waveform = resample(clip.waveform, clip.sample_rate, sample_rate).astype(np.float32)
    seconds = len(waveform) / sample_rate
    print(f"speech: {seconds:.2f} s, threads {args.threads}", flush=True)

    runs = [(threads, size) for threads in args.threads for size in args.sizes]
    rows = {}
    for threads, size in runs:
        torch.set_num_threads(threads)
        label = f"{size} px" if len(args.threads) == 1 else f"{size} px, {threads} thread{'s' * (threads > 1)}"
        start = time.perf_counter()
        features = head.features(waveform)
        features_ms_per_s = 1000 * (time.perf_counter() - start) / seconds
        head.motion.generate(features[: head.motion.hparams.window])  # warm-up
        start = time.perf_counter()
        latents = head.motion.generate(features, seed=0)
        motion_s = time.perf_counter() - start
        motion_fps = len(latents) / motion_s
        for t in range(3):  # warm-up (the kernel's first call, caches)
            head.render_frame(latents[t:t + 1], head.viewmat, size)
        kept = _Keep()
        stats = head.render_latents(latents, "orbit", size, kept)
        render_ms = statistics.median(stats.per_frame_render_ms)
        reference = reference_comparison(head, latents[0:1], size)
        stats.motion_s = motion_s
        stats.stage_ms["encoding"] = encoding_ms(kept.frames[:50], head.fps) * stats.frames
        print(f"{label}, ms per frame:\n{stats.stage_table()}", flush=True)
        chunk = int(args.chunk_ms / 1000 * sample_rate)
        online = {}
        for window in (None, args.online_window):
            chunks = (waveform[i:i + chunk] for i in range(0, len(waveform), chunk))
            for _, online[window] in head.stream(chunks, len(latents), "orbit", size, seed=0, window=window):
                pass
        trained = head.motion.hparams.window
        minimal_fps = 1000.0 / reference["minimal_ms"]
        per_frame = {f"{name}_ms": stats.stage_ms[name] / stats.frames for name in STAGES if name in stats.stage_ms}
        per_frame["motion_ms"] = 1000 * motion_s / len(latents)
        rows[label] = {
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
            **per_frame,
            "minimal_kernel_fps": minimal_fps,
            f"online_w{trained}_fps_over_minimal_fps": online[None].fps / minimal_fps,
            **reference,
        }
        print(label, {k: round(v, 4 if k.startswith("mad") else 2) for k, v in rows[label].items()}, flush=True)
        print(f"{label}: online {online[None].fps:.1f} FPS (w{trained}), {online[args.online_window].fps:.1f} FPS "
              f"(w{args.online_window}); minimal kernel alone {minimal_fps:.1f} FPS; rasterize / minimal "
              f"{reference['rasterize_over_minimal']:.2f}x", flush=True)

    threads = ", ".join(map(str, args.threads))
    notes = (f"CPU, {threads} thread(s) for the main loop (motion runs on its own thread online); {seconds:.1f} s of espeak-ng speech at {head.fps:g} FPS; "
             f"{head.avatar.head.num_gaussians} Gaussians"
             f"{' (synthetic, unfitted stage-2 head; untrained motion model of the same size)' if synthetic else ''}"
             f"; motion: Audio2Motion "
             f"{head.motion.hparams.model_type}, {head.motion.hparams.sample_steps} DDIM steps, window "
             f"{head.motion.hparams.window} frames. online_*: the streaming loop of `vasa3d render --online` with "
             f"{args.chunk_ms:g} ms audio chunks, windows of the training length (w{head.motion.hparams.window}) and of "
             f"{args.online_window} frames; first-frame latency is compute only, buffering is the audio a window "
             "needs before it can start. realtime_factor = online FPS (training window) / video FPS (>= 1 keeps up). "
             "*_ms: ms per frame of each stage (offline run; encoding: H.264 of 50 frames by the bundled ffmpeg). "
             "minimal_*: benchmarks/minimal_rasterizer.py (plain loops) on the same frame in the same run, best of "
             "5 interleaved with ours; mad_*: mean absolute difference of the frames.")
    directions = {"features_ms_per_audio_s": -1, "motion_fps": 1, "render_ms": -1, "render_fps": 1,
                  "offline_fps": 1, "realtime_factor": 1, "minimal_kernel_fps": 1, "rasterize_over_minimal": -1}
    for key in next(iter(rows.values())):
        if key.startswith("online_"):
            directions[key] = 1 if key.endswith("_fps") or key.endswith("_over_minimal_fps") else -1
        elif key.endswith("_ms") or key.startswith("mad_"):
            directions[key] = -1
    paths = write_table(rows, "realtime" + (f"-{args.name}" if args.name else ""), out_dir=args.out_dir, reference=None, notes=notes, directions=directions,
                        command="python " + shlex.join(["benchmarks/realtime.py", *sys.argv[1:]]))
    print("wrote", ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
