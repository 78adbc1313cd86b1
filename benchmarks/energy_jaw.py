"""The energy baseline's jaw blended into the motion model's (``Audio2Motion.energy_jaw``), on synthetic speech.

Measures, on the held-out sentences of the shipped model's recipe (the test and validation splits of
``experiments/audio2motion.yaml``'s data, never trained on; espeak-ng, all its languages), each once as
synthesised and once through the recipe's own audio augmentation (noise, babble, reverb, telephone, gain, ...):

- ``lipsync_corr``: correlation of the generated ``jaw_open`` with the phoneme-derived reference;
- ``jaw_silence`` / ``jaw_speech``: the mean ``jaw_open`` where silero-vad hears no one / someone (the
  reference's are in the first row): a mouth left ajar in noisy pauses shows in ``jaw_silence``.

Rows: the model's jaw alone and the energy baseline's, each raw and through the silence gate; the blend at
each ``--weights`` (``(1 - w) model + w baseline``), gated before the blend (the energy jaw left as it is
in pauses) and after it (what ``Audio2Motion.generate(..., voice_activity=...)`` does: the blend, then the
gate). No recorded speech is used: this is where the blend's weight may be looked at; the recorded
evaluation is ``benchmarks/real_speech.py``.

Run:  python benchmarks/energy_jaw.py [--motion CKPT] [--weights 0.25 0.5 0.75] [--name NAME]
Writes benchmarks/results/<date>-energy_jaw[-NAME].{md,csv,json}.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main(argv: list[str] | None = None) -> int:
    from vasa3d.audio.augment import AudioAugment
    from vasa3d.audio.evaluation import pearson
    from vasa3d.audio.pretrained import DEFAULT_MOTION_MODEL
    from vasa3d.audio.vad import voice_activity
    from vasa3d.audio.visemes import SilenceGate
    from vasa3d.metrics.table import write_table
    from vasa3d.systems import Audio2Motion

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--motion", type=Path, default=DEFAULT_MOTION_MODEL)
    parser.add_argument("--config", type=Path, default=ROOT / "experiments/audio2motion.yaml")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--seed", type=int, default=0, help="motion seed and augmentation draws")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks/results")
    parser.add_argument("--name", default="", help="a suffix for the result files")
    args = parser.parse_args(argv)
    if not args.motion.is_file():
        print(f"energy_jaw: {args.motion}: no such checkpoint", file=sys.stderr)
        return 2
    if any(not 0.0 <= w <= 1.0 for w in args.weights):
        parser.error("--weights: each in [0, 1]")

    torch.manual_seed(args.seed)
    motion = Audio2Motion.load_from_checkpoint(args.motion, map_location="cpu").eval()
    extractor = motion.feature_extractor()
    fps = float(motion.hparams.fps)
    start = time.perf_counter()
    import yaml
    from audio2motion import heldout_utterances  # benchmarks/audio2motion.py: the recipe's held-out specs, synthesised

    utts = heldout_utterances(args.config, "test", None) + heldout_utterances(args.config, "val", None)
    print(f"{len(utts)} held-out utterances synthesised ({time.perf_counter() - start:.0f} s)", flush=True)
    augmenter = AudioAugment.from_config(yaml.safe_load(args.config.read_text())["data"]["init_args"].get("augment"))
    rng = np.random.default_rng(args.seed)
    sums: dict[tuple[str, str], dict[str, list[float]]] = {}
    for i, utt in enumerate(utts):
        for version in ("clean", "augmented"):
            waveform = utt["waveform"]
            if version == "augmented":
                waveform, _ = augmenter(waveform, utt["sample_rate"], rng)
            features = extractor(waveform).float()
            n = min(len(features), len(utt["latent"]))
            features, reference = features[:n], utt["latent"].dyn[:n, 0]
            activity = voice_activity(waveform, utt["sample_rate"], fps, n)
            gain = torch.as_tensor(SilenceGate(fps)(activity)).float()
            with torch.no_grad():
                model = motion.generate(features, seed=args.seed, energy_jaw=0.0).dyn[:, 0]
                energy = motion.energy.jaw(features)
            curves = {"phoneme reference": reference, "model": model, "model, gated": gain * model,
                      "energy baseline": energy, "energy baseline, gated": gain * energy}
            for w in args.weights:
                curves[f"blend {w:g}, gated before"] = (1 - w) * gain * model + w * energy
                curves[f"blend {w:g}, gated after (shipped form)"] = gain * ((1 - w) * model + w * energy)
            silent = torch.as_tensor(activity < 0.5)
            for name, curve in curves.items():
                entry = sums.setdefault((version, name), {"lipsync_corr": [], "jaw_silence": [], "jaw_speech": []})
                if name != "phoneme reference":
                    entry["lipsync_corr"].append(float(pearson(curve, reference)))
                if silent.any() and (~silent).any():
                    entry["jaw_silence"].append(float(curve[silent].mean()))
                    entry["jaw_speech"].append(float(curve[~silent].mean()))
        if (i + 1) % 25 == 0:
            print(f"{i + 1}/{len(utts)} utterances ({time.perf_counter() - start:.0f} s)", flush=True)

    rows = {f"{version} · {name}": {k: (float(np.mean(v)) if v else None) for k, v in entry.items()}
            for (version, name), entry in sums.items()}
    notes = (f"Motion {args.motion}; {len(utts)} held-out utterances (test + val splits of {args.config.name}'s "
             "data, espeak-ng), each clean and augmented with the recipe's augmentation (one draw each, seed "
             f"{args.seed}). lipsync_corr: jaw_open vs the phoneme-derived reference, mean over utterances; "
             "jaw_silence/jaw_speech: mean jaw_open where silero-vad's probability is below/above 0.5. 'gated': "
             "through SilenceGate (release 80 ms). Synthetic speech only: no recording is used here.")
    command = "python " + shlex.join(["benchmarks/energy_jaw.py", *(sys.argv[1:] if argv is None else argv)])
    paths = write_table(rows, "energy_jaw" + (f"-{args.name}" if args.name else ""), out_dir=args.out_dir,
                        reference=None, command=command, notes=notes,
                        directions={"lipsync_corr": 1, "jaw_silence": 0, "jaw_speech": 0})
    print(paths["md"].read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
