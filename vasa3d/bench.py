"""``vasa3d bench --config experiments/bench.yaml``: every method on the held-out clips of each subject, one table.

For each subject (a portrait and the fit config whose ``data:`` section makes its teacher video),
each method is evaluated on the held-out splits (``heldout_latent``: unseen latents in the training
pose range; ``heldout_pose``: yaw beyond it), rendered from the portrait's camera:

- an avatar checkpoint (``SubjectFitting``), posed by each frame's latent (``rigid: true``: rigid
  pose only, the static head). A missing checkpoint is fitted with ``python -m vasa3d fit`` when
  ``fit: true`` (or ``fit_missing: true``), else its row is "not measured" with the reason;
- the teacher itself (``teacher: true``): a 2D generator, so frontal frames only
  (``|yaw| < frontal_yaw_deg``); its frames are the reference of PSNR/SSIM/LPIPS/FID, which are
  therefore "not measured (the reference)".

Columns per split: ``psnr``, ``ssim`` (against the teacher frames on the avatar's background, over the
frames where the teacher's landmarks were found, as ``SubjectFitting.test_step``), ``lpips`` and
``fid``/``kid`` (only with ``lpips_backbone`` / ``inception_weights``), ``lmd_px``/``lmd_iod``
(mediapipe re-detected on the renders vs on the teacher frames), ``lmd_intended_frontal_px``/``_iod``
(re-detected vs the landmarks the latent asked for, frontal frames, every row alike), ``face_found``
and ``identity_cos`` (dlib, every ``identity_every``-th frame, vs the portrait).
Avatar rows also carry wide-pose columns (``wide/found_60``, ``wide/id_45``, ``wide/lr_psnr``,
``wide/speckle_60``: the neutral head turned to ±60° in front of a frontal camera, scored without ground
truth, :mod:`vasa3d.metrics.wide_pose`).
Writes ``<out_dir>/<date>-<name>.{md,csv,json}`` with deltas against ``<subject> / full`` (one table
per subject more when there are several subjects).
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from vasa3d.bench_config import SPLITS, Bench, Method, Subject, load_bench  # noqa: F401 (re-exported)
from vasa3d.metrics import MetricResult, MetricUnavailable
from vasa3d.sweep import Runner, _default_runner, _merge, paths_overlay

DIRECTIONS = {f"{s}/{m}": d for s in SPLITS for m, d in (("face_found", 1), ("lmd_intended_frontal_px", -1),
                                                          ("lmd_intended_frontal_iod", -1))}
WIDE_COLUMNS = ("found_60", "id_45", "lr_psnr", "speckle_60")  # vasa3d.metrics.wide_pose summaries in the table
DIRECTIONS.update({f"wide/{name}": (-1 if name.startswith("speckle") else 1) for name in WIDE_COLUMNS})


# ------------------------------------------------------------------------- data and fits
def _portrait_args(config: dict, portrait: str | None) -> list[str]:
    """CLI args that point a fit config's datamodule at ``portrait`` (``portraits:`` list or ``portrait:``)."""
    if portrait is None:
        return []
    init_args = ((config.get("data") or {}).get("init_args") or {})
    if "portrait" in init_args:
        return [f"--data.init_args.portrait={portrait}"]
    return [f"--data.init_args.portraits=[{portrait}]"]


def _config(paths: Sequence[str]) -> dict:
    config: dict = {}
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"config {path} not found (paths are relative to {Path.cwd()})")
        _merge(config, yaml.safe_load(Path(path).read_text()) or {})
    return config


def datamodule_for(subject: Subject):
    """The subject's datamodule, as its fit config describes it (same teacher settings, so the cached clips)."""
    from vasa3d.cli import datamodule_from_config

    return datamodule_from_config(subject.fit_config,
                                  args=_portrait_args(_config([subject.fit_config]), subject.portrait))


def _fittable(checkpoint: Path) -> bool:
    return checkpoint.name == "last.ckpt" and checkpoint.parent.name == "checkpoints"


