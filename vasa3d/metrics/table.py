"""One table writer for benchmarks and sweeps: ``<dir>/<date>-<name>.{md,csv,json}``.

Rows are named (a variant, a method); cells are :class:`MetricResult` (or plain floats / None).
The markdown starts with what is needed to reproduce the numbers: the command, the sha256 of the
resolved config, the git commit (and whether the tree was dirty), package versions and the machine.
A delta against a reference row (e.g. ``full``) is given per metric and marked better/worse by the
metric's direction.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import math
import os
import platform
import re
import subprocess
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from vasa3d.metrics import MetricResult, _json_float, as_result

HIGHER_IS_BETTER = ("psnr", "ssim", "ms_ssim", "identity_cos", "arcface_cos", "mouth_corr", "corr", "lse_c", "av_confidence")
LOWER_IS_BETTER = (
    "lpips", "fid", "kid", "lmd", "lip", "identity_l2", "lse_d", "loss", "error", "time", "seconds", "mse", "l1",
)  # fmt: skip
VERSION_PACKAGES = ("torch", "vasa3d", "gsplat", "lightning", "mediapipe", "torchmetrics")


def metric_direction(name: str, directions: Mapping[str, int] | None = None) -> int:
    """+1 if higher is better, -1 if lower is better, 0 if unknown.

    Matches a known key as a whole ``_``-separated token run in the last ``/``-separated part of the
    name (``val/psnr`` -> ``psnr``; ``psnr_masked``, ``lmd_iod``, ``train_time_s``). ``directions`` overrides.
    """
    if directions and name in directions:
        return int(directions[name])
    leaf = name.rsplit("/", 1)[-1].lower()
    for table, sign in ((HIGHER_IS_BETTER, 1), (LOWER_IS_BETTER, -1)):
        for key in table:
            if f"_{key}_" in f"_{leaf}_":
                return sign
    return 0


def config_hash(config_text: str | None) -> str:
    """sha256 of the resolved config text, or ``"n/a"``."""
    return hashlib.sha256(config_text.encode()).hexdigest() if config_text is not None else "n/a"


def git_state(repo: str | os.PathLike | None = None) -> dict[str, Any]:
    """``{"commit": sha or "unknown", "dirty": bool | None}`` of the repository holding ``repo`` (default: vasa3d's)."""
    repo = Path(repo) if repo else Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True, text=True, timeout=10, check=True).stdout
        return {"commit": commit, "dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


def environment_info() -> dict[str, Any]:
    """Versions (python and ``VERSION_PACKAGES``) and the machine (CPU count, GPU name or none)."""
    versions = {"python": platform.python_version()}
    for package in VERSION_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    gpu = "none"
    if "torch" in sys.modules or versions["torch"] != "not installed":
        import torch

        if torch.cuda.is_available():
            gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    machine = {"cpus": os.cpu_count(), "gpu": gpu, "platform": platform.platform()}
    return {"versions": versions, "machine": machine}


def _fmt(value: float, digits: int = 4) -> str:
    return "inf" if math.isinf(value) else f"{value:.{digits}g}"


def delta(value: MetricResult, reference: MetricResult, direction: int) -> tuple[float | None, str]:
    """``(value - reference, "better" | "worse" | "same" | "")``; ``(None, "")`` if either is unmeasured/NaN."""
    if not (value.measured and reference.measured):
        return None, ""
    difference = float(value.value) - float(reference.value)
    if math.isnan(difference):
        return None, ""
    if direction == 0:
        return difference, ""
    if difference == 0:
        return difference, "same"
    return difference, "better" if difference * direction > 0 else "worse"


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "table"


def write_table(
    rows: Mapping[str, Mapping[str, Any]],
    name: str,
    out_dir: str | os.PathLike = "benchmarks/results",
    reference: str | None = "full",
    command: str | None = None,
    config_text: str | None = None,
    date: str | None = None,
    directions: Mapping[str, int] | None = None,
    notes: str | None = None,
) -> dict[str, Path]:
    """Write one table as markdown, CSV and JSON; returns ``{"md": path, "csv": path, "json": path}``.

    Args:
        rows: ``{row name: {metric name: MetricResult | float | None}}``, in display order.
        name: the table's name, in the file names ``<date>-<name>.*``.
        out_dir: the folder (created if needed).
        reference: the row the deltas are taken against; None or absent from ``rows`` = no deltas.
        command: the command that produced the numbers; default is this process's ``sys.argv``.
        config_text: the resolved config, hashed into the header (and kept whole in the JSON).
        date: ``YYYY-MM-DD``; default today.
        directions: ``{metric: +1 | -1}`` overriding :func:`metric_direction`.
        notes: a free-text paragraph under the header.
    """
    date = date or dt.date.today().isoformat()
    command = command or " ".join([Path(sys.executable).name, *sys.argv])
    table = {name_: {key: as_result(cell) for key, cell in metrics.items()} for name_, metrics in rows.items()}
    metric_names = list(dict.fromkeys(key for metrics in table.values() for key in metrics))
    missing = MetricResult.not_measured("not reported")
    reference_row = table.get(reference) if reference else None
    meta = {
        "name": name, "date": date, "command": command, "config_sha256": config_hash(config_text),
        "git": git_state(), **environment_info(), "reference": reference if reference_row is not None else None,
        "directions": {m: metric_direction(m, directions) for m in metric_names}, "notes": notes,
    }  # fmt: skip

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{date}-{_safe_name(name)}"
    paths = {"md": stem.with_suffix(".md"), "csv": stem.with_suffix(".csv"), "json": stem.with_suffix(".json")}

    json_rows = []
    csv_header = ["name"]
    for metric in metric_names:
        csv_header += [metric, f"{metric}_reason"] + ([f"{metric}_delta", f"{metric}_vs_ref"] if reference_row else [])
    csv_rows = []
    for row_name, metrics in table.items():
        json_row: dict[str, Any] = {"name": row_name, "metrics": {}}
        csv_row: list[Any] = [row_name]
        for metric in metric_names:
            cell = metrics.get(metric, missing)
            entry = cell.to_dict()
            csv_row += ["" if cell.value is None else _json_float(cell.value), cell.reason or ""]
            if reference_row is not None:
                difference, mark = delta(cell, reference_row.get(metric, missing), meta["directions"][metric])
                entry["delta"], entry["vs_reference"] = _json_float(difference), mark or None
                csv_row += ["" if difference is None else difference, mark]
            json_row["metrics"][metric] = entry
        json_rows.append(json_row)
        csv_rows.append(csv_row)

    paths["json"].write_text(json.dumps({"meta": {**meta, "config": config_text}, "rows": json_rows}, indent=2) + "\n")
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(csv_header)
        writer.writerows(csv_rows)
    paths["md"].write_text(_markdown(table, metric_names, meta, reference_row, missing))
    return paths


def _markdown(table: dict, metric_names: list[str], meta: dict, reference_row: dict | None, missing: MetricResult) -> str:
    arrows = {1: " ↑", -1: " ↓", 0: ""}
    git = meta["git"]
    dirty = {True: " (dirty: uncommitted changes)", False: "", None: ""}[git["dirty"]]
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    machine = meta["machine"]
    lines = [
        f"# {meta['name']}",
        "",
        f"- date: {meta['date']}",
        f"- command: `{meta['command']}`",
        f"- config sha256: `{meta['config_sha256']}`",
        f"- git: `{git['commit']}`{dirty}",
        f"- versions: {versions}",
        f"- machine: {machine['cpus']} CPUs, GPU: {machine['gpu']} ({machine['platform']})",
        "- ↑ higher is better, ↓ lower is better"
        + (f"; Δ is the difference to the `{meta['reference']}` row, marked better/worse" if reference_row else ""),
    ]
    if meta.get("notes"):
        lines += ["", meta["notes"]]
    header = ["variant"]
    for metric in metric_names:
        header.append(f"{metric}{arrows[meta['directions'][metric]]}")
        if reference_row is not None:
            header.append(f"Δ {metric}")
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row_name, metrics in table.items():
        cells = [f"**{row_name}**" if reference_row is not None and metrics is reference_row else row_name]
        for metric in metric_names:
            cell = metrics.get(metric, missing)
            cells.append(cell.format())
            if reference_row is not None:
                if metrics is reference_row:
                    cells.append("(reference)")
                    continue
                difference, mark = delta(cell, reference_row.get(metric, missing), meta["directions"][metric])
                cells.append("—" if difference is None else f"{difference:+.4g}" + (f" {mark}" if mark else ""))
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def read_table(path: str | os.PathLike) -> tuple[dict[str, dict[str, MetricResult]], dict[str, Any]]:
    """Read a table's ``.json`` back: ``({row: {metric: MetricResult}}, meta)``."""
    data = json.loads(Path(path).read_text())
    rows = {row["name"]: {k: MetricResult.from_dict(v) for k, v in row["metrics"].items()} for row in data["rows"]}
    return rows, data["meta"]
