"""The table writer: md/csv/json contents, round trip, delta signs by metric direction; readable markdown; plots."""

import csv
import hashlib
import json
import math
import re
from pathlib import Path

import pytest

from vasa3d.metrics import MetricResult
from vasa3d.metrics.plots import plot_metric_bars, plot_quality_vs_time
from vasa3d.metrics.table import (MAX_MARKDOWN_COLUMNS, delta, main, metric_direction, read_table, render_markdown,
                                  rewrite_markdown, write_table)

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
SUPERSCRIPT = "⁰¹²³⁴⁵⁶⁷⁸⁹"


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
                   "torch", "mediapipe", "CPUs, GPU:", "psnr ↑", "lpips ↓", "Δ psnr", "-0.5 worse", "+1 better",
                   "(reference)"):
        assert needle in md, needle
    assert "-0.01 better" in md  # lmd_iod dropped: lower is better
    notes = _footnotes(md)
    assert set(notes.values()) == {"LPIPS backbone weights path not configured", "no face found in any of 4 frames",
                                   "not reported"}  # no_stage1 has no lpips column
    cells = _cells(md)
    assert notes[_marker(cells["full"]["lpips"], "n/m")] == "LPIPS backbone weights path not configured"
    assert notes[_marker(cells["no_densify"]["identity_cos"], "nan")] == "no face found in any of 4 frames"
    assert notes[_marker(cells["no_stage1"]["lpips"], "n/m")] == "not reported"

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


def _sections(md: str) -> list[tuple[str, list[list[str]]]]:
    """``(section, table)`` for each markdown table of ``md``: the ``## `` heading above it ("" if none), and its
    rows of cell texts (the ``|---|`` line left out)."""
    tables, current, section = [], [], ""
    for line in [*md.splitlines(), ""]:
        if line.startswith("## "):
            section = line[3:]
        if line.startswith("|"):
            if not re.fullmatch(r"\|(:?-+:?\|)+", line):
                current.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif current:
            tables.append((section, current))
            current = []
    return tables


def _tables(md: str) -> list[list[list[str]]]:
    """The markdown tables of ``md``, each a list of rows of cell texts."""
    return [table for _, table in _sections(md)]


def _cells(md: str) -> dict[str, dict[str, str]]:
    """``{row name: {metric: cell}}`` over every table of ``md``; the metric is ``<section>/<column>`` under a
    ``## <section>`` heading other than "overall" (Δ columns: ``Δ <section>/<column>``), arrows removed."""
    cells: dict[str, dict[str, str]] = {}
    for section, (header, *rows) in _sections(md):
        prefix = "" if section in ("", "overall") else f"{section}/"
        for row in rows:
            name = row[0].strip("*")
            for column, cell in zip(header[1:], row[1:]):
                column = column.removesuffix(" ↑").removesuffix(" ↓")
                key = f"Δ {prefix}{column[2:]}" if column.startswith("Δ ") else f"{prefix}{column}"
                cells.setdefault(name, {})[key] = cell
    return cells


def _footnotes(md: str) -> dict[str, str]:
    """``{superscript: reason}`` from the numbered list under the tables; fails on a number given twice."""
    notes: dict[str, str] = {}
    for number, reason in re.findall(rf"^- ([{SUPERSCRIPT}]+) (.+)$", md, flags=re.MULTILINE):
        assert number not in notes, f"footnote {number} written twice"
        notes[number] = reason
    return notes


def _marker(cell: str, value: str) -> str:
    """The superscript of a cell that reads ``value`` followed by it (``n/m²`` -> ``²``)."""
    match = re.fullmatch(rf"{re.escape(value)}([{SUPERSCRIPT}]+)", cell)
    assert match, f"{cell!r} is not {value} with a footnote mark"
    return match.group(1)


def _wide_rows(splits: int = 3, metrics: int = 11) -> dict[str, dict[str, MetricResult | float]]:
    """A bench-like table: ``splits`` x ``metrics`` columns, a column-wide and a row-wide reason, a missing method."""
    names = [f"split{s}/metric{m}_psnr" for s in range(splits) for m in range(metrics)] + ["fit_time_s"]
    lpips = "LPIPS backbone weights path not configured (pass lpips_backbone or set $VASA3D_LPIPS)"
    rows: dict[str, dict[str, MetricResult | float]] = {}
    for index, method in enumerate(["full", "static", "teacher"]):
        rows[method] = {name: float(index + position) for position, name in enumerate(names)}
        for split in range(splits):
            rows[method][f"split{split}/metric3_psnr"] = MetricResult.not_measured(lpips)
    rows["teacher"]["split0/metric0_psnr"] = MetricResult.not_measured("the reference: the teacher's own frames")
    rows["unfitted"] = {name: MetricResult.not_measured("no checkpoint at a/last.ckpt; fit it first") for name in names}
    return rows


