"""The sweep: variant/grid expansion, output redirection, resume, slurm scripts, a real two-variant run."""

import json
import sys
from pathlib import Path

import pytest
import yaml

from vasa3d.metrics.table import read_table
from vasa3d.sweep import collect_metrics, expand_variants, load_sweep, paths_overlay, run_sweep, sweep_command

REPO = Path(__file__).resolve().parents[1]


def test_expand_list_and_grid():
    listed = expand_variants([{"name": "full"}, {"name": "no_x", "overlays": ["x.yaml"], "args": ["--a=1"]}], None)
    assert [(v.name, v.overlays, v.args) for v in listed] == [("full", [], []), ("no_x", ["x.yaml"], ["--a=1"])]
    grid = expand_variants(None, {"model.init_args.lr": [0.1, 0.01], "trainer.max_steps": [5, 10]}, ["--seed=1"])
    assert [v.name for v in grid] == ["lr=0.1-max_steps=5", "lr=0.1-max_steps=10", "lr=0.01-max_steps=5", "lr=0.01-max_steps=10"]
    assert grid[1].args == ["--seed=1", "--model.init_args.lr=0.1", "--trainer.max_steps=10"]
    both = expand_variants([{"name": "full"}, {"name": "b", "overlays": ["b.yaml"]}], {"model.densify": [True, False]})
    assert [v.name for v in both] == ["full-densify=true", "full-densify=false", "b-densify=true", "b-densify=false"]
    assert both[3].overlays == ["b.yaml"] and both[3].args == ["--model.densify=false"]
    clash = expand_variants(None, {"model.lr": [1], "data.lr": [2]})
    assert clash[0].name == "model.lr=1-data.lr=2"
    with pytest.raises(ValueError, match="repeat"):
        expand_variants([{"name": "a"}, {"name": "a"}], None)
    with pytest.raises(ValueError, match="folder"):
        expand_variants([{"name": "a/b"}], None)


def test_paths_overlay_redirects_logger_and_checkpoints(tmp_path):
    config = {"trainer": {"logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                                     "init_args": {"save_dir": "outputs", "name": "fit"}},
                          "callbacks": [{"class_path": "lightning.pytorch.callbacks.RichProgressBar"},
                                        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                         "init_args": {"dirpath": "outputs/fit/checkpoints", "save_last": True}}]}}
    overlay = paths_overlay(config, tmp_path / "run")["trainer"]
    assert overlay["default_root_dir"] == str(tmp_path / "run")
    assert overlay["logger"]["init_args"] == {"save_dir": str(tmp_path / "run"), "name": "", "version": ""}
    assert overlay["callbacks"][1]["init_args"] == {"dirpath": str(tmp_path / "run" / "checkpoints"), "save_last": True}
    assert overlay["callbacks"][0] == {"class_path": "lightning.pytorch.callbacks.RichProgressBar"}
    assert config["trainer"]["logger"]["init_args"]["save_dir"] == "outputs"  # the input is not modified
    assert paths_overlay({}, tmp_path)["trainer"]["logger"]["class_path"].endswith("TensorBoardLogger")
    assert "logger" not in paths_overlay({"trainer": {"logger": False}}, tmp_path)["trainer"]


def _sweep_file(tmp_path, variants, **extra):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"trainer": {"max_epochs": 1}, "model": {"class_path": "tests.sweep_toy.ToyModule"}}))
    spec = {"base": str(base), "output_dir": str(tmp_path / "runs"), "table_dir": str(tmp_path / "results"),
            "variants": variants, **extra}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_resume_skips_finished_variants_and_resumes_from_last_ckpt(tmp_path):
    sweep = load_sweep(_sweep_file(tmp_path, [{"name": "full"}, {"name": "other"}], test=True))
    (tmp_path / "runs" / "full").mkdir(parents=True)
    (tmp_path / "runs" / "full" / "done.json").write_text(json.dumps({"name": "full", "metrics": {"val/psnr": 20.0},
                                                                      "metrics_source": "tensorboard", "train_time_s": 1.0}))
    (tmp_path / "runs" / "other" / "checkpoints").mkdir(parents=True)
    (tmp_path / "runs" / "other" / "checkpoints" / "last.ckpt").write_bytes(b"")
    calls = []

    def runner(argv, log_path):
        calls.append(argv)
        if argv[3] == "test":  # what a system's test step would leave behind
            (log_path.parent / "metrics.json").write_text(json.dumps({"test/psnr": 21.0, "rigid_only": False}))
        return 0

    results = run_sweep(sweep, runner=runner, echo=lambda line: None)
    assert [argv[3] for argv in calls] == ["fit", "test"]  # `full` was skipped
    assert calls[0][-2:] == ["--ckpt_path", str(tmp_path / "runs" / "other" / "checkpoints" / "last.ckpt")]
    assert "--config" in calls[0] and str(tmp_path / "runs" / "other" / "sweep_paths.yaml") in calls[0]
    assert results["other"]["metrics"] == {"test/psnr": 21.0} and results["full"]["metrics"]["val/psnr"] == 20.0
    assert (tmp_path / "runs" / "other" / "done.json").is_file()
    rows, meta = read_table(next((tmp_path / "results").glob("*-sweep-sweep.json")))
    assert meta["reference"] == "full"
    assert rows["other"]["test/psnr"].value == 21.0 and rows["full"]["test/psnr"].value is None


