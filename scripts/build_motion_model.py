"""Build the shipped speech-to-motion model (vasa3d/audio/assets/audio2motion.ckpt) from scratch, offline.

The recipe is the model and data keys of ``experiments/audio2motion.yaml``: espeak-ng speech in 18
languages with many voices, rates and pitches, phonemes -> visemes -> motion, augmented audio, then
``Audio2Motion`` (the diffusion transformer) trained for ``--steps`` steps on the CPU. Synthesis runs in
a fresh cache folder (so it is part of every build) and training is seeded, single-threaded and run
with deterministic algorithms. Measured: two short builds (30 steps) gave bit-identical tensors; two
full builds gave identical data, normalisation statistics and losses at every logged step, and weights
equal to within 6e-6 (not bit-identical; most likely the CPU matrix kernels' summation order, which
can vary between runs). The checkpoint is slim (no optimiser state) and records the data recipe, the feature settings and
the build settings (no timestamps or paths). Usage::

    python scripts/build_motion_model.py     # the shipped model: 20.4-20.6 min on a busy 2-core machine
    python scripts/build_motion_model.py --out /tmp/m.ckpt --steps 20 --utterances 36   # a quick check
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_STEPS = 3000


def _init_args(config: Path) -> tuple[dict, dict]:
    """``(model init_args, data init_args)`` of a job YAML."""
    import yaml

    job = yaml.safe_load(config.read_text())
    return dict(job["model"]["init_args"]), dict(job["data"]["init_args"])


def _progress(every: int, started: float):
    import lightning as L

    class Progress(L.Callback):
        """One line every ``every`` steps (the build runs without a progress bar when not on a terminal)."""

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            step = trainer.global_step
            if step % every == 0 or step == trainer.max_steps:
                loss = float(outputs["loss"]) if isinstance(outputs, dict) else float(outputs)
                print(f"step {step}/{trainer.max_steps}  loss {loss:.4f}  {time.perf_counter() - started:.0f} s",
                      flush=True)

    return Progress()


def build(out: Path, config: Path, steps: int, utterances: int | None, threads: int, keep_cache: Path | None) -> dict:
    import lightning as L
    import torch

    from datamodules.speech_motion import SpeechMotionDataModule
    from vasa3d.systems import Audio2Motion

    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    model_args, data_args = _init_args(config)
    if utterances is not None:
        data_args["num_utterances"] = utterances
    cache = Path(keep_cache) if keep_cache else Path(tempfile.mkdtemp(prefix="vasa3d_motion_build_"))
    data_args["cache_dir"] = str(cache)
    started = time.perf_counter()
    try:
        L.seed_everything(0, workers=True, verbose=False)
        datamodule = SpeechMotionDataModule(**data_args)
        datamodule.prepare_data()
        synthesis_s = time.perf_counter() - started
        manifest = json.loads((datamodule.cache_path / "manifest.json").read_text())
        census = manifest["phonemes"]
        if census["unmapped_count"]:
            raise RuntimeError(f"{census['unmapped_count']} phonemes have no viseme: {census['unmapped'][:10]}; "
                               "map them in vasa3d/audio/visemes.py")
        print(f"synthesised {len(manifest['utterances'])} utterances in {synthesis_s:.0f} s; "
              f"{census['distinct']} distinct phonemes, {census['unmapped_count']} unmapped", flush=True)
        L.seed_everything(0, workers=True, verbose=False)
        model = Audio2Motion(**model_args)
        trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                            enable_model_summary=False, enable_progress_bar=sys.stderr.isatty(), deterministic=True,
                            gradient_clip_val=1.0, limit_val_batches=0, num_sanity_val_steps=0,
                            default_root_dir=str(cache), callbacks=[_progress(250, started)])
        trainer.fit(model, datamodule)
        frames = sum(len(u["audio"]) for u in datamodule.splits["train"])
        # plain types only (lists, dicts, numbers, strings): the file loads with torch.load(weights_only=True)
        data_hparams = json.loads(json.dumps({k: v for k, v in dict(datamodule.hparams).items() if k != "cache_dir"}))
        checkpoint = {
            "state_dict": {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()},
            "hyper_parameters": dict(model.hparams),
            "datamodule_hyper_parameters": data_hparams,
            "pytorch-lightning_version": L.__version__,
            "global_step": steps,
            "vasa3d_build": {
                "command": "python scripts/build_motion_model.py" + (f" --steps {steps}" if steps != DEFAULT_STEPS
                                                                      else ""),
                "steps": steps, "threads": threads, "seed": 0, "config": str(config.relative_to(ROOT))
                if config.is_relative_to(ROOT) else str(config),
                "train_utterances": len(datamodule.splits["train"]), "train_frames": frames,
                "phonemes_distinct": census["distinct"], "phonemes_unmapped": census["unmapped_count"],
                "torch": str(torch.__version__),
            },
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()  # saved through a buffer: the zip's inner folder name does not depend on the path
        torch.save(checkpoint, buffer)
        tmp = out.with_suffix(".tmp")
        tmp.write_bytes(buffer.getvalue())
        tmp.replace(out)
    finally:
        if not keep_cache:
            shutil.rmtree(cache, ignore_errors=True)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "synthesis_s": synthesis_s, "bytes": out.stat().st_size}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "vasa3d/audio/assets/audio2motion.ckpt")
    parser.add_argument("--config", type=Path, default=ROOT / "experiments/audio2motion.yaml",
                        help="job YAML whose model/data init_args are the recipe")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="training steps")
    parser.add_argument("--utterances", type=int, help="override data.num_utterances (quick checks)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training (the result depends on it)")
    parser.add_argument("--keep-cache", type=Path, help="synthesise into (and reuse) this folder instead of a fresh one")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps {args.steps}: give at least 1")
    if not args.config.is_file():
        parser.error(f"{args.config}: no such config")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    result = build(args.out, args.config, args.steps, args.utterances, args.threads, args.keep_cache)
    print(f"wrote {args.out}: {result['bytes'] / 1e6:.1f} MB in {result['seconds'] / 60:.1f} min "
          f"(synthesis {result['synthesis_s']:.0f} s, {args.steps} steps)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
