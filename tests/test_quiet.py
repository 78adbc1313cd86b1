"""Library noise stays out of the console; our own warnings and logs stay in."""

import subprocess
import sys

SCRIPT = """
import logging, warnings
from datamodules.portrait import default_portrait
from vasa3d.face import analyze_portrait
from vasa3d.metrics.landmarks import detect_landmarks
from vasa3d.quiet import native_stderr_silenced
logging.basicConfig()
analysis = analyze_portrait(default_portrait(), crop_size=128)
import torch
detect_landmarks(torch.rand(2, 3, 64, 64))
with native_stderr_silenced():
    warnings.warn("OUR-WARNING")
    logging.getLogger("vasa3d").warning("OUR-LOG")
print("done")
"""


def _stderr(env_extra: dict[str, str]) -> str:
    import os

    env = {**os.environ, **env_extra}
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert "done" in result.stdout
    return result.stderr


def test_mediapipe_native_logs_are_silenced_and_ours_are_not():
    err = _stderr({})
    assert "OUR-WARNING" in err and "OUR-LOG" in err
    assert ".cc:" not in err and "W0000" not in err and "absl::InitializeLog" not in err, err
    # the switch shows what was silenced: mediapipe's C++ logger does write to fd 2
    assert ".cc:" in _stderr({"VASA3D_NATIVE_LOGS": "1"})


def test_a_fit_prints_no_library_internals(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "vasa3d", "fit", "--config", str(root / "experiments" / "fit_portrait.yaml"),
               "--trainer.max_steps", "2", "--data.crop_size", "96", "--data.steps_per_epoch", "2",
               "--model.num_gaussians", "3000", "--model.max_gaussians", "3500"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    console = result.stdout + result.stderr
    for noise in (".cc:", "W0000", "absl::", "XNNPACK", "💡 Tip", "LeafSpec", "No CUDA runtime", "manual optimization"):
        assert noise not in console, (noise, console[-3000:])
