"""Stage 2 against the static head: quality on held-out clips and poses, fitting time, render FPS.

Evaluates two checkpoints on the held-out splits of the synthetic video that ``--config`` describes
(the same cached teacher clips the fit used):

- the animated head of ``lightning fit --config experiments/fit_subject.yaml`` (stage 2);
- the static head of ``lightning fit --config experiments/fit_portrait.yaml`` (the foundation
  issue), posed rigidly by each frame's latent: it has no expression model.

Per split: PSNR and SSIM against the teacher frames, the landmark error of the deformed template
(px), and the error of mediapipe's landmarks re-detected on the renders against the teacher
frames' (px and inter-ocular distances). Then fitting time (from the checkpoints) and render
speed of a held-out clip at 256 and 512 px on this machine (deformation + rendering, per frame).

Run:  python benchmarks/subject_fit.py [--stage2 CKPT] [--static CKPT] [--config YAML]
Writes benchmarks/results/<date>-subject_fit.{md,csv,json}.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from vasa3d import runs
from vasa3d.cli import datamodule_from_config
from vasa3d.metrics import MetricResult
from vasa3d.metrics.table import write_table
from vasa3d.motion.latent import MotionLatent
from vasa3d.systems import SubjectFitting

ROOT = Path(__file__).resolve().parents[1]


def evaluate(system: SubjectFitting, datamodule, rigid: bool) -> dict[str, float]:
    """``trainer.test`` on the held-out splits; returns the logged ``test/<split>/<metric>`` numbers."""
    system.rigid_only = rigid
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                            default_root_dir=tmp)
        trainer.test(system, datamodule=datamodule, verbose=False)
        return {k: float(v) for k, v in trainer.callback_metrics.items()}


@torch.no_grad()
def render_ms(system: SubjectFitting, latent: MotionLatent, viewmat: torch.Tensor, K: torch.Tensor, size: int,
              rigid: bool, repeats: int = 3) -> float:
    """Median wall time (ms) per frame to deform and render ``latent [T]`` at ``size`` px, over ``repeats`` passes."""
    K = K.clone()
    K[:2] *= size / (2 * float(K[0, 2]))
    times = []
    for repeat in range(repeats):
        for t in range(len(latent)):
            start = time.perf_counter()
            frame = system.avatar.frame(latent[t:t + 1], rigid=rigid)
            system.avatar.render(frame, 0, viewmat[None], K[None], size, system.background, system.hparams.backend)
            if repeat or t >= 2:  # the first frames warm up the kernel and caches
                times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage2", type=Path, default=ROOT / "outputs/fit_subject/astronaut",
                        help="checkpoint, run folder or run root (its newest last.ckpt)")
    parser.add_argument("--static", type=Path, default=ROOT / "outputs/fit_portrait/astronaut",
                        help="checkpoint, run folder or run root (its newest last.ckpt)")
    parser.add_argument("--config", type=Path, default=ROOT / "experiments/fit_subject.yaml",
                        help="the stage-2 fit config (its data section gives the held-out clips)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks/results")
    args = parser.parse_args(argv)
    try:
        args.stage2, args.static = runs.resolve_checkpoint(args.stage2), runs.resolve_checkpoint(args.static)
    except FileNotFoundError as error:
        parser.error(f"{error} (fit it first; see the module docstring)")

    datamodule = datamodule_from_config(args.config)
    datamodule.setup("test")
    clip = datamodule.clips("heldout_latent")[0]
    latent = MotionLatent(*(torch.from_numpy(clip[k]).float() for k in ("dyn", "pose", "gaze")))
    sample = datamodule.sample
    rows: dict[str, dict[str, MetricResult | float]] = {}
    for name, path, rigid in (("stage 2 (animated)", args.stage2, False), ("static head (rigid pose)", args.static, True)):
        system = SubjectFitting.load_from_checkpoint(path, map_location="cpu")
        system.eval()
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        metrics = evaluate(system, datamodule, rigid)
        row: dict[str, MetricResult | float] = {}
        for split in ("heldout_latent", "heldout_pose"):
            for metric in ("psnr", "ssim", "landmark_px", "redetect_px", "redetect_iod"):
                row[f"{split}/{metric}"] = metrics.get(f"test/{split}/{metric}", float("nan"))
        seconds = checkpoint.get("train_time_s")
        row["fit_time_s"] = MetricResult(seconds) if seconds is not None else \
            MetricResult.not_measured("checkpoint written before fit times were recorded")
        row["num_gaussians"] = float(system.head.num_gaussians)
        for size in args.sizes:
            ms = render_ms(system, latent, sample["viewmat"], sample["K"], size, rigid)
            row[f"render_ms_{size}"] = ms
            row[f"fps_{size}"] = 1000.0 / ms
        rows[name] = row
        print(name, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)

    notes = (f"Held-out splits of the synthetic teacher video of {args.config.name} ({torch.get_num_threads()} CPU "
             "threads). The static head has no expression model: it is posed rigidly by each latent. "
             "redetect_*: mediapipe's landmarks on the render against those on the teacher frame. "
             "fit_time_s: training wall time from the checkpoint (teacher video excluded). "
             "render_ms: deformation + rendering of one frame, median over three passes of a held-out clip.")
    paths = write_table(rows, "subject_fit", out_dir=args.out_dir, reference="stage 2 (animated)",
                        command="python " + shlex.join(["benchmarks/subject_fit.py", *sys.argv[1:]]),
                        config_text=args.config.read_text(), notes=notes,
                        directions={**{f"{split}/{m}": -1 for split in ("heldout_latent", "heldout_pose")
                                       for m in ("landmark_px", "redetect_px", "redetect_iod")},
                                    **{f"fps_{s}": 1 for s in args.sizes}, **{f"render_ms_{s}": -1 for s in args.sizes},
                                    "fit_time_s": -1, "num_gaussians": 0})
    print("wrote", ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
