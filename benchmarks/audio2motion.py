"""Speech to motion on held-out sentences: the diffusion model against two baselines.

Rows: ``Audio2Motion`` (diffusion), the same backbone trained by regression, and audio energy
mapped straight to jaw opening (fitted by least squares inside the diffusion checkpoint). Columns:
lip-sync as the correlation of generated and reference mouth opening (``jaw_open``), its mean
error in latent units, the lip landmark error of the template driven by each latent (inter-ocular
distances, frontal view), and motion diversity across seeds (mean std of ``dyn`` and ``pose``).

Run:  python benchmarks/audio2motion.py [--diffusion CKPT] [--regression CKPT] [--split test] [--seeds 3]
      (fit them first: lightning fit --config experiments/audio2motion.yaml
       and  lightning fit --config experiments/audio2motion.yaml --config experiments/ablations/audio2motion_regression.yaml)
Writes benchmarks/results/<date>-audio2motion.{md,csv,json}.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import lightning as L
import torch

from vasa3d.audio.evaluation import evaluate_generator
from vasa3d.cli import datamodule_from_config
from vasa3d.metrics import MetricResult
from vasa3d.metrics.table import write_table
from vasa3d.motion.rig import ExpressionRig
from vasa3d.systems import Audio2Motion

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--diffusion", type=Path, default=ROOT / "outputs/audio2motion/checkpoints/last.ckpt")
    parser.add_argument("--regression", type=Path,
                        default=ROOT / "outputs/audio2motion_regression/checkpoints/last.ckpt")
    parser.add_argument("--config", type=Path, default=ROOT / "experiments/audio2motion.yaml")
    parser.add_argument("--split", default="test", choices=["val", "test"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks/results")
    args = parser.parse_args(argv)
    if not args.diffusion.is_file():
        parser.error(f"{args.diffusion}: no such checkpoint (see the module docstring)")

    datamodule = datamodule_from_config(args.config)
    datamodule.setup("test")
    utterances = [{"audio": u["audio"].float(), "latent": u["latent"]}
                  for u in datamodule.heldout_utterances(args.split)]
    rig = ExpressionRig()
    seeds = tuple(range(args.seeds))
    diffusion = Audio2Motion.load_from_checkpoint(args.diffusion, map_location="cpu").eval()
    generators = {"diffusion (Audio2Motion)": lambda a, s: diffusion.generate(a, seed=s),
                  "diffusion, 10-frame windows (low latency)": lambda a, s: diffusion.generate(a, seed=s, window=10)}
    if args.regression.is_file():
        regression = Audio2Motion.load_from_checkpoint(args.regression, map_location="cpu").eval()
        generators["regression baseline"] = lambda a, s: regression.generate(a, seed=s)
    generators["energy -> jaw baseline"] = lambda a, s: diffusion.energy.generate(a, seed=s)

    rows: dict[str, dict[str, MetricResult | float]] = {}
    for name, generate in generators.items():
        with torch.no_grad():
            rows[name] = evaluate_generator(generate, utterances, seeds, rig=rig)
        print(name, {k: round(v, 4) for k, v in rows[name].items()}, flush=True)
    if "regression baseline" not in rows:
        rows["regression baseline"] = {k: MetricResult.not_measured(f"no checkpoint at {args.regression}")
                                       for k in rows["diffusion (Audio2Motion)"]}

    notes = (f"{len(utterances)} held-out {args.split} sentences (never seen in training), {len(seeds)} seeds each. "
             "lipsync_corr: Pearson correlation of generated and reference jaw_open; mouth_err: its mean absolute "
             "error (latent units); lip_iod: lip landmark error of the rig-driven template, inter-ocular distances; "
             "diversity_*: std across seeds (the regression and energy baselines are deterministic: 0).")
    paths = write_table(rows, "audio2motion", out_dir=args.out_dir, reference="diffusion (Audio2Motion)",
                        command="python " + shlex.join(["benchmarks/audio2motion.py", *sys.argv[1:]]),
                        config_text=args.config.read_text(), notes=notes,
                        directions={"lipsync_corr": 1, "mouth_err": -1, "lip_iod": -1, "diversity_dyn": 1,
                                    "diversity_pose": 1})
    print("wrote", ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
