"""Free viewpoint to ±60°: wide-pose metrics of fitted heads (and of the teacher's lifted head), per yaw.

For each ``--run LABEL=RUN`` (a run folder, a run root or a checkpoint of ``SubjectFitting``) on the
portrait it was fitted to (``--portrait``, default the embedded astronaut), the neutral head is turned
through ±60° in front of a frontal camera and scored without ground truth
(:mod:`vasa3d.metrics.wide_pose`): mediapipe's face-detection rate, dlib's identity cosine to the
portrait per yaw, left-right consistency (a view against the mirrored opposite view) and a speckle
measure. Where the run folder holds a ``metrics.json`` (``lightning test``), its held-out-latent and
held-out-pose PSNR join the row. ``--teacher`` adds the built-in teacher's lifted head as it was
(the whole foreground matte, nearest-neighbour fill: ``MeshLiftTeacher(complete=False,
subject_only=False)``) and as it is (the subject-only matte, completed).

Targets (issue 13): mediapipe finds the face at every yaw to ±60°; identity cosine at ±45° >= 0.95;
held-out-pose PSNR >= 25 dB; held-out latents no worse. ``benchmarks/identity_pose.py`` scores real photos
of one person the same way, the reference point for the identity columns.

Portraits that ship in packages: ``bash scripts/get_portraits.sh`` (matplotlib's Grace Hopper, the
face_recognition and insightface test photos). Keep them out of tuning.

Run:  python benchmarks/wide_pose.py --portrait PHOTO --name NAME --run before=RUN --run after=RUN [--teacher]
Writes benchmarks/results/<date>-wide_pose-<name>.{md,csv,json}, <date>-wide_pose-<name>-per_yaw.md and a
labelled strip per row (JPEG, small enough to keep in the repository; the fit's own ``wide_pose.png`` is lossless).
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import sys
from datetime import date
from pathlib import Path

import imageio.v3 as iio
import torch

ROOT = Path(__file__).resolve().parents[1]
HELD_OUT = ("psnr", "psnr_observed", "psnr_completed")  # from the run's metrics.json (lightning test)


def portrait_sample(portrait: str | None, crop_size: int) -> dict[str, torch.Tensor]:
    from datamodules.portrait import default_portrait, portrait_sample as sample_of
    from vasa3d.face import analyze_portrait

    return sample_of(analyze_portrait(default_portrait() if portrait is None else portrait, crop_size=crop_size))


def teacher_rows(portrait: str | None, crop_size: int, embedder) -> dict[str, tuple]:
    """The teacher's lifted head before and after issue 13's changes: ``{label: (turntable, metrics)}``."""
    from datamodules.portrait import default_portrait
    from vasa3d.face import analyze_portrait
    from vasa3d.metrics.wide_pose import render_turntable, speckle_mask, wide_pose_metrics
    from vasa3d.teachers import MeshLiftTeacher

    analysis = analyze_portrait(default_portrait() if portrait is None else portrait, crop_size=crop_size)
    rows = {}
    for label, complete in (("teacher before (foreground matte, nearest-neighbour fill)", False),
                            ("teacher after (subject matte, completed)", True)):
        lifted = MeshLiftTeacher(complete=complete, subject_only=complete).lift(analysis)
        gaussians = lifted.head.world_gaussians(lifted.identity)
        turntable = render_turntable(gaussians, speckle_mask(lifted.head.binding), lifted.viewmat, lifted.K,
                                     crop_size)
        rows[label] = (turntable, wide_pose_metrics(turntable, lifted.image, embedder))
    return rows


def run_row(path: str, sample: dict[str, torch.Tensor], embedder) -> tuple:
    from vasa3d.runs import resolve_checkpoint
    from vasa3d.systems import SubjectFitting

    checkpoint = resolve_checkpoint(path)
    system = SubjectFitting.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    turntable, metrics = system.wide_pose(embedder=embedder, sample=sample)
    test = checkpoint.parent.parent / "metrics.json"
    held = json.loads(test.read_text()) if test.is_file() else {}
    return turntable, metrics, held


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--portrait", default=None, help="the photo the runs were fitted to (default: the astronaut)")
    parser.add_argument("--name", default="astronaut", help="the subject's name in the result files")
    parser.add_argument("--run", action="append", default=[], metavar="LABEL=RUN", help="a fitted run to score")
    parser.add_argument("--teacher", action="store_true", help="also score the teacher's lifted head")
    parser.add_argument("--note", default="", help="how the runs were made (the fit commands), added to the notes")
    parser.add_argument("--crop-size", type=int, default=256)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)

    from vasa3d.metrics import MetricResult
    from vasa3d.metrics.identity import DlibFaceEmbedder
    from vasa3d.metrics.table import write_table
    from vasa3d.metrics.wide_pose import SUMMARY_DIRECTIONS, labelled_strip, per_yaw_markdown, summary_results

    from vasa3d.errors import UserInputError, one_line

    runs = [spec.partition("=")[::2] for spec in args.run]
    for spec, (label, path) in zip(args.run, runs):
        if not label or not path:
            parser.error(f"--run {spec!r}: write LABEL=RUN")
    if not runs and not args.teacher:
        parser.error("nothing to score: give --run LABEL=RUN (a fitted run) and/or --teacher")
    embedder = DlibFaceEmbedder()
    scored: dict[str, tuple] = {}
    try:  # no portrait, no face, no checkpoint: one line
        sample = portrait_sample(args.portrait, args.crop_size)
        if args.teacher:
            scored.update({label: (*row, {}) for label, row in
                           teacher_rows(args.portrait, args.crop_size, embedder).items()})
        for label, path in runs:
            scored[label] = run_row(path, sample, embedder)
    except UserInputError as error:
        print(f"wide_pose: {one_line(str(error))}", file=sys.stderr)
        return 2

    rows, per_yaw = {}, []
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{date.today().isoformat()}-wide_pose-{args.name}"
    for label, (turntable, metrics, held) in scored.items():
        row = summary_results(metrics["summary"])
        missing = "the teacher's frames are the reference" if label.startswith("teacher") else \
            "no metrics.json in the run folder (run `lightning test ... --ckpt_path RUN`)"
        for split, name in itertools.product(("heldout_latent", "heldout_pose"), HELD_OUT):
            key = f"test/{split}/{name}"
            row[f"{split}/{name}"] = MetricResult(held[key]) if key in held else MetricResult.not_measured(missing)
        rows[label] = row
        slug = "".join(c if c.isalnum() else "_" for c in label).strip("_")
        iio.imwrite(args.out_dir / f"{stem}-{slug}.jpg", labelled_strip(turntable, metrics), quality=90)
        per_yaw.append(f"#### {label}\n\n![{label}]({stem}-{slug}.jpg)\n\n{per_yaw_markdown(metrics)}")
    directions = {**SUMMARY_DIRECTIONS, **{f"{split}/{name}": 1 for split, name in
                                           itertools.product(("heldout_latent", "heldout_pose"), HELD_OUT)}}
    notes = ("Neutral head turned in front of a frontal camera at the portrait camera's distance. found_45/60: share of "
             "views within ±45°/±60° where mediapipe finds the face; id_30/45/60: dlib identity cosine to the portrait, "
             "the worse side (empty: no face on a side); lr_psnr: view vs mirrored opposite view, dB; speckle_45/60: "
             "high-frequency energy in hair, ear and neck pixels vs the frontal view, the worse side. heldout_*/psnr: "
             "from the run's metrics.json (each run against its own teacher's frames); psnr_observed / "
             "psnr_completed: over the pixels the teacher observed in the portrait (reliability >= 0.9) / over "
             "those it completed or guessed." + (f" Runs: {args.note}" if args.note else ""))
    command = shlex.join([sys.executable.rsplit("/", 1)[-1], "benchmarks/wide_pose.py", *(argv or sys.argv[1:])])
    paths = write_table(rows, f"wide_pose-{args.name}", out_dir=args.out_dir, reference=None, command=command,
                        notes=notes, directions=directions)
    per_yaw_path = Path(paths["md"]).with_name(f"{stem}-per_yaw.md")  # the table file stays as write_table made it
    per_yaw_path.write_text(f"# {stem}: per yaw\n\n- command: `{command}`\n\n" + "\n".join(per_yaw))
    print(Path(paths["md"]).read_text() + "\n" + per_yaw_path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
