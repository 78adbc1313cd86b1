"""``vasa3d bench`` on a tiny fake subject: rows for a loaded avatar, a missing checkpoint and the teacher; config errors."""

import json
import re

import lightning as L
import numpy as np
import pytest
import torch

from vasa3d.bench import bench_command, load_bench, plan, run_bench
from vasa3d.systems import SubjectFitting

SIZE = 64
FRAMES = 4


class FakeSubjectData:
    """What the bench reads from a SyntheticVideoDataModule: ``setup``, ``clips(split)`` and ``sample``."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        viewmat = torch.tensor([[1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 1.0], [0, 0, 0, 1]])
        K = torch.tensor([[170.0, 0, SIZE / 2], [0, 170.0, SIZE / 2], [0, 0, 1]])
        self.sample = {"image": torch.full((3, SIZE, SIZE), 0.5), "mask": torch.ones(1, SIZE, SIZE),
                       "region": torch.ones(1, SIZE, SIZE), "landmarks": torch.zeros(478, 2), "viewmat": viewmat, "K": K}
        self.setup_calls = 0

        def clip(yaw_deg: float) -> dict[str, np.ndarray]:
            landmarks = rng.uniform(10, 54, (FRAMES, 478, 2)).astype(np.float32)
            pose = np.zeros((FRAMES, 6), np.float32)
            pose[:, 1] = np.radians(yaw_deg)
            return {"frames": rng.integers(0, 256, (FRAMES, SIZE, SIZE, 3), dtype=np.uint8),
                    "masks": np.full((FRAMES, SIZE, SIZE), 255, np.uint8), "landmarks": landmarks,
                    "detected": np.concatenate([landmarks + 1.0, np.zeros((FRAMES, 478, 1), np.float32)], -1),
                    "dyn": rng.normal(0, 0.3, (FRAMES, 16)).astype(np.float32), "pose": pose,
                    "gaze": np.zeros((FRAMES, 2), np.float32), "subject": np.int64(0)}

        self.splits = {"heldout_latent": [clip(0.0), clip(20.0)], "heldout_pose": [clip(40.0)]}

    def setup(self, stage=None) -> None:
        self.setup_calls += 1

    def clips(self, split):
        return self.splits[split]


def _write_config(tmp_path, checkpoint, extra=""):
    fit_config = tmp_path / "fit.yaml"
    fit_config.write_text("data:\n  class_path: datamodules.SyntheticVideoDataModule\n  init_args:\n    crop_size: 64\n")
    config = tmp_path / "bench.yaml"
    config.write_text(f"""name: tiny_bench
subjects:
  - portrait: null
    fit_config: {fit_config}
methods:
  - name: full
    checkpoint: {checkpoint}
  - name: no_residual_mlp
    checkpoint: {tmp_path}/ablations/no_residual_mlp/checkpoints/last.ckpt
  - name: teacher (2D, frontal)
    teacher: true
  - name: stale
    checkpoint: {tmp_path}/stale.ckpt
