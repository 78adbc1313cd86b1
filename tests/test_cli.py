"""The command line end to end: a few steps of the portrait fit, outputs, resume and export."""

import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from vasa3d.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--trainer.max_steps=4", "--data.crop_size=128", "--data.steps_per_epoch=2", "--model.num_gaussians=5000",
         "--model.max_gaussians=6000", "--model.densify_start=1", "--model.densify_every=2"]


def test_fit_portrait_end_to_end_then_resume_and_export(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = str(ROOT / "experiments" / "fit_portrait.yaml")
    main(["fit", "--config", config, *SMALL])
    run = tmp_path / "outputs" / "fit_portrait" / "version_0"
    assert list(run.glob("events.out.tfevents.*"))
    strip = np.asarray(Image.open(run / "turntable" / "turntable.png"))
    assert strip.shape == (128, 9 * 128, 3)
    front = np.asarray(Image.open(run / "turntable" / "yaw_+000.png")).astype(float)
    assert front[40:90, 40:90].std() > 10  # a face, not a flat image
    assert (run / "head.ply").stat().st_size > 5000 * 60
    last = tmp_path / "outputs" / "fit_portrait" / "checkpoints" / "last.ckpt"
    assert last.is_file()
    assert torch.load(last, weights_only=False)["global_step"] == 4

    main(["fit", "--config", config, *SMALL, "--trainer.max_steps=6", "--ckpt_path=last"])
    assert torch.load(last, weights_only=False)["global_step"] == 6

    main(["export", "--ckpt", str(last), "--out", str(tmp_path / "exported.ply")])
    assert (tmp_path / "exported.ply").read_bytes().startswith(b"ply\n")


def test_module_entry_point_and_help():
    result = subprocess.run([sys.executable, "-m", "vasa3d", "fit", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "--ckpt_path" in result.stdout


def test_export_rejects_a_missing_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["export", "--ckpt", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "x.ply")])
    assert "no such checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "experiments").glob("*.yaml")
                                           if "\nmodel:" in p.read_text()))  # job configs (not bench.yaml)
def test_every_experiment_config_parses_and_states_its_scale(config):
    from vasa3d.cli import VasaCLI

    text = (ROOT / "experiments" / config).read_text()
    assert text.startswith("#"), f"{config}: its first line must say what it is and where it runs"
    if "512" in config:
        assert "GPU" in text.splitlines()[0], f"{config}: a GPU-scale config says so in its first line"
    cli = VasaCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                  run=False, auto_configure_optimizers=False,
                  args=["--config", str(ROOT / "experiments" / config), "--data", "lightning.LightningDataModule"])
    assert isinstance(cli.model, L.LightningModule)
