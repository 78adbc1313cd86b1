"""The command line end to end: a few steps of the portrait fit, outputs, resume and export."""

import json
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
    assert main(["fit", "--config", config, *SMALL]) == 0
    run = tmp_path / "outputs" / "fit_portrait" / "astronaut" / "version_0"
    assert list(run.glob("events.out.tfevents.*"))
    strip = np.asarray(Image.open(run / "turntable" / "turntable.png"))
    assert strip.shape == (128, 9 * 128, 3)
    front = np.asarray(Image.open(run / "turntable" / "yaw_+000.png")).astype(float)
    assert front[40:90, 40:90].std() > 10  # a face, not a flat image
    wide = json.loads((run / "wide_pose.json").read_text())  # the wide-pose metrics and their labelled strip
    assert [row["yaw"] for row in wide["per_yaw"]] == [-60, -45, -30, -15, 0, 15, 30, 45, 60]
    assert set(wide["summary"]) >= {"found_60", "id_45", "lr_psnr", "speckle_60"}
    assert np.asarray(Image.open(run / "wide_pose.png")).shape == (128, 9 * 128, 3)
    assert (run / "head.ply").stat().st_size > 5000 * 60
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_file()
    assert torch.load(last, weights_only=False)["global_step"] == 4

    main(["fit", "--config", config, *SMALL, "--trainer.max_steps=6", "--ckpt_path=last"])
    assert torch.load(last, weights_only=False)["global_step"] == 6  # resumed in its own run folder
    assert not (run.parent / "version_1").exists()

    main(["export", "--ckpt", str(run), "--out", str(tmp_path / "exported.ply")])  # a run folder names its last.ckpt
    assert (tmp_path / "exported.ply").read_bytes().startswith(b"ply\n")


def test_module_entry_point_and_help():
    result = subprocess.run([sys.executable, "-m", "vasa3d", "fit", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "--ckpt_path" in result.stdout


def test_export_rejects_a_missing_checkpoint(tmp_path, capsys):
    assert main(["export", "--ckpt", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "x.ply")]) == 2
    err = capsys.readouterr().err
    assert "no such checkpoint" in err and len(err.strip().splitlines()) == 1


def _portraits(tmp_path):
    from skimage.data import astronaut

    image = astronaut()
    Image.fromarray(image).save(tmp_path / "alice.png")
    Image.fromarray(np.ascontiguousarray(image[:, ::-1])).save(tmp_path / "bob.png")  # another file, another subject
    return tmp_path / "alice.png", tmp_path / "bob.png"


def test_two_subjects_keep_their_own_runs_and_resume_their_own(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = str(ROOT / "experiments" / "fit_portrait.yaml")
    alice, bob = _portraits(tmp_path)
    small = [*SMALL, "--trainer.max_steps=2"]
    for portrait in (alice, bob):
        assert main(["fit", "--config", config, *small, "--data.portrait", str(portrait)]) == 0
    runs = {name: tmp_path / "outputs" / "fit_portrait" / name / "version_0" for name in ("alice", "bob")}
    for run in runs.values():
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch=0-step=2.ckpt", "last.ckpt"]
        assert (run / "head.ply").is_file() and (run / "turntable" / "turntable.png").is_file()
    before = {name: (run / "head.ply").read_bytes() for name, run in runs.items()}
    assert before["alice"] != before["bob"]
    # resume Alice: Bob's files stay as they were, and Alice continues in her own folder
    assert main(["fit", "--config", config, *small, "--trainer.max_steps=3", "--data.portrait", str(alice),
                 "--ckpt_path", "last"]) == 0
    assert torch.load(runs["alice"] / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3
    assert torch.load(runs["bob"] / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2
    assert (runs["bob"] / "head.ply").read_bytes() == before["bob"]
    # a fresh fit of Alice is a new version; an explicit root dir is honoured
    assert main(["fit", "--config", config, *small, "--data.portrait", str(alice)]) == 0
    assert (runs["alice"].parent / "version_1" / "checkpoints" / "last.ckpt").is_file()
    assert main(["fit", "--config", config, *small, "--trainer.default_root_dir", str(tmp_path / "mine")]) == 0
    assert (tmp_path / "mine" / "version_0" / "checkpoints" / "last.ckpt").is_file()


def test_bad_input_ends_in_one_line_and_leaves_no_run_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.full((256, 256, 3), 128, np.uint8)).save(tmp_path / "wall.png")
    config = str(ROOT / "experiments" / "fit_portrait.yaml")
    cases = [
        (["--data.portrait", str(tmp_path / "wall.png")], "no face"),
        (["--data.portrait", str(tmp_path / "missing.jpg")], "no such file"),
        (["--model.num_gaussians", "many"], "num_gaussians"),
        (["--ckpt_path", "last"], "no run under"),
    ]
    for extra, expected in cases:
        assert main(["fit", "--config", config, *SMALL, *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and expected in err.lower() and "Traceback" not in err, (extra, err)
        assert len(err.splitlines()) == 1, err
        assert not (tmp_path / "outputs" / "fit_portrait").exists(), extra  # no half-made run folder
    monkeypatch.setenv("VASA3D_DEBUG", "1")
    with pytest.raises(Exception, match="no face"):
        main(["fit", "--config", config, *SMALL, "--data.portrait", str(tmp_path / "wall.png")])


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


def test_every_command_reports_usage_errors_in_one_line(capsys):
    for argv in (["render", "--avatar", "x"], ["talk", "--portrait", "me.jpg"], ["export", "--out", "x.ply"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: vasa3d {argv[0]}: ") and len(err.splitlines()) == 1, err


def test_a_failed_command_removes_only_what_it_made_and_never_a_checkpoint(tmp_path):
    from vasa3d.cli import RunTracker

    (tmp_path / "outputs").mkdir()
    tracker = RunTracker()
    tracker.claim(tmp_path / "outputs" / "job" / "me" / "version_0")
    (tmp_path / "outputs" / "job" / "me" / "version_0").mkdir(parents=True)
    (tmp_path / "outputs" / "job" / "me" / "version_0" / "events.out").write_text("x")
    tracker.discard()
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == []  # the half-made run and its parents
    kept = RunTracker()
    kept.claim(tmp_path / "outputs" / "job" / "me" / "version_0")
    (tmp_path / "outputs" / "job" / "me" / "version_0" / "checkpoints").mkdir(parents=True)
    (tmp_path / "outputs" / "job" / "me" / "version_0" / "checkpoints" / "last.ckpt").write_text("x")
    kept.discard()
    assert (tmp_path / "outputs" / "job" / "me" / "version_0" / "checkpoints" / "last.ckpt").is_file()
