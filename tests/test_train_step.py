"""benchmarks/train_step.py: ops sorted into kinds; a missing run ends in one line."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("train_step", ROOT / "benchmarks" / "train_step.py")
train_step = importlib.util.module_from_spec(spec)
sys.modules["train_step"] = train_step
spec.loader.exec_module(train_step)


def test_ops_are_sorted_into_kinds():
    assert train_step.kind_of("vasa3d_composite::backward") == "compositing backward"
    assert train_step.kind_of("vasa3d_composite::forward") == "compositing forward"
    assert train_step.kind_of("vasa3d_composite::project_backward") == "projection and binning"
    assert train_step.kind_of("vasa3d_composite::ssim_backward") == "D-SSIM (ssim_forward/backward)"
    assert train_step.kind_of("aten::addmm") == "matrix products"
    assert train_step.kind_of("aten::convolution_backward") == "convolutions"
    assert train_step.kind_of("aten::mul") == "other torch ops"


def test_a_missing_run_ends_in_one_line(tmp_path, capsys):
    assert train_step.main(["--run", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("train_step: ") and "nothing" in err