def test_failed_variant_is_not_marked_done(tmp_path):
    sweep = load_sweep(_sweep_file(tmp_path, [{"name": "full"}]))
    results = run_sweep(sweep, runner=lambda argv, log: 3, echo=lambda line: None)
    assert "exited with 3" in results["full"]["failed"]
    assert not (tmp_path / "runs" / "full" / "done.json").exists()


def test_slurm_writes_sbatch_scripts_and_runs_nothing(tmp_path, capsys):
    path = _sweep_file(tmp_path, [{"name": "full"}], scheduler="slurm", test=True, slurm={"partition": "gpu"})
    assert sweep_command(["--config", str(path)]) == 0
    script = (tmp_path / "runs" / "full" / "sbatch.sh").read_text()
    assert "#SBATCH --partition=gpu" in script and "#SBATCH --signal=SIGUSR1@90" in script
    assert script.count("\nsrun ") == 2 and " -m vasa3d fit --config " in script
    assert "--finish full" in script
    assert f"sbatch {tmp_path / 'runs' / 'full' / 'sbatch.sh'}" in capsys.readouterr().out
    (tmp_path / "runs" / "full" / "metrics.json").write_text(json.dumps({"test/psnr": 25.0}))  # the job ran
    assert sweep_command(["--config", str(path), "--finish", "full", "--train-time", "7"]) == 0
    done = json.loads((tmp_path / "runs" / "full" / "done.json").read_text())
    assert done["metrics"] == {"test/psnr": 25.0} and done["train_time_s"] == 7
    assert sweep_command(["--config", str(path), "--collect"]) == 0
    rows, _ = read_table(next((tmp_path / "results").glob("*-sweep-sweep.json")))
    assert rows["full"]["test/psnr"].value == 25.0


def test_dry_run_prints_commands(tmp_path, capsys):
    path = _sweep_file(tmp_path, [{"name": "full", "args": ["--trainer.max_epochs=2"]}])
    assert sweep_command(["--config", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "-m vasa3d fit --config" in out and "--trainer.max_epochs=2" in out
    assert not (tmp_path / "results").exists()
    with pytest.raises(SystemExit):
        sweep_command(["--config", str(_sweep_file(tmp_path, [{"name": "x", "overlays": ["missing.yaml"]}]))])


TOY_CONFIG = """\
seed_everything: 0
trainer:
  accelerator: cpu
  max_epochs: 3
  enable_progress_bar: false
  enable_model_summary: false
  logger:
    class_path: lightning.pytorch.loggers.TensorBoardLogger
    init_args: {save_dir: OUT/elsewhere, name: toy}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {dirpath: OUT/elsewhere/checkpoints, save_last: true}
model:
  class_path: tests.sweep_toy.ToyModule
  init_args: {lr: 0.2}
data:
  class_path: tests.sweep_toy.ToyData
"""


def test_two_variant_sweep_end_to_end(tmp_path, monkeypatch):
    """Both variants fit as real `python -m vasa3d fit` subprocesses; the table has a delta vs `full`."""
    monkeypatch.chdir(REPO)  # `tests.sweep_toy` is importable from the repository root
    (tmp_path / "toy.yaml").write_text(TOY_CONFIG.replace("OUT", str(tmp_path)))
    (tmp_path / "slow.yaml").write_text("model:\n  init_args:\n    lr: 0.001\n")
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({
        "base": str(tmp_path / "toy.yaml"), "output_dir": str(tmp_path / "runs"), "table_dir": str(tmp_path / "results"),
        "python": sys.executable, "variants": [{"name": "full"}, {"name": "low_lr", "overlays": [str(tmp_path / "slow.yaml")]}],
    }))
    assert sweep_command(["--config", str(path)]) == 0, (tmp_path / "runs" / "full" / "sweep.log").read_text()[-3000:]
    for name in ("full", "low_lr"):
        run = tmp_path / "runs" / name
        assert (run / "done.json").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
        assert list(run.glob("events.out.tfevents.*"))
    assert not (tmp_path / "elsewhere").exists()  # the base config's output paths were redirected
    metrics, source = collect_metrics(tmp_path / "runs" / "low_lr")
    assert source == "tensorboard" and "val/psnr" in metrics
    rows, meta = read_table(next((tmp_path / "results").glob("*-sweep-sweep.json")))
    assert set(rows) == {"full", "low_lr"} and meta["reference"] == "full"
    assert rows["full"]["val/psnr"].value > rows["low_lr"]["val/psnr"].value  # lr 0.2 fits better in 3 epochs
    md = next((tmp_path / "results").glob("*-sweep-sweep.md")).read_text()
    assert "worse" in md and "train_time_s" in md
    assert (tmp_path / "runs" / "plots" / "bar-val_psnr.png").is_file()
    assert (tmp_path / "runs" / "plots" / "quality_vs_time.png").is_file()
