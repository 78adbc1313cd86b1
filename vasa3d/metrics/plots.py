"""PNG plots of a results table: one bar chart per metric across variants, quality vs training time.

Rows are the same ``{row name: {metric: MetricResult | float | None}}`` mapping the table writer
takes. Unmeasured cells are drawn as an empty slot labelled "not measured", never as a zero bar.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vasa3d.metrics import as_result
from vasa3d.metrics.table import metric_direction


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display here
    import matplotlib.pyplot as plt

    return plt


def _value(cell: Any) -> float | None:
    result = as_result(cell)
    if not result.measured or math.isnan(result.value) or math.isinf(result.value):
        return None
    return float(result.value)


def plot_metric_bars(
    rows: Mapping[str, Mapping[str, Any]],
    out_dir: str | os.PathLike,
    metrics: Sequence[str] | None = None,
    reference: str | None = "full",
    prefix: str = "",
) -> list[Path]:
    """One bar chart per metric, ``<out_dir>/<prefix>bar-<metric>.png``; the reference row is highlighted.

    Args:
        rows: ``{variant: {metric: value}}``.
        out_dir: folder for the PNGs (created).
        metrics: which metrics; default every metric with at least one measured value.
        reference: the row drawn in a darker colour, with a dashed line at its value.
        prefix: file-name prefix (e.g. the table's date and name).
    """
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(rows)
    all_metrics = list(dict.fromkeys(key for cells in rows.values() for key in cells))
    metrics = list(metrics) if metrics is not None else [
        m for m in all_metrics if any(_value(rows[n].get(m)) is not None for n in names)
    ]
    paths = []
    for metric in metrics:
        values = [_value(rows[name].get(metric)) for name in names]
        figure, axes = plt.subplots(figsize=(max(4.0, 0.9 * len(names) + 1.5), 3.2))
        colours = ["#1f4e79" if name == reference else "#7aa6d1" for name in names]
        heights = [value if value is not None else 0.0 for value in values]
        axes.bar(range(len(names)), heights, color=colours)
        for index, value in enumerate(values):
            label = "not measured" if value is None else f"{value:.4g}"
            axes.annotate(label, (index, heights[index]), ha="center", va="bottom", fontsize=7,
                          rotation=90 if value is None else 0)
        if reference in rows and _value(rows[reference].get(metric)) is not None:
            axes.axhline(_value(rows[reference].get(metric)), color="#1f4e79", linestyle="--", linewidth=0.8)
        direction = {1: " (higher is better)", -1: " (lower is better)", 0: ""}[metric_direction(metric)]
        axes.set_title(f"{metric}{direction}", fontsize=9)
        axes.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        figure.tight_layout()
        path = out_dir / f"{prefix}bar-{re.sub(r'[^A-Za-z0-9._-]+', '_', metric)}.png"
        figure.savefig(path, dpi=120)
        plt.close(figure)
        paths.append(path)
    return paths


def plot_quality_vs_time(
    rows: Mapping[str, Mapping[str, Any]],
    quality_metric: str,
    out_path: str | os.PathLike,
    time_metric: str = "train_time_s",
) -> Path | None:
    """Scatter of ``quality_metric`` against ``time_metric`` (seconds), one labelled point per row.

    Returns the PNG path, or None when fewer than one row has both values measured.
    """
    points = [
        (name, _value(cells.get(time_metric)), _value(cells.get(quality_metric))) for name, cells in rows.items()
    ]
    points = [(name, t, q) for name, t, q in points if t is not None and q is not None]
    if not points:
        return None
    plt = _pyplot()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(4.5, 3.5))
    axes.scatter([t for _, t, _ in points], [q for _, _, q in points], color="#1f4e79")
    for name, t, q in points:
        axes.annotate(name, (t, q), textcoords="offset points", xytext=(4, 4), fontsize=7)
    direction = {1: " ↑", -1: " ↓", 0: ""}[metric_direction(quality_metric)]
    axes.set_xlabel(f"{time_metric} (s)")
    axes.set_ylabel(f"{quality_metric}{direction}")
    axes.set_title(f"{quality_metric} vs training time", fontsize=9)
    figure.tight_layout()
    figure.savefig(out_path, dpi=120)
    plt.close(figure)
    return out_path