def fit_command(bench: Bench, method: Method, subject: Subject, write: bool = True) -> list[str]:
    """``python -m vasa3d fit`` writing the method's checkpoint (``<run>/checkpoints/last.ckpt``); with ``write``,
    writes the overlay ``<run>/bench_paths.yaml`` that redirects the run's outputs into ``<run>``."""
    checkpoint = bench.checkpoint(method, subject)
    if not _fittable(checkpoint):
        raise ValueError(f"method {method.name!r}: fitting needs `checkpoint: <run dir>/checkpoints/last.ckpt`, "
                         f"not {checkpoint}")
    configs = [method.fit_config or subject.fit_config, *method.overlays]
    merged = _config(configs)
    run_dir = checkpoint.parent.parent
    if write:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "bench_paths.yaml").write_text(yaml.safe_dump(paths_overlay(merged, run_dir), sort_keys=False))
    flags = [arg for path in [*configs, str(run_dir / "bench_paths.yaml")] for arg in ("--config", path)]
    return [bench.python, "-m", "vasa3d", "fit", *flags, *_portrait_args(merged, subject.portrait), *method.args]


def plan(bench: Bench) -> list[tuple[Subject, Method, str]]:
    """``(subject, method, action)`` with action ``teacher`` | ``load`` | ``fit`` | ``missing``."""
    steps = []
    for subject in bench.subjects:
        for method in bench.methods:
            if method.teacher:
                action = "teacher"
            elif bench.checkpoint(method, subject).is_file():
                action = "load"
            else:
                action = "fit" if bench.should_fit(method) and _fittable(bench.checkpoint(method, subject)) else "missing"
            steps.append((subject, method, action))
    return steps


# ------------------------------------------------------------------------- metrics
def _optional(load: Callable[[str], Any], path: str | None, key: str, what: str) -> tuple[Any, str | None]:
    """``(loaded, None)`` or ``(None, why not)``: weights no package ships are used only where configured."""
    if path is None:
        return None, f"{key}: null in the bench config; set a path to the {what}"
    try:
        return load(path), None
    except MetricUnavailable as error:
        return None, error.reason


class Scorer:
    """The metric networks, loaded once: dlib, and LPIPS / Inception where configured."""

    def __init__(self, bench: Bench) -> None:
        from vasa3d.metrics.distribution import load_inception
        from vasa3d.metrics.identity import DlibFaceEmbedder
        from vasa3d.metrics.image import LPIPS

        self.bench = bench
        self.embedder = DlibFaceEmbedder()
        self.lpips, self.lpips_reason = _optional(LPIPS, bench.lpips_backbone, "lpips_backbone", "LPIPS backbone weights")
        self.inception, self.inception_reason = _optional(load_inception, bench.inception_weights, "inception_weights",
                                                          "FID Inception weights")

    def identity(self, frames: torch.Tensor, portrait: torch.Tensor) -> MetricResult:
        from vasa3d.metrics.identity import identity_similarity

        if len(frames) == 0:
            return MetricResult.not_measured("no frame to compare")
        return identity_similarity(frames[:: self.bench.identity_every], portrait, self.embedder)["identity_cos"]

    def landmarks(self, found: np.ndarray, target: np.ndarray, prefix: str) -> dict[str, MetricResult]:
        from vasa3d.metrics.landmarks import landmark_distance

        if len(found) == 0:
            reason = "no frame in this split" + (f" within ±{self.bench.frontal_yaw_deg:g}° yaw" if "frontal" in prefix else "")
            return {f"{prefix}_px": MetricResult.not_measured(reason), f"{prefix}_iod": MetricResult.not_measured(reason)}
        return landmark_distance(found, target, prefix=prefix)


def split_frames(datamodule, split: str, background: torch.Tensor) -> dict[str, Any]:
    """A split's clips, concatenated: ``targets [N, 3, S, S]`` (teacher frames on ``background``), the latent,
    ``detected``/``intended`` landmarks ``[N, 478, 2]``, ``valid`` (teacher face found), ``yaw_deg [N]``."""
    from vasa3d.motion.latent import MotionLatent

    clips = datamodule.clips(split)
    if not clips:
        raise ValueError(f"split {split!r} has no clips; set data.init_args.heldout_clips / heldout_pose_clips > 0")
    cat = {key: np.concatenate([clip[key] for clip in clips]) for key in ("frames", "masks", "landmarks", "detected",
                                                                          "dyn", "pose", "gaze")}
    images = torch.from_numpy(cat["frames"]).permute(0, 3, 1, 2).float() / 255.0
    masks = torch.from_numpy(cat["masks"]).float()[:, None] / 255.0
    detected = cat["detected"][..., :2]
    return {
        "targets": images * masks + background.view(1, 3, 1, 1) * (1 - masks),
        "latents": [MotionLatent(*(torch.from_numpy(clip[k]).float() for k in ("dyn", "pose", "gaze"))) for clip in clips],
        "detected": detected, "intended": cat["landmarks"][..., :2],
        "valid": ~np.isnan(detected).any(axis=(1, 2)), "yaw_deg": np.degrees(cat["pose"][:, 1]),
    }


