"""The table writer: md/csv/json contents, round trip, delta signs by metric direction; plots."""

import csv
import hashlib
import json
import math

import pytest

from vasa3d.metrics import MetricResult
from vasa3d.metrics.plots import plot_metric_bars, plot_quality_vs_time
from vasa3d.metrics.table import delta, metric_direction, read_table, write_table


def _rows():
    return {
        "full": {"psnr": 30.0, "lpips": MetricResult(None, "LPIPS backbone weights path not configured"),
                 "lmd_iod": 0.05, "identity_cos": MetricResult(0.9), "train_time_s": 100.0},
        "no_densify": {"psnr": 29.5, "lpips": MetricResult(None, "LPIPS backbone weights path not configured"),
                       "lmd_iod": 0.04, "identity_cos": MetricResult(float("nan"), "no face found in any of 4 frames"),
                       "train_time_s": 80.0},
        "no_stage1": {"psnr": 31.0, "lmd_iod": 0.06, "train_time_s": 120.0},
    }


def test_directions():
    assert metric_direction("psnr") == 1 and metric_direction("test/held_out/ssim") == 1
    assert metric_direction("lpips") == -1 and metric_direction("fid") == -1 and metric_direction("lmd_iod") == -1
    assert metric_direction("identity_cos") == 1 and metric_direction("identity_l2") == -1
    assert metric_direction("mouth_corr") == 1 and metric_direction("train_time_s") == -1
    assert metric_direction("num_gaussians") == 0
    assert metric_direction("num_gaussians", {"num_gaussians": -1}) == -1


def test_delta_marks_better_and_worse_by_direction():
    assert delta(MetricResult(31.0), MetricResult(30.0), 1) == (1.0, "better")
    assert delta(MetricResult(0.06), MetricResult(0.05), -1)[1] == "worse"
    assert delta(MetricResult(None, "x"), MetricResult(1.0), 1) == (None, "")
    assert delta(MetricResult(float("nan")), MetricResult(1.0), 1) == (None, "")


def test_write_table_md_csv_json(tmp_path):
    paths = write_table(_rows(), "ablation test", tmp_path, reference="full", command="vasa3d sweep --config s.yaml",
                        config_text="a: 1\n", date="2026-11-30")
    assert paths["md"].name == "2026-11-30-ablation_test.md"
    md = paths["md"].read_text()
    for needle in ("command: `vasa3d sweep --config s.yaml`", "config sha256: `", "git: `", "versions: python",
                   "torch", "mediapipe", "CPUs, GPU:", "not measured (LPIPS backbone weights path not configured)",
                   "psnr ↑", "lpips ↓", "Δ psnr", "-0.5 worse", "+1 better", "(reference)", "nan (no face found"):
        assert needle in md, needle
    assert "-0.01 better" in md  # lmd_iod dropped: lower is better
    assert "not measured (not reported)" in md  # no_stage1 has no lpips column

    with paths["csv"].open() as handle:
        table = list(csv.DictReader(handle))
    assert [row["name"] for row in table] == ["full", "no_densify", "no_stage1"]
    assert float(table[1]["psnr"]) == 29.5 and table[1]["psnr_vs_ref"] == "worse"
    assert float(table[1]["psnr_delta"]) == pytest.approx(-0.5)
    assert table[0]["lpips"] == "" and "not configured" in table[0]["lpips_reason"]

    rows, meta = read_table(paths["json"])
    assert meta["reference"] == "full" and meta["config"] == "a: 1\n" and meta["directions"]["lpips"] == -1
    assert meta["config_sha256"] == hashlib.sha256(b"a: 1\n").hexdigest()
    assert meta["config_sha256"] in md
    assert rows["no_densify"]["psnr"].value == 29.5
    assert math.isnan(rows["no_densify"]["identity_cos"].value)
    assert rows["full"]["lpips"].value is None and "not configured" in rows["full"]["lpips"].reason
    data = json.loads(paths["json"].read_text())
    assert data["rows"][2]["metrics"]["psnr"]["vs_reference"] == "better"


def test_table_without_reference_has_no_delta(tmp_path):
    paths = write_table({"a": {"psnr": 1.0}}, "plain", tmp_path, reference="full", date="2026-01-01")
    assert "Δ" not in paths["md"].read_text().split("\n| ")[1]
    assert "psnr_delta" not in paths["csv"].read_text()


def test_plots_write_pngs(tmp_path):
    rows = _rows()
    bars = plot_metric_bars(rows, tmp_path)
    assert {p.name for p in bars} == {"bar-psnr.png", "bar-lmd_iod.png", "bar-identity_cos.png", "bar-train_time_s.png"}
    scatter = plot_quality_vs_time(rows, "psnr", tmp_path / "q.png")
    assert scatter.read_bytes()[:4] == b"\x89PNG"
    assert plot_quality_vs_time(rows, "lpips", tmp_path / "none.png") is None
