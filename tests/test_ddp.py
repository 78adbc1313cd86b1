"""Multi-device by config: `--trainer.devices 2 --trainer.strategy ddp` on two CPU processes (slow)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_process_ddp_fit_writes_one_run(tmp_path):
    command = [sys.executable, "-m", "vasa3d", "fit", "--config", str(ROOT / "experiments" / "fit_portrait.yaml"),
               "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu",
               "--trainer.max_steps", "4", "--data.crop_size", "96", "--data.steps_per_epoch", "4",
               "--model.num_gaussians", "3000", "--model.max_gaussians", "3500", "--model.densify", "false"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted((tmp_path / "outputs" / "fit_portrait" / "astronaut").iterdir())
    assert [run.name for run in runs] == ["version_0"]  # both ranks wrote into one run folder
    checkpoint = torch.load(runs[0] / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 4 and (runs[0] / "head.ply").is_file()


@pytest.mark.slow
def test_two_process_ddp_trains_the_motion_model(tmp_path):
    # audio2motion.yaml stopped under plain DDP: parameters unused in the loss
    command = [sys.executable, "-m", "vasa3d", "fit", "--config", str(ROOT / "experiments" / "audio2motion.yaml"),
               "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu",
               "--trainer.max_steps", "3", "--data.init_args.num_utterances", "40", "--data.init_args.batch_size", "4",
               "--trainer.check_val_every_n_epoch", "1000"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    last = tmp_path / "outputs" / "audio2motion" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 3