@torch.no_grad()
def evaluate_avatar(system, datamodule, split: str, rigid: bool, scorer: Scorer) -> dict[str, MetricResult]:
    """Render the split's latents from the portrait's camera and score them (keys without the split prefix)."""
    from vasa3d.metrics.distribution import fid_kid
    from vasa3d.metrics.image import psnr, ssim
    from vasa3d.metrics.landmarks import detect_landmarks

    background = system.background.float().cpu()
    data = split_frames(datamodule, split, background)
    sample = datamodule.sample
    size = data["targets"].shape[-1]
    clip_renders, clip_found = [], []
    for latent in data["latents"]:  # one clip at a time: mediapipe tracks within a clip
        clip_renders.append(system.avatar.render_latents(latent, sample["viewmat"][None], sample["K"][None], size,
                                                         background, system.hparams.backend, rigid=rigid)[:, 0])
        clip_found.append(detect_landmarks(clip_renders[-1]))
    renders, found = torch.cat(clip_renders), np.concatenate(clip_found)
    valid, frontal = data["valid"], np.abs(data["yaw_deg"]) < scorer.bench.frontal_yaw_deg
    pred, target = renders[torch.from_numpy(valid)], data["targets"][torch.from_numpy(valid)]
    out = {"psnr": MetricResult(float(psnr(pred, target).mean())), "ssim": MetricResult(float(ssim(pred, target).mean())),
           "lpips": MetricResult(float(scorer.lpips(pred, target).mean())) if scorer.lpips is not None
           else MetricResult.not_measured(scorer.lpips_reason)}
    out.update(scorer.landmarks(found[valid], data["detected"][valid], "lmd"))
    out.update(scorer.landmarks(found[frontal], data["intended"][frontal], "lmd_intended_frontal"))
    out["face_found"] = MetricResult(float((~np.isnan(found).any(axis=(1, 2))).mean()))
    out["identity_cos"] = scorer.identity(renders, sample["image"])
    if scorer.inception is not None:
        out.update(fid_kid(data["targets"], renders, feature_extractor=scorer.inception))
    else:
        out.update({key: MetricResult.not_measured(scorer.inception_reason) for key in ("fid", "kid")})
    return out


def wide_pose_cells(system, datamodule, scorer: Scorer, reason: str | None, teacher: bool) -> dict[str, MetricResult]:
    """The wide-pose columns of one row: measured on an avatar, "not measured" with the reason elsewhere."""
    if reason is not None or teacher or system is None:
        why = reason or "a 2D teacher has no free viewpoint"
        return {f"wide/{name}": MetricResult.not_measured(why) for name in WIDE_COLUMNS}
    from vasa3d.metrics.wide_pose import summary_results

    _, metrics = system.wide_pose(embedder=scorer.embedder, sample=datamodule.sample)
    cells = summary_results(metrics["summary"], metrics["per_yaw"], WIDE_COLUMNS)
    return {f"wide/{name}": value for name, value in cells.items()}


def evaluate_teacher(datamodule, split: str, scorer: Scorer) -> dict[str, MetricResult]:
    """The teacher's own frames, frontal only: identity and re-detected vs intended landmarks; the rest is the reference."""
    data = split_frames(datamodule, split, torch.ones(3))
    frontal = np.abs(data["yaw_deg"]) < scorer.bench.frontal_yaw_deg
    reference = MetricResult.not_measured("the reference: the teacher's own frames")
    out = {key: reference for key in ("psnr", "ssim", "lpips", "lmd_px", "lmd_iod")}
    out.update(scorer.landmarks(data["detected"][frontal], data["intended"][frontal], "lmd_intended_frontal"))
    if frontal.any():
        out["face_found"] = MetricResult(float(data["valid"][frontal].mean()))
        out["identity_cos"] = scorer.identity(data["targets"][torch.from_numpy(frontal)], datamodule.sample["image"])
    else:
        reason = f"no frontal frame (within ±{scorer.bench.frontal_yaw_deg:g}° yaw): the teacher is 2D, frontal only"
        out.update({key: MetricResult.not_measured(reason) for key in ("face_found", "identity_cos")})
    out.update({key: reference for key in ("fid", "kid")})
    return out


