"""benchmarks/identity_pose.py: real photos of one person scored as turned views are (the identity reference)."""

import importlib.util
import json
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from skimage import data

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("identity_pose", ROOT / "benchmarks" / "identity_pose.py")
identity_pose = importlib.util.module_from_spec(spec)
sys.modules["identity_pose"] = identity_pose
spec.loader.exec_module(identity_pose)


def test_photos_of_one_person_are_scored_against_the_first(tmp_path):
    portrait = data.astronaut()
    iio.imwrite(tmp_path / "front.png", portrait)
    iio.imwrite(tmp_path / "mirrored.png", np.ascontiguousarray(portrait[:, ::-1]))
    iio.imwrite(tmp_path / "other.png", data.camera()[..., None].repeat(3, -1)[::-1].copy())
    code = identity_pose.main([str(tmp_path / "front.png"), str(tmp_path / "mirrored.png"), "--other",
                               "--name", "t", "--out-dir", str(tmp_path / "out")])
    assert code == 0
    table = json.loads(next((tmp_path / "out").glob("*-t.json")).read_text())
    rows = {row["name"]: row["metrics"] for row in table["rows"]}
    front, mirrored = rows["front.png (reference)"], rows["mirrored.png (same person)"]
    assert _value(front["identity_cos"]) > 0.999  # the reference against itself
    assert 0.9 < _value(mirrored["identity_cos"]) < 0.999  # the same face, seen as its mirror image
    assert abs(_value(front["yaw_deg"]) + _value(mirrored["yaw_deg"])) < 1.5  # a mirror turns the head the other way


def test_missing_photos_end_in_one_line(tmp_path, capsys):
    assert identity_pose.main([str(tmp_path / "nobody.jpg")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nobody.jpg" in err and "get_portraits.sh" in err


def test_a_reference_without_a_face_ends_in_one_line(tmp_path, capsys):
    iio.imwrite(tmp_path / "blank.png", np.full((256, 256, 3), 200, np.uint8))
    assert identity_pose.main([str(tmp_path / "blank.png"), "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("identity_pose: ")


def _value(cell: dict) -> float:
    return cell["value"]
