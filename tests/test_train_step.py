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


def test_side_by_side_timings_interleave_and_leave_the_set_up_out():
    import time

    calls = []

    def run(name, set_up_s, timed_s):
        def prepare():
            calls.append(f"{name}:prepare")
            time.sleep(set_up_s)

        def timed(_):
            calls.append(f"{name}:timed")
            time.sleep(timed_s)
        return prepare, timed

    ms = train_step.interleaved_ms({"a": run("a", 0.05, 0.001), "b": run("b", 0.0, 0.02)}, repeats=2)
    assert calls == ["a:prepare", "a:timed", "b:prepare", "b:timed"] * 3  # a warm-up round, then 2, in turn
    assert ms["a"] < 20 and 20 <= ms["b"] < 60  # the 50 ms set-up is not in a's time