@pytest.mark.parametrize("reference", ["full", None])
def test_every_markdown_table_fits_and_each_reason_is_written_once(tmp_path, reference):
    rows = _wide_rows()
    paths = write_table(rows, "wide", tmp_path, reference=reference, date="2026-01-01")
    md = paths["md"].read_text()
    tables = _tables(md)
    assert len(tables) > 3
    for table in tables:
        assert all(len(row) == len(table[0]) for row in table)
        assert 2 <= len(table[0]) <= MAX_MARKDOWN_COLUMNS, table[0]
    assert "## split0" in md and "## split2" in md and "## overall" in md
    cells = _cells(md)
    shown = {header for row in cells.values() for header in row if not header.startswith("Δ ")}
    assert shown == set(rows["full"])  # every metric is in some table, under its split's section
    notes = _footnotes(md)
    reasons = {cell.reason for row in rows.values() for cell in row.values() if isinstance(cell, MetricResult)}
    assert sorted(notes.values()) == sorted(reasons)
    for reason in reasons:
        assert md.count(reason) == 1, reason  # never repeated in the cells
    assert "not measured (" not in md
    lpips_mark = _marker(cells["full"]["split2/metric3_psnr"], "n/m")
    assert notes[lpips_mark].startswith("LPIPS")
    assert _marker(cells["static"]["split0/metric3_psnr"], "n/m") == lpips_mark  # one number per reason, any table
    assert notes[_marker(cells["teacher"]["split0/metric0_psnr"], "n/m")] == "the reference: the teacher's own frames"
    assert cells["static"]["split1/metric5_psnr"] == "17" and cells["teacher"]["fit_time_s"] == "35"
    # the method with no value anywhere is named once under the tables, with its reason, not as a row of n/m
    assert "unfitted" not in cells
    assert re.search(rf"Rows with no value in any column: unfitted([{SUPERSCRIPT}]+)\.", md)
    json_rows, _ = read_table(paths["json"])
    assert json_rows["unfitted"]["fit_time_s"].reason.startswith("no checkpoint")  # the JSON keeps every field
    with paths["csv"].open() as handle:
        header = next(csv.reader(handle))
    assert len(header) == 1 + (3 * 11 + 1) * (4 if reference else 2)


def test_footnote_numbers_past_nine_are_multi_digit_superscripts(tmp_path):
    rows = {"a": {f"m{index}": MetricResult.not_measured(f"reason number {index}") for index in range(12)},
            "b": {f"m{index}": 1.0 for index in range(12)}}
    md = write_table(rows, "many", tmp_path, reference=None, date="2026-01-01")["md"].read_text()
    notes = _footnotes(md)
    assert notes["¹²"] == "reason number 11" and notes["¹"] == "reason number 0"
    assert _cells(md)["a"]["m10"] == "n/m¹¹"


def test_max_columns_is_honoured_and_checked(tmp_path):
    rows = _wide_rows(splits=1, metrics=7)
    table, meta = read_table(write_table(rows, "w", tmp_path, date="2026-01-01")["json"])
    for limit, widest in ((3, 3), (5, 5), (8, 7), (16, 15)):  # with Δ columns: 1 + 2k columns
        md = render_markdown(table, meta, max_columns=limit)
        assert max(len(table[0]) for table in _tables(md)) == widest
    with pytest.raises(ValueError, match="max_columns=2"):
        write_table(rows, "narrow", tmp_path, date="2026-01-01", max_columns=2)
    assert not list(tmp_path.glob("*-narrow.*"))  # nothing half-written


def test_rewrite_from_json_reproduces_the_markdown_and_leaves_csv_json_alone(tmp_path):
    paths = write_table(_wide_rows(), "wide", tmp_path, reference="full", command="x", date="2026-01-01",
                        notes="a note")
    written = {suffix: path.read_bytes() for suffix, path in paths.items()}
    paths["md"].write_text("stale\n")
    assert main(["--rewrite", str(paths["json"])]) == 0
    assert {suffix: path.read_bytes() for suffix, path in paths.items()} == written
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"meta": {}, "results": []}))
    with pytest.raises(ValueError, match="other.json: not a table"):
        rewrite_markdown(other)
    assert main(["--rewrite", str(other), str(paths["json"])]) == 1


def test_committed_result_tables_fit_and_are_current():
    """Every committed markdown table fits; those written by write_table match their JSON (rerun --rewrite)."""
    markdown = sorted(RESULTS.glob("*.md"))
    assert markdown
    for path in markdown:
        for table in _tables(path.read_text()):
            assert len(table[0]) <= MAX_MARKDOWN_COLUMNS, f"{path.name}: {len(table[0])} columns"
        json_path = path.with_suffix(".json")
        data = json.loads(json_path.read_text()) if json_path.is_file() else {}
        if "meta" in data and isinstance(data.get("rows"), list):
            rows, meta = read_table(json_path)
            assert path.read_text() == render_markdown(rows, meta), \
                f"{path.name} is stale: python -m vasa3d.metrics.table --rewrite {json_path}"
