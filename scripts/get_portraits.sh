#!/usr/bin/env bash
# Real photographs that ship inside Python packages, for benchmarks/wide_pose.py (evaluation only: never tune on them).
#
#   bash scripts/get_portraits.sh [DIR]      (default DIR: ${VASA3D_PORTRAITS:-~/.cache/vasa3d/portraits})
#
# Installs nothing: the source archives are fetched with `pip download --no-deps` (insightface publishes only its
# source archive; face_recognition's wheel leaves its test photos out, hence --no-binary) and only the photos are
# unpacked. Re-running skips the photos already there.
#   grace_hopper.jpg   matplotlib's sample data (already in the venv: mpl-data/sample_data), a frontal studio portrait
#   obama.jpg          face_recognition 1.3.0's test images (tests/test_images), an official portrait
#   obama2.jpg, obama3.jpg, obama_partial_face.jpg, obama_partial_face2.jpg, biden.jpg
#                      the same package's other photos: one person at other poses, and another person, for
#                      benchmarks/identity_pose.py (how far dlib's identity cosine falls with pose on real photos)
#   t1.jpg             insightface 0.7.3's sample (insightface/data/images), a group photo: the largest face is the
#                      subject, the people beside it test the subject-only matte
set -euo pipefail

DIR="${1:-${VASA3D_PORTRAITS:-$HOME/.cache/vasa3d/portraits}}"
PYTHON="${PYTHON:-.venv/bin/python}"
mkdir -p "$DIR"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

if [ ! -f "$DIR/grace_hopper.jpg" ]; then
  "$PYTHON" - "$DIR" <<'PY'
import shutil, sys
from pathlib import Path
import matplotlib
shutil.copy(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg", Path(sys.argv[1]) / "grace_hopper.jpg")
PY
fi
fetch() {  # fetch PACKAGE==VERSION MEMBER NAME [PIP FLAGS...]
  [ -f "$DIR/$3" ] && return
  ls "$TMP"/*"${1%%==*}"*.tar.gz >/dev/null 2>&1 ||
    "$PYTHON" -m pip download --quiet --no-deps "${@:4}" "$1" -d "$TMP" >/dev/null
  tar -xzf "$TMP"/*"${1%%==*}"*.tar.gz -C "$TMP" --wildcards "*/$2"
  cp "$(find "$TMP" -path "*/$2" | head -n 1)" "$DIR/$3"
}
for photo in obama.jpg obama2.jpg obama3.jpg obama_partial_face.jpg obama_partial_face2.jpg biden.jpg; do
  fetch face_recognition==1.3.0 "tests/test_images/$photo" "$photo" --no-binary :all:
done
fetch insightface==0.7.3 insightface/data/images/t1.jpg t1.jpg
ls -l "$DIR"
