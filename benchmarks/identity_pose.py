"""How far dlib's identity cosine falls with head pose on real photos of one person: the reference point
for the identity columns of ``benchmarks/wide_pose.py``.

A fitted head's turned views are scored by their dlib cosine to the frontal portrait (issue 13: at least
0.95 at ±45°). This benchmark scores real photos the same way: each photo is analysed as a portrait
(mediapipe landmarks, the same aligned crop, its head pose from the fitted camera) and compared with the
first photo, the reference. A photo of another person gives the scale. Photos that ship in packages:
``bash scripts/get_portraits.sh`` (face_recognition 1.3.0's test photos: Barack Obama at several poses,
and Joe Biden).

Run:  python benchmarks/identity_pose.py [REFERENCE PHOTO ...] [--other PHOTO ...]
Writes benchmarks/results/<date>-identity_pose.{md,csv,json}.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PORTRAITS = Path(os.environ.get("VASA3D_PORTRAITS", Path.home() / ".cache" / "vasa3d" / "portraits"))
SAME = ("obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg", "obama_partial_face2.jpg")
OTHER = ("biden.jpg",)


def score(photos: list[Path], others: list[Path], crop_size: int) -> dict[str, dict]:
    """``{photo name: {yaw, pitch, identity_cos, person}}``, cosines to ``photos[0]``'s aligned crop."""
    import torch

    from vasa3d.errors import UserInputError
    from vasa3d.face import analyze_portrait
    from vasa3d.face.analysis import head_pose_from_viewmat
    from vasa3d.metrics import MetricResult
    from vasa3d.metrics.identity import DlibFaceEmbedder, _similarities

    embedder = DlibFaceEmbedder()
    rows, reference = {}, None
    for path, person in [(p, "same") for p in photos] + [(p, "other") for p in others]:
        analysis = analyze_portrait(path, crop_size=crop_size)
        embedding = embedder.embed(torch.from_numpy(analysis.crop).permute(2, 0, 1).float())
        if reference is None:
            if embedding is None:
                raise UserInputError(f"dlib finds no face in the reference photo {path}: choose another reference")
            reference = embedding
        yaw, pitch, _ = head_pose_from_viewmat(analysis.viewmat)
        (cosine,), _ = _similarities([embedding], reference)
        rows[f"{path.name} ({'reference' if not rows else person + ' person'})"] = {
            "yaw_deg": MetricResult(yaw), "pitch_deg": MetricResult(pitch),
            "identity_cos": MetricResult(cosine) if embedding is not None
            else MetricResult.not_measured("dlib finds no face in the aligned crop")}
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photos", nargs="*", type=Path,
                        help=f"photos of one person, the first is the reference (default: {', '.join(SAME)} "
                             f"from {PORTRAITS})")
    parser.add_argument("--other", nargs="*", type=Path, default=None,
                        help=f"photos of other people, for scale (default: {', '.join(OTHER)})")
    parser.add_argument("--name", default="identity_pose", help="the result files' name")
    parser.add_argument("--crop-size", type=int, default=256)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    photos = args.photos or [PORTRAITS / name for name in SAME]
    others = [PORTRAITS / name for name in OTHER] if args.other is None and not args.photos else (args.other or [])
    missing = [str(p) for p in photos + others if not p.is_file()]
    if missing:
        print(f"identity_pose: missing {', '.join(missing)} (run `bash scripts/get_portraits.sh`)", file=sys.stderr)
        return 2

    from vasa3d.errors import UserInputError, one_line
    from vasa3d.metrics.table import write_table

    try:
        rows = score(photos, others, args.crop_size)
    except UserInputError as error:
        print(f"identity_pose: {one_line(str(error))}", file=sys.stderr)
        return 2
    notes = ("Each photo analysed as a portrait (mediapipe landmarks, the aligned crop our fits use, the head pose of "
             "its fitted camera: yaw > 0 turns the face to the subject's left); identity_cos: dlib's identity cosine "
             "of its crop to the reference's crop, as benchmarks/wide_pose.py scores a fitted head's turned views "
             "against the portrait.")
    command = shlex.join([sys.executable.rsplit("/", 1)[-1], "benchmarks/identity_pose.py", *(argv or sys.argv[1:])])
    paths = write_table(rows, args.name, out_dir=args.out_dir, reference=None, command=command, notes=notes,
                        directions={"yaw_deg": 0, "pitch_deg": 0, "identity_cos": 1})
    print(Path(paths["md"]).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
