"""One table writer for benchmarks and sweeps: ``<dir>/<date>-<name>.{md,csv,json}``.

Rows are named (a variant, a method); cells are :class:`MetricResult` (or plain floats / None).
The markdown starts with what is needed to reproduce the numbers: the command, the sha256 of the
resolved config, the git commit (and whether the tree was dirty), package versions and the machine.
A delta against a reference row (e.g. ``full``) is given per metric and marked better/worse by the
metric's direction.

The markdown is for reading on a laptop: no table is wider than ``MAX_MARKDOWN_COLUMNS`` (metrics are
sectioned by split, ``heldout_pose/psnr`` -> section ``heldout_pose``, and wide sections are cut), and
a cell that is not measured reads ``n/m¹``, its reason written once in a numbered list under the
tables. The CSV and JSON keep every field, unabridged, in one table; ``python -m vasa3d.metrics.table
--rewrite FILE.json`` re-renders a table's markdown from its JSON alone.
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
MAX_MARKDOWN_COLUMNS = 12  # a markdown table wider than this does not fit a laptop screen
_SUPERSCRIPT_DIGITS = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


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
    max_columns: int = MAX_MARKDOWN_COLUMNS,
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
        max_columns: the most columns of any markdown table (see :func:`render_markdown`); CSV and JSON
            keep every field in one table.
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

    markdown = render_markdown(table, meta, max_columns)  # first: a bad max_columns writes nothing
    paths["json"].write_text(json.dumps({"meta": {**meta, "config": config_text}, "rows": json_rows}, indent=2) + "\n")
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(csv_header)
        writer.writerows(csv_rows)
    paths["md"].write_text(markdown)
    return paths


def _superscript(number: int) -> str:
    return str(number).translate(_SUPERSCRIPT_DIGITS)


def _split_name(metric: str) -> tuple[str, str]:
    """``"heldout_pose/psnr"`` -> ``("heldout_pose", "psnr")``; a name without ``/`` is in group ``""``."""
    group, _, leaf = metric.rpartition("/")
    return group, leaf


def _chunks(names: list[str], per_table: int) -> list[list[str]]:
    """``names`` cut into as few runs of at most ``per_table`` as possible, of near-equal length."""
    if not names:  # a table of row names only
        return [[]]
    count = -(-len(names) // per_table)
    size = -(-len(names) // count)
    return [names[start:start + size] for start in range(0, len(names), size)]


class _Footnotes:
    """Numbers each distinct reason once, in reading order; ``marker(reason)`` is its superscript."""

    def __init__(self) -> None:
        self.numbers: dict[str, int] = {}

    def marker(self, reason: str | None) -> str:
        if not reason:
            return ""
        return _superscript(self.numbers.setdefault(reason, len(self.numbers) + 1))

    def lines(self) -> list[str]:
        return [f"- {_superscript(number)} {reason}" for reason, number in self.numbers.items()]


def _whole_row_reason(
    metrics: Mapping[str, MetricResult], metric_names: list[str], missing: MetricResult
) -> str | None:
    """The one reason when no metric of the row has a value and all share that reason, else None."""
    cells = [metrics.get(metric, missing) for metric in metric_names]
    reasons = {cell.reason for cell in cells}
    return reasons.pop() if cells and len(reasons) == 1 and all(cell.value is None for cell in cells) else None


def _markdown_table(
    metrics_shown: list[str],
    rows: Mapping[str, Mapping[str, MetricResult]],
    reference: str | None,
    directions: Mapping[str, int],
    footnotes: _Footnotes,
) -> list[str]:
    """One markdown table: a row per entry of ``rows``, a column per metric (its ``/``-last part) and, with a
    ``reference`` row present, a Δ column after each; reasons become ``footnotes`` markers."""
    arrows = {1: " ↑", -1: " ↓", 0: ""}
    missing = MetricResult.not_measured("not reported")
    reference_row = rows.get(reference) if reference else None
    header = ["variant"]
    for metric in metrics_shown:
        leaf = _split_name(metric)[1]
        header.append(f"{leaf}{arrows[int(directions.get(metric, 0))]}")
        header += [f"Δ {leaf}"] if reference_row is not None else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row_name, metrics in rows.items():
        is_reference = reference_row is not None and row_name == reference
        cells = [f"**{row_name}**" if is_reference else row_name]
        for metric in metrics_shown:
            cell = metrics.get(metric, missing)
            cells.append(("n/m" if cell.value is None else _fmt(float(cell.value))) + footnotes.marker(cell.reason))
            if reference_row is None:
                continue
            if is_reference:
                cells.append("(reference)")
                continue
            difference, mark = delta(cell, reference_row.get(metric, missing), int(directions.get(metric, 0)))
            cells.append("—" if difference is None else f"{difference:+.4g}" + (f" {mark}" if mark else ""))
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    return lines


def render_markdown(
    table: Mapping[str, Mapping[str, MetricResult]],
    meta: Mapping[str, Any],
    max_columns: int = MAX_MARKDOWN_COLUMNS,
) -> str:
    """The markdown of one table: the reproducibility header, then the metrics in tables of at most ``max_columns``.

    Metrics are grouped by what precedes their last ``/`` (a split: ``heldout_pose/psnr`` -> section
    ``heldout_pose``, column ``psnr``), sections in order of first appearance; names without ``/`` form
    the section "overall" when there are others. A section wider than ``max_columns`` (the row-name
    column and, with a reference row, a Δ column per metric included) is cut into several tables of
    near-equal width. A cell with a reason (not measured: ``n/m``; NaN; a note on a value) carries a
    superscript number; each reason is written once, in the numbered list under the tables. A row
    (other than the reference) with no value in any column, all for one reason, is named once under
    the tables rather than shown.

    Args:
        table: ``{row name: {metric: MetricResult}}``, in display order; a missing cell is "not reported".
        meta: the ``meta`` of the table's JSON (``name``, ``date``, ``command``, ``config_sha256``, ``git``,
            ``versions``, ``machine``, ``reference``, ``directions``, ``notes``).
        max_columns: the most columns a markdown table may have (at least 3).
    """
    if max_columns < 3:
        raise ValueError(f"max_columns={max_columns}: a table needs the row name, a metric and its Δ; use at least 3")
    missing = MetricResult.not_measured("not reported")
    reference = meta.get("reference") if meta.get("reference") in table else None
    metric_names = list(dict.fromkeys(key for metrics in table.values() for key in metrics))
    groups: dict[str, list[str]] = {}
    for metric in metric_names:
        groups.setdefault(_split_name(metric)[0], []).append(metric)
    groups = groups or {"": []}
    sectioned = len(groups) > 1 or bool(next(iter(groups)))
    per_table = (max_columns - 1) // (2 if reference is not None else 1)
    # A row with no value in any column for one reason (a method not fitted, a failed run) is named once
    # under the tables instead of filling every table with n/m; the reference row always stays.
    blank = {row_name: _whole_row_reason(metrics, metric_names, missing) for row_name, metrics in table.items()
             if row_name != reference}
    blank = {row_name: reason for row_name, reason in blank.items() if reason is not None}
    shown = {row_name: metrics for row_name, metrics in table.items() if row_name not in blank}
    if not shown:
        shown, blank = dict(table), {}

    footnotes = _Footnotes()
    body: list[str] = []
    for group, members in groups.items():
        body += ["", f"## {group or 'overall'}"] if sectioned else []
        for chunk in _chunks(members, per_table):
            body += ["", *_markdown_table(chunk, shown, reference, meta.get("directions") or {}, footnotes)]
    # numbered after the cells' reasons, as the line naming these rows comes after the tables
    names = ", ".join(f"{row_name.replace('|', '/')}{footnotes.marker(reason)}" for row_name, reason in blank.items())
    if footnotes.numbers:
        body += ["", "## reasons" if sectioned else "Reasons:", ""]
        body += [f"Rows with no value in any column: {names}.", ""] if blank else []
        body += footnotes.lines()

    git = meta["git"]
    dirty = {True: " (dirty: uncommitted changes)", False: "", None: ""}[git.get("dirty")]
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    machine = meta["machine"]
    legend = "- ↑ higher is better, ↓ lower is better"
    if reference is not None:
        legend += f"; Δ is the difference to the `{reference}` row, marked better/worse"
    if footnotes.numbers:
        legend += "; n/m: not measured; a superscript number points to its reason under the tables"
    lines = [
        f"# {meta['name']}",
        "",
        f"- date: {meta['date']}",
        f"- command: `{meta['command']}`",
        f"- config sha256: `{meta['config_sha256']}`",
        f"- git: `{git['commit']}`{dirty}",
        f"- versions: {versions}",
        f"- machine: {machine['cpus']} CPUs, GPU: {machine['gpu']} ({machine['platform']})",
        legend,
    ]
    if meta.get("notes"):
        lines += ["", meta["notes"]]
    return "\n".join(lines + body) + "\n"


def read_table(path: str | os.PathLike) -> tuple[dict[str, dict[str, MetricResult]], dict[str, Any]]:
    """Read a table's ``.json`` back: ``({row: {metric: MetricResult}}, meta)``."""
    data = json.loads(Path(path).read_text())
    rows = {row["name"]: {k: MetricResult.from_dict(v) for k, v in row["metrics"].items()} for row in data["rows"]}
    return rows, data["meta"]