def load_avatar(path: Path, datamodule, rigid: bool):
    """The checkpoint's ``SubjectFitting`` on CPU, eval mode; raises ``ValueError`` if it cannot be scored on this data."""
    from vasa3d.systems import SubjectFitting

    try:
        system = SubjectFitting.load_from_checkpoint(path, map_location="cpu").eval()
    except (RuntimeError, KeyError, TypeError) as error:  # e.g. written by an older SubjectFitting
        detail = " ".join(str(error).split())[:160] or type(error).__name__
        raise ValueError(f"{path} does not load into this SubjectFitting ({detail}...); refit it (remove it, set "
                         "fit: true)") from error
    camera = system.reference_camera
    viewmat = datamodule.sample["viewmat"]
    if camera is not None and not torch.allclose(camera["viewmat"].float().cpu(), viewmat.float(), atol=1e-3):
        raise ValueError(f"{path} was fitted from another portrait or camera (its reference_camera differs from the data's)")
    dim = datamodule.clips(SPLITS[0])[0]["dyn"].shape[-1]
    if not rigid and system.hparams.latent_dim != dim:
        raise ValueError(f"{path}: latent_dim {system.hparams.latent_dim} but the data's latents have {dim}")
    return system


# ------------------------------------------------------------------------- running
def run_bench(bench: Bench, datamodule_factory: Callable[[Subject], Any] = datamodule_for, runner: Runner | None = None,
              dry_run: bool = False, echo: Callable[[str], None] = print, command: str | None = None) -> dict[str, Path]:
    """Fit what is missing (if asked), score every method on every split, write the table(s).

    Args:
        bench: the parsed bench file.
        datamodule_factory: ``subject -> datamodule`` with ``setup()``, ``clips(split)`` and ``sample``.
        runner: ``(argv, log path) -> exit status`` for fits; default a subprocess.
        dry_run: print what would be evaluated and fitted; run nothing, write nothing.
        echo: where progress lines go.
        command: the command line recorded in the table header.

    Returns:
        ``{"md": ..., "csv": ..., "json": ...}`` of the combined table (empty on a dry run).
    """
    from rich.progress import Progress

    steps = plan(bench)
    for subject, method, action in steps:
        where = bench.checkpoint(method, subject) if method.checkpoint else "the teacher's frames"
        echo(f"[bench] {subject.name} / {method.name}: {action} ({where}){' rigid pose only' if method.rigid else ''}")
        if action == "fit":
            echo("        " + shlex.join(fit_command(bench, method, subject, write=False)))
    echo(f"[bench] splits {list(bench.splits)}; lpips: {bench.lpips_backbone or 'not measured'}; "
         f"fid/kid: {bench.inception_weights or 'not measured'}; table -> {bench.out_dir}/<date>-{bench.name}.*")
    if dry_run:
        return {}
    scorer = Scorer(bench)
    rows: dict[str, dict[str, MetricResult]] = {}
    datamodules: dict[str, Any] = {}
    with Progress(transient=False) as progress:
        task = progress.add_task("bench", total=len(steps) * len(bench.splits))
        for subject, method, action in steps:
            row_name = f"{subject.name} / {method.name}"
            progress.update(task, description=row_name)
            if subject.name not in datamodules:
                datamodules[subject.name] = datamodule_factory(subject)
                datamodules[subject.name].setup("test")
            datamodule, reason, system = datamodules[subject.name], None, None
            checkpoint = bench.checkpoint(method, subject) if method.checkpoint else None
            if action == "fit":
                argv = fit_command(bench, method, subject)
                echo(f"[bench] fitting {row_name}: {shlex.join(argv)}")
                status = (runner or _default_runner)(argv, checkpoint.parent.parent / "bench_fit.log")
                if status != 0 or not checkpoint.is_file():
                    reason = f"fit exited with {status}; see {checkpoint.parent.parent / 'bench_fit.log'}"
            elif action == "missing":
                reason = f"no checkpoint at {checkpoint}; " + ("`fit: true` needs a <run>/checkpoints/last.ckpt path"
                                                                 if bench.should_fit(method) else "fit it first, or set `fit: true`")
            if reason is None and checkpoint is not None:
                try:
                    system = load_avatar(checkpoint, datamodule, method.rigid)
                except ValueError as error:
                    reason = str(error)
            row: dict[str, MetricResult] = {}
            for split in bench.splits:
                if reason is not None:
                    cells = {key: MetricResult.not_measured(reason) for key in ("psnr", "ssim", "identity_cos")}
                elif method.teacher:
                    cells = evaluate_teacher(datamodule, split, scorer)
                else:
                    cells = evaluate_avatar(system, datamodule, split, method.rigid, scorer)
                row.update({f"{split}/{key}": value for key, value in cells.items()})
                progress.advance(task)
            row.update(wide_pose_cells(system, datamodule, scorer, reason, method.teacher))
            rows[row_name] = row
            if reason:
                echo(f"[bench] {row_name}: not measured ({reason})")
    return write_results(bench, rows, echo, command)