lpips_backbone: null
inception_weights: null
out_dir: {tmp_path}/results
{extra}""")
    return config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    system = SubjectFitting(num_gaussians=5000, densify=False, identity_steps=0, residual=False, latent_dim=16)
    path = tmp_path_factory.mktemp("ckpt") / "last.ckpt"
    torch.save({"state_dict": system.state_dict(), "hyper_parameters": dict(system.hparams),
                "pytorch-lightning_version": L.__version__}, path)
    return path


def test_bench_writes_a_table_with_every_row(tmp_path, checkpoint):
    bench = load_bench(_write_config(tmp_path, checkpoint))
    torch.save({"state_dict": {"head.means": torch.zeros(3)}, "hyper_parameters": {}}, tmp_path / "stale.ckpt")
    assert [action for _, _, action in plan(bench)] == ["load", "missing", "teacher", "load"]
    data = FakeSubjectData()
    paths = run_bench(bench, datamodule_factory=lambda subject: data, echo=lambda line: None)
    assert data.setup_calls == 1  # one datamodule per subject, shared by its methods
    for suffix in ("md", "csv", "json"):
        assert paths[suffix].is_file() and paths[suffix].name.endswith(f"-tiny_bench.{suffix}")
    md = paths["md"].read_text()
    for row in ("astronaut / full", "astronaut / no_residual_mlp", "astronaut / teacher (2D, frontal)"):
        assert row in md and row in paths["csv"].read_text()
    assert "config sha256: `" in md and "- git: `" in md
    # the method without a checkpoint: named once under the tables, its reason written once, as a footnote
    missing = re.search(r"^- ([⁰¹²³⁴⁵⁶⁷⁸⁹]+) (no checkpoint at .+)$", md, flags=re.MULTILINE)
    assert missing and "set `fit: true`" in missing.group(2) and md.count(missing.group(2)) == 1
    assert f"astronaut / no_residual_mlp{missing.group(1)}" in md and "not measured (" not in md
    assert max(line.count("|") - 1 for line in md.splitlines() if line.startswith("|")) <= 12
    meta_rows = json.loads(paths["json"].read_text())
    meta, rows = meta_rows["meta"], {row["name"]: row["metrics"] for row in meta_rows["rows"]}
    assert len(meta["config_sha256"]) == 64 and meta["git"]["commit"] and meta["reference"] == "astronaut / full"
    full, teacher = rows["astronaut / full"], rows["astronaut / teacher (2D, frontal)"]
    assert isinstance(full["heldout_latent/psnr"]["value"], float) and 0 <= full["heldout_latent/ssim"]["value"] <= 1
    assert "lpips_backbone: null" in full["heldout_latent/lpips"]["reason"]
    assert "inception_weights: null" in full["heldout_pose/fid"]["reason"]
    assert teacher["heldout_latent/psnr"]["value"] is None and "the reference" in teacher["heldout_latent/psnr"]["reason"]
    # the teacher's detections sit 1 px off its intended landmarks in x and y; only the frontal clip counts
    assert teacher["heldout_latent/lmd_intended_frontal_px"]["value"] == pytest.approx(2 ** 0.5, rel=1e-4)
    assert teacher["heldout_latent/lmd_intended_frontal_px"]["extra"]["n_frames"] == FRAMES
    assert teacher["heldout_pose/identity_cos"]["value"] is None and "frontal" in teacher["heldout_pose/identity_cos"]["reason"]
    assert rows["astronaut / no_residual_mlp"]["heldout_pose/psnr"]["value"] is None
    assert 0 <= full["wide/found_60"]["value"] <= 1 and len(full["wide/found_60"]["extra"]["per_yaw"]) == 9
    assert "no free viewpoint" in teacher["wide/id_45"]["reason"]
    assert "does not load into this SubjectFitting" in rows["astronaut / stale"]["heldout_latent/ssim"]["reason"]


def test_dry_run_lists_fits_and_writes_nothing(tmp_path, checkpoint, capsys):
    config = _write_config(tmp_path, tmp_path / "run" / "checkpoints" / "last.ckpt", "fit_missing: true\n")
    assert bench_command(["--config", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "astronaut / full: fit" in out and "-m vasa3d fit --config" in out and "astronaut / teacher (2D, frontal): teacher" in out
    assert not (tmp_path / "results").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("text, message", [
    ("name: x\nsubjects: [{portrait: null, fit_config: a.yaml}]\nmethods: [{name: full, teacher: true}]\nbogus: 1\n",
     "unknown keys ['bogus']"),
    ("name: x\nmethods: [{name: full, teacher: true}]\n", "`subjects:` is missing"),
    ("subjects: [{portrait: null}]\nmethods: [{name: full, teacher: true}]\n", "`fit_config:` is missing"),
    ("subjects: [{fit_config: a.yaml}]\nmethods: [{name: full}]\n", "give either `checkpoint:`"),
    ("subjects: [{fit_config: a.yaml}]\nmethods: [{name: full, teacher: true, colour: red}]\n", "methods[0]: unknown keys"),
])
def test_config_errors_name_the_problem(tmp_path, text, message):
    path = tmp_path / "bench.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_bench(path)


def test_cli_reports_config_errors(tmp_path, capsys):
    path = tmp_path / "bench.yaml"
    path.write_text("methods: [{name: full, teacher: true}]\n")
    with pytest.raises(SystemExit):
        bench_command(["--config", str(path)])
    assert "`subjects:` is missing" in capsys.readouterr().err


def test_missing_checkpoint_is_fitted_when_asked(tmp_path, checkpoint):
    target = tmp_path / "run" / "checkpoints" / "last.ckpt"
    bench = load_bench(_write_config(tmp_path, target, "fit_missing: true\n"))
    bench.methods = bench.methods[:1]
    calls = []

    def runner(argv, log_path):  # stands in for `python -m vasa3d fit`: writes the checkpoint
        calls.append(argv)
        target.parent.mkdir(parents=True)
        target.write_bytes(checkpoint.read_bytes())
        return 0

    paths = run_bench(bench, datamodule_factory=lambda subject: FakeSubjectData(), runner=runner, echo=lambda line: None)
    assert len(calls) == 1 and calls[0][3] == "fit" and str(tmp_path / "run" / "bench_paths.yaml") in calls[0]
    overlay = (tmp_path / "run" / "bench_paths.yaml").read_text()
    assert f"default_root_dir: {tmp_path / 'run'}" in overlay
    rows = {row["name"]: row["metrics"] for row in json.loads(paths["json"].read_text())["rows"]}
    assert isinstance(rows["astronaut / full"]["heldout_latent/psnr"]["value"], float)