def rewrite_markdown(json_path: str | os.PathLike, max_columns: int = MAX_MARKDOWN_COLUMNS) -> Path:
    """Re-render the ``.md`` beside a table's ``.json`` from the JSON alone (the CSV and JSON are not touched).

    Args:
        json_path: a ``<date>-<name>.json`` written by :func:`write_table`.
        max_columns: as in :func:`render_markdown`.

    Returns:
        the path of the ``.md`` written.
    """
    json_path = Path(json_path)
    data = json.loads(json_path.read_text())
    if not (isinstance(data, dict) and isinstance(data.get("meta"), dict) and isinstance(data.get("rows"), list)
            and all(isinstance(row, dict) and "metrics" in row for row in data["rows"])):
        raise ValueError(f"{json_path}: not a table written by write_table (needs 'meta' and 'rows' with 'metrics'); "
                         "its markdown has another writer")
    rows, meta = read_table(json_path)
    md_path = json_path.with_suffix(".md")
    md_path.write_text(render_markdown(rows, meta, max_columns))
    return md_path


def main(argv: list[str] | None = None) -> int:
    """``python -m vasa3d.metrics.table --rewrite FILE.json [FILE.json ...] [--max-columns N]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m vasa3d.metrics.table", description=main.__doc__)
    parser.add_argument("--rewrite", type=Path, nargs="+", required=True, metavar="FILE.json",
                        help="tables whose .md is re-rendered from the .json beside it")
    parser.add_argument("--max-columns", type=int, default=MAX_MARKDOWN_COLUMNS, help="the widest markdown table")
    args = parser.parse_args(argv)
    failed = 0
    for json_path in args.rewrite:  # every file is tried; a glob may include JSON of other writers
        try:
            print(rewrite_markdown(json_path, args.max_columns))
        except (OSError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