def _fill(rows: dict[str, dict[str, MetricResult]]) -> dict[str, dict[str, MetricResult]]:
    """Every row gets every column; a row not measured at all repeats its reason in each."""
    columns = list(dict.fromkeys(key for row in rows.values() for key in row))
    filled = {}
    for name, row in rows.items():
        reason = None if any(c.measured for c in row.values()) else next(iter(row.values())).reason
        filled[name] = {c: row.get(c, MetricResult.not_measured(reason or "not reported")) for c in columns}
    return filled


def write_results(bench: Bench, rows: dict[str, dict[str, MetricResult]], echo: Callable[[str], None] = print,
                  command: str | None = None) -> dict[str, Path]:
    """The combined table (and one per subject when there are several) under ``bench.out_dir``."""
    from vasa3d.metrics.table import write_table

    rows = _fill(rows)
    files = [bench.path, *[s.fit_config for s in bench.subjects],
             *[p for m in bench.methods for p in [m.fit_config, *m.overlays] if p]]
    config_text = "".join(f"# {p}\n{Path(p).read_text()}" for p in dict.fromkeys(map(str, files)) if Path(p).is_file())
    command = command or shlex.join(["vasa3d", "bench", "--config", str(bench.path)])
    notes = (f"Held-out splits {list(bench.splits)}, rendered from the portrait's camera. psnr/ssim/lpips/fid/kid: vs the "
             "teacher frames on the avatar's background (frames where the teacher's face was found). lmd_*: mediapipe "
             "re-detected on the renders vs on the teacher frames; lmd_intended_frontal_*: vs the landmarks each latent "
             f"asked for, frames with |yaw| < {bench.frontal_yaw_deg:g}°. identity_cos: dlib, every "
             f"{bench.identity_every}th frame vs the portrait. The teacher is 2D: its row is frontal frames only. "
             "wide/*: the neutral head turned to ±60° (frontal camera): found_60 = share of views where mediapipe "
             "finds the face, id_45 = dlib identity cosine at ±45° (worse side), lr_psnr = view vs mirrored opposite "
             "view (dB), speckle_60 = hair/ear/neck high-frequency energy at ±60° vs frontal (lower is cleaner).")
    subjects = [s.name for s in bench.subjects]
    reference = f"{subjects[0]} / {bench.reference}" if len(subjects) == 1 else None
    paths = write_table(rows, bench.name, bench.out_dir, reference=reference, command=command, config_text=config_text,
                        notes=notes, directions=DIRECTIONS)
    if len(subjects) > 1:
        for subject in subjects:
            part = {k: v for k, v in rows.items() if k.startswith(f"{subject} / ")}
            write_table(part, f"{bench.name}-{subject}", bench.out_dir, reference=f"{subject} / {bench.reference}",
                        command=command, config_text=config_text, notes=notes, directions=DIRECTIONS)
    echo(f"[bench] table: {paths['md']}")
    return paths


def bench_command(argv: Sequence[str]) -> int:
    """``vasa3d bench --config experiments/bench.yaml [--dry-run] [--out-dir DIR]``: the benchmark table."""
    parser = argparse.ArgumentParser(prog="vasa3d bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, type=Path, help="the bench file (see experiments/bench.yaml)")
    parser.add_argument("--dry-run", action="store_true", help="print what would be evaluated and fitted; run nothing")
    parser.add_argument("--out-dir", type=Path, default=None, help="where the table goes (default: the file's out_dir)")
    args = parser.parse_args(list(argv))
    if not args.config.is_file():
        parser.error(f"{args.config}: no such bench file")
    try:
        bench = load_bench(args.config)
        for subject in bench.subjects:
            _config([subject.fit_config])
    except (ValueError, FileNotFoundError, yaml.YAMLError) as error:
        parser.error(str(error))
    if args.out_dir is not None:
        bench.out_dir = str(args.out_dir)
    run_bench(bench, dry_run=args.dry_run, command=shlex.join(["vasa3d", "bench", *argv]))
    return 0
