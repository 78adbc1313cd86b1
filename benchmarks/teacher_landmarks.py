"""How faithfully does the built-in teacher show its latents? Landmarks re-detected on its frames.

For each head-pose bin, random expressions and gazes are rendered by ``MeshLiftTeacher`` from the
embedded portrait; mediapipe re-detects the 478 landmarks on every frame, and the mean distance to
the landmarks the teacher intended is reported in px (at the crop size) and as a fraction of the
inter-ocular distance, with the detection rate.

    python benchmarks/teacher_landmarks.py [--size 256] [--frames-per-bin 12] [--portrait photo.jpg]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch

from vasa3d.face import analyze_portrait
from vasa3d.motion.rig import CONTROL_BOUNDS, NUM_CONTROLS, latent_from_controls
from vasa3d.teachers import MeshLiftTeacher
from vasa3d.teachers.evaluation import redetection_errors

YAW_BINS = (0.0, 15.0, 30.0, 45.0)
PITCH_BINS = (-25.0, 0.0, 25.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="crop size in px")
    parser.add_argument("--frames-per-bin", type=int, default=12)
    parser.add_argument("--portrait", default=None, help="photo path; default: the embedded astronaut")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    source = args.portrait
    if source is None:
        from skimage import data

        source = data.astronaut()
    portrait = analyze_portrait(source, crop_size=args.size)
    teacher = MeshLiftTeacher()
    start = time.perf_counter()
    teacher.lift(portrait)
    lift_s = time.perf_counter() - start
    iod = float(torch.from_numpy(portrait.landmarks[[33, 263], :2]).diff(dim=0).norm())
    gen = torch.Generator().manual_seed(0)
    rows = []
    for yaw in YAW_BINS:
        for pitch in PITCH_BINS:
            n = args.frames_per_bin
            lo = torch.tensor([max(b[0], 0.0) for b in CONTROL_BOUNDS])
            hi = torch.tensor([min(b[1], 1.0) for b in CONTROL_BOUNDS])
            controls = lo + (hi - lo) * torch.rand(n, NUM_CONTROLS, generator=gen) ** 2  # mostly mild
            sign = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
            pose = torch.zeros(n, 6)
            pose[:, 1] = torch.deg2rad(torch.tensor(yaw)) * sign
            pose[:, 0] = torch.deg2rad(torch.tensor(pitch))
            gaze = (torch.rand(n, 2, generator=gen) - 0.5) * 0.4
            latents = latent_from_controls(controls, pose, dim=NUM_CONTROLS, gaze=gaze)
            start = time.perf_counter()
            out = teacher.generate(portrait, latents)
            render_ms = (time.perf_counter() - start) / n * 1000
            errors = redetection_errors(out.frames, out.landmarks)
            found = errors[~errors.isnan()]
            rows.append({"yaw_deg": yaw, "pitch_deg": pitch, "frames": n, "detected": int(found.numel()),
                         "error_px": float(found.mean()) if found.numel() else None,
                         "error_iod": float(found.mean()) / iod if found.numel() else None,
                         "render_ms_per_frame": render_ms})
            print(rows[-1], flush=True)

    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    lines = [f"# Teacher landmark fidelity ({datetime.date.today()})", "", f"`{command}`", "",
             f"- portrait: {args.portrait or 'embedded astronaut'}, crop {args.size} px, inter-ocular {iod:.1f} px",
             f"- MeshLiftTeacher defaults; lift (identity + photometric refinement) took {lift_s:.1f} s",
             f"- torch {torch.__version__}, {platform.processor() or platform.machine()}, "
             f"{torch.get_num_threads()} threads", "",
             "| |yaw| ° | pitch ° | detected | landmark error px | / inter-ocular | render ms/frame |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        err = "–" if r["error_px"] is None else f"{r['error_px']:.2f}"
        rel = "–" if r["error_iod"] is None else f"{r['error_iod']:.3f}"
        lines.append(f"| {r['yaw_deg']:.0f} | {r['pitch_deg']:.0f} | {r['detected']}/{r['frames']} | {err} | {rel} | "
                     f"{r['render_ms_per_frame']:.0f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{datetime.date.today()}-teacher_landmarks"
    stem.with_suffix(".md").write_text(table)
    stem.with_suffix(".json").write_text(json.dumps({"command": command, "rows": rows, "lift_s": lift_s}, indent=1))


if __name__ == "__main__":
    main()
