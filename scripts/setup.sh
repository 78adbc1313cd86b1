#!/usr/bin/env bash
# Install vasa3d and everything it needs into ./.venv (override with VASA3D_VENV).
# Idempotent: a second run only checks that the install matches setup.cfg, in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
venv=${VASA3D_VENV:-.venv}
stamp="$venv/.vasa3d-install-stamp"
want=$(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$venv/bin/python" -c "import vasa3d" 2>/dev/null; then
  exit 0
fi
echo "vasa3d: installing into $venv (first run: about 3-4 minutes, ~7 GB with torch)" >&2
start=$(date +%s)
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[dev]"
"$venv/bin/python" -m pip check
echo "$want" >"$stamp"
echo "vasa3d: installed in $(( $(date +%s) - start )) s; activate with: source $venv/bin/activate" >&2
