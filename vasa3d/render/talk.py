"""``vasa3d talk --portrait me.jpg --audio speech.wav --out talk.mp4``: portrait and speech to a talking video.

Fits the animatable head (``experiments/fit_subject.yaml`` unless ``--config`` says otherwise) and
renders the speech with the shipped speech-to-motion model. The fit is cached: its run root is
``outputs/talk/<portrait stem>-<key>``, the key hashing the portrait's bytes, the configs, the extra
fit options and the source of vasa3d, so the same portrait and settings fit once (an interrupted
fit resumes), and changed code or settings fit anew.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path

from vasa3d import runs
from vasa3d.errors import UserInputError

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "experiments" / "fit_subject.yaml"
DONE = "talk_fit.json"


def fit_key(portrait: Path, configs: Sequence[Path], fit_args: Sequence[str]) -> str:
    """What the cached fit depends on: portrait bytes, configs, extra options and the code."""
    from vasa3d.cache import source_hash

    digest = hashlib.sha256(portrait.read_bytes())
    for config in configs:
        digest.update(config.read_bytes())
    digest.update("\0".join(fit_args).encode())
    digest.update(source_hash("vasa3d", "datamodules").encode())
    return digest.hexdigest()[:12]


def talk_command(argv: Sequence[str]) -> int:
    """Fit (or reuse) the portrait's head, then render the speech; see ``vasa3d talk --help``."""
    parser = argparse.ArgumentParser(prog="vasa3d talk", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--portrait", required=True, type=Path, help="a photo with a face (jpg, png, ...)")
    parser.add_argument("--audio", required=True, type=Path, help="speech: wav, flac, ogg, mp3 or a video's audio")
    parser.add_argument("--out", required=True, type=Path, help="the .mp4 to write")
    parser.add_argument("--config", type=Path, action="append",
                        help=f"fit config (repeat for overlays; default {DEFAULT_CONFIG.relative_to(REPO)})")
    parser.add_argument("--motion", type=Path, help="an Audio2Motion checkpoint (default: the shipped model)")
    parser.add_argument("--camera", default="slow_orbit", help="static | orbit | slow_orbit | keyframe .json")
    parser.add_argument("--size", type=int, help="output side in px (default: the fit's size)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the motion sampler")
    parser.add_argument("--outputs", type=Path, default=runs.OUTPUTS / "talk", help="where cached fits live")
    args, fit_args = parser.parse_known_args(list(argv))
    configs = args.config or [DEFAULT_CONFIG]
    for path, what in [(args.portrait, "portrait"), (args.audio, "audio"), *((c, "config") for c in configs)]:
        if not path.is_file():
            raise UserInputError(f"{path}: no such {what} file")
    if fit_args and not all(arg.startswith("--") or not arg.startswith("-") for arg in fit_args):
        parser.error(f"unrecognised arguments: {' '.join(fit_args)}")

    from vasa3d.audio.io import load_audio
    from vasa3d.audio.pretrained import describe_motion_model, shipped_motion_model

    motion_path = args.motion or shipped_motion_model()
    if not motion_path.is_file():
        raise UserInputError(f"{motion_path}: no such motion checkpoint")
    load_audio(args.audio)  # fail on unreadable audio now, not after a ten-minute fit
    root = args.outputs / f"{runs.slug(args.portrait.stem)}-{fit_key(args.portrait, configs, fit_args)}"
    done = root / DONE
    if done.is_file():
        checkpoint = Path(json.loads(done.read_text())["checkpoint"])
        print(f"vasa3d talk: reusing the fit in {checkpoint.parent.parent} (same portrait, settings and code)")
    else:
        from vasa3d.cli import main

        resume = ["--ckpt_path", "last"] if runs.last_checkpoint(root) is not None else []
        print(f"vasa3d talk: fitting {args.portrait} into {root} ({'resuming' if resume else 'first time'})")
        start = time.perf_counter()
        flags = [arg for config in configs for arg in ("--config", str(config))]
        status = main(["fit", *flags, "--data.portrait", str(args.portrait), "--trainer.default_root_dir", str(root),
                       *fit_args, *resume])
        if status != 0:
            return status
        checkpoint = runs.last_checkpoint(root)
        if checkpoint is None:
            raise RuntimeError(f"the fit finished without writing {root}/version_N/checkpoints/last.ckpt")
        done.write_text(json.dumps({"checkpoint": str(checkpoint), "fit_s": round(time.perf_counter() - start, 1),
                                    "portrait": str(args.portrait), "configs": [str(c) for c in configs],
                                    "fit_args": list(fit_args)}, indent=1))

    from vasa3d.render.speak import talking_video
    from vasa3d.render.talking import TalkingHead

    head = TalkingHead.from_checkpoints(checkpoint, motion_path)
    print(f"using the {describe_motion_model(motion_path)}")
    waveform, rate = load_audio(args.audio, sample_rate=head.features.sample_rate)
    path, stats = talking_video(head, waveform, rate, args.out, args.camera, args.size, args.seed)
    print(f"wrote {path}: {stats.frames} frames, {len(waveform) / rate:.1f} s of speech; {stats.summary()}")
    return 0
