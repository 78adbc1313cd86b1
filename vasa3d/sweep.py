"""``vasa3d sweep --config experiments/ablations/sweep.yaml``: run config variants, one table at the end.

The sweep file's keys are documented in ``experiments/ablations/sweep.yaml``: ``base`` (a LightningCLI
config), ``command`` (``fit``), ``test`` (then ``test`` from ``last.ckpt``), ``variants`` (a list of
``{name, overlays, args}``) and/or ``grid`` (``{key: [values]}``, the Cartesian product; with both,
every variant x every grid point), ``output_dir``, ``scheduler`` (``local`` | ``slurm``),
``table_dir``, ``reference``, ``args``, ``metrics``, ``quality_metric``, ``slurm``, ``python``.
Relative paths are taken from the current directory, as ``--config`` is.

Each variant runs ``python -m vasa3d fit --config base --config overlay... --config
<run>/sweep_paths.yaml [args]``; the last overlay (written by the sweep) points the logger, the
checkpoints and ``default_root_dir`` into ``<output_dir>/<name>/``. A finished variant writes
``done.json`` (its metrics from the run's ``metrics.json`` if the system wrote one, else the last
TensorBoard scalars, and the wall time); a rerun skips it, and resumes an unfinished fit from its
``last.ckpt``. The table has a delta column against the variant named ``full``.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import itertools
import json
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Runner = Callable[[list[str], Path], int]  # (argv, log file) -> exit status


@dataclass
class Variant:
    """One run of a sweep: a name (its folder), config overlays and extra CLI args."""

    name: str
    overlays: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)


@dataclass
class Sweep:
    """A parsed sweep file (see the module docstring for the keys)."""

    path: Path
    base: str
    variants: list[Variant]
    command: str = "fit"
    test: bool = False
    output_dir: str = "outputs/sweep"
    scheduler: str = "local"
    table_dir: str = "benchmarks/results"
    reference: str = "full"
    metrics: list[str] | None = None
    quality_metric: str | None = None
    slurm: dict[str, Any] = field(default_factory=dict)
    python: str = sys.executable

    def run_dir(self, variant: Variant) -> Path:
        return Path(self.output_dir) / variant.name


def _cli_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("_")


def expand_variants(variants: Sequence[dict] | None, grid: dict[str, list] | None, common_args: Sequence[str] = ()) -> list[Variant]:
    """The runs of a sweep: each listed variant times each point of the grid's Cartesian product.

    A grid point ``{model.init_args.lr: 0.1}`` adds ``--model.init_args.lr=0.1`` and the name part
    ``lr=0.1`` (the key's last component; the whole key where two keys share it).
    """
    if any(not isinstance(item, dict) or "name" not in item for item in variants or []):
        raise ValueError("every entry of `variants:` needs a `name:` (and optionally `overlays:`, `args:`)")
    listed = [
        Variant(str(item["name"]), [str(p) for p in item.get("overlays") or []], [str(a) for a in item.get("args") or []])
        for item in (variants or [])
    ]
    for item in listed:
        if not item.name or _safe(item.name) != item.name:
            raise ValueError(f"variant name {item.name!r}: use letters, digits and . _ = + - only (it names a folder)")
    if not grid:
        points: list[list[tuple[str, Any]]] = [[]]
    else:
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"grid key {key!r}: give a non-empty list of values, e.g. [1, 2]")
        leaves = [key.rsplit(".", 1)[-1] for key in grid]
        labels = [leaf if leaves.count(leaf) == 1 else key for key, leaf in zip(grid, leaves)]
        points = [list(zip(labels, grid, combo)) for combo in itertools.product(*grid.values())]
    bases = listed or [Variant("")]
    expanded = []
    for base, point in itertools.product(bases, points):
        suffix = "-".join(_safe(f"{label}={_cli_value(value)}") for label, _, value in point)
        name = "-".join(part for part in (base.name, suffix) if part)
        point_args = [f"--{key}={_cli_value(value)}" for _, key, value in point]
        expanded.append(Variant(name, list(base.overlays), [*common_args, *base.args, *point_args]))
    names = [variant.name for variant in expanded]
    if len(set(names)) != len(names):
        raise ValueError(f"sweep variant names repeat: {sorted(n for n in set(names) if names.count(n) > 1)}")
    return expanded


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file."""
    path = Path(path)
    spec = yaml.safe_load(path.read_text()) or {}
    known = {"base", "command", "test", "variants", "grid", "output_dir", "scheduler", "table_dir", "reference", "args",
             "metrics", "quality_metric", "slurm", "python"}  # fmt: skip
    unknown = set(spec) - known
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    if "base" not in spec:
        raise ValueError(f"{path}: `base:` (the config every variant starts from) is missing")
    if not spec.get("variants") and not spec.get("grid"):
        raise ValueError(f"{path}: give `variants:` (a list of {{name, overlays, args}}) and/or `grid:`")
    if spec.get("scheduler", "local") not in ("local", "slurm"):
        raise ValueError(f"{path}: scheduler must be `local` or `slurm`, not {spec['scheduler']!r}")
    variants = expand_variants(spec.get("variants"), spec.get("grid"), [str(a) for a in spec.get("args") or []])
    options = {key: spec[key] for key in ("command", "test", "output_dir", "scheduler", "table_dir", "reference", "metrics",
                                          "quality_metric", "slurm", "python") if spec.get(key) is not None}
    return Sweep(path=path, base=str(spec["base"]), variants=variants, **options)


# ------------------------------------------------------------------------- configs
def _merge(into: dict, overlay: dict) -> dict:
    """Deep-merge dicts; lists and scalars replace (what LightningCLI does with a second --config)."""
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)
    return into


def merged_config(sweep: Sweep, variant: Variant) -> dict:
    """The base config with the variant's overlays merged in (as plain YAML, for locating outputs)."""
    config: dict = {}
    for path in [sweep.base, *variant.overlays]:
        if not Path(path).is_file():
            raise FileNotFoundError(f"sweep variant {variant.name!r}: config {path} not found (paths are relative to {Path.cwd()})")
        _merge(config, yaml.safe_load(Path(path).read_text()) or {})
    return config


def paths_overlay(config: dict, run_dir: Path) -> dict:
    """A config overlay that sends the run's logs, checkpoints and other callback output into ``run_dir``."""
    run = str(run_dir)
    trainer = config.get("trainer") or {}
    overlay: dict[str, Any] = {"default_root_dir": run}

    def redirect(logger: Any) -> Any:
        if not isinstance(logger, dict):
            return logger
        logger = copy.deepcopy(logger)
        init_args = logger.setdefault("init_args", {})
        init_args["save_dir"] = run
        if str(logger.get("class_path", "")).rsplit(".", 1)[-1] in ("TensorBoardLogger", "CSVLogger"):
            init_args["name"], init_args["version"] = "", ""  # logs straight into run_dir
        return logger

    logger = trainer.get("logger")
    if logger is None or logger is True:
        overlay["logger"] = redirect({"class_path": "lightning.pytorch.loggers.TensorBoardLogger"})
    elif isinstance(logger, (dict, list)):
        overlay["logger"] = [redirect(item) for item in logger] if isinstance(logger, list) else redirect(logger)
    callbacks = trainer.get("callbacks")
    if callbacks:
        callbacks = copy.deepcopy(callbacks if isinstance(callbacks, list) else [callbacks])
        for callback in callbacks:
            init_args = callback.get("init_args") if isinstance(callback, dict) else None
            if isinstance(init_args, dict) and "dirpath" in init_args:
                short = str(callback.get("class_path", "")).rsplit(".", 1)[-1]
                init_args["dirpath"] = str(run_dir / ("checkpoints" if short == "ModelCheckpoint" else short.lower()))
        overlay["callbacks"] = callbacks
    return {"trainer": overlay}


def variant_commands(sweep: Sweep, variant: Variant) -> list[list[str]]:
    """The argv of each step of a variant: the fit (resumed from last.ckpt if there is one) and the test."""
    run_dir = sweep.run_dir(variant)
    configs = [arg for path in [sweep.base, *variant.overlays, str(run_dir / "sweep_paths.yaml")] for arg in ("--config", path)]
    head = [sweep.python, "-m", "vasa3d"]
    last = run_dir / "checkpoints" / "last.ckpt"
    fit = [*head, sweep.command, *configs, *variant.args]
    if sweep.command == "fit" and last.is_file():
        fit += ["--ckpt_path", str(last)]
    commands = [fit]
    if sweep.test:
        commands.append([*head, "test", *configs, *variant.args, "--ckpt_path", str(last) if last.is_file() or sweep.command == "fit" else "last"])
    return commands


# ------------------------------------------------------------------------- metrics
def _tensorboard_scalars(run_dir: Path) -> dict[str, float]:
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    scalars: dict[str, float] = {}
    event_dirs = sorted({p.parent for p in run_dir.rglob("events.out.tfevents.*")}, key=lambda d: max(f.stat().st_mtime for f in d.glob("events.out.tfevents.*")))
    for directory in event_dirs:  # later runs (e.g. test after fit) override
        accumulator = EventAccumulator(str(directory), size_guidance={SCALARS: 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            events = accumulator.Scalars(tag)
            if events:
                scalars[tag] = float(max(events, key=lambda e: (e.step, e.wall_time)).value)
    return scalars


def collect_metrics(run_dir: str | Path) -> tuple[dict[str, float], str]:
    """A finished run's metrics and where they came from: the newest ``metrics.json`` under the run, else TensorBoard."""
    run_dir = Path(run_dir)
    candidates = sorted(run_dir.rglob("metrics.json"), key=lambda p: p.stat().st_mtime)
    if candidates:
        data = json.loads(candidates[-1].read_text())
        values = {k: float(v) for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return values, str(candidates[-1])
    return _tensorboard_scalars(run_dir), "tensorboard"


def _default_runner(argv: list[str], log_path: Path) -> int:
    with log_path.open("a") as log:
        log.write(f"$ {shlex.join(argv)}\n")
        log.flush()
        return subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT).returncode


def write_done(sweep: Sweep, variant: Variant, times: dict[str, float], commands: list[list[str]]) -> dict:
    """Write ``<run>/done.json`` from the run's metrics; returns its content."""
    from vasa3d.metrics.table import config_hash

    run_dir = sweep.run_dir(variant)
    metrics, source = collect_metrics(run_dir)
    saved_config = run_dir / "config.yaml"
    done = {
        "name": variant.name, "metrics": metrics, "metrics_source": source, **times,
        "commands": [shlex.join(c) for c in commands], "finished": dt.datetime.now().isoformat(timespec="seconds"),
        "config_sha256": config_hash(saved_config.read_text()) if saved_config.is_file() else "n/a",
    }  # fmt: skip
    (run_dir / "done.json").write_text(json.dumps(done, indent=2) + "\n")
    return done


# ------------------------------------------------------------------------- running
def _slurm_script(sweep: Sweep, variant: Variant, commands: list[list[str]]) -> str:
    """An sbatch script in Lightning's SLURM convention: one task per GPU, `srun`, SIGUSR1 before the time limit."""
    options = {"time": "04:00:00", "gpus": 1, "cpus_per_task": 8, "mem": None, "partition": None, "extra": [], **sweep.slurm}
    run_dir = sweep.run_dir(variant).resolve()
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={sweep.path.stem}-{variant.name}",
        "#SBATCH --nodes=1",
        f"#SBATCH --ntasks-per-node={max(1, int(options['gpus']))}",  # Lightning: tasks per node = devices
        f"#SBATCH --cpus-per-task={options['cpus_per_task']}",
        f"#SBATCH --time={options['time']}",
        f"#SBATCH --output={run_dir}/slurm-%j.out",
        "#SBATCH --signal=SIGUSR1@90",  # Lightning saves and requeues on SIGUSR1
    ]
    if int(options["gpus"]) > 0:
        lines.append(f"#SBATCH --gres=gpu:{int(options['gpus'])}")
    if options["mem"]:
        lines.append(f"#SBATCH --mem={options['mem']}")
    if options["partition"]:
        lines.append(f"#SBATCH --partition={options['partition']}")
    lines += [str(line) for line in options["extra"]]
    lines += ["set -e", f"cd {shlex.quote(str(Path.cwd()))}", "start=$(date +%s)"]
    lines += [f"srun {shlex.join(command)}" for command in commands]
    finish = [sweep.python, "-m", "vasa3d", "sweep", "--config", str(sweep.path), "--finish", variant.name]
    lines.append(f"{shlex.join(finish)} --train-time $(( $(date +%s) - start ))")
    return "\n".join(lines) + "\n"


def run_sweep(sweep: Sweep, runner: Runner | None = None, dry_run: bool = False, echo: Callable[[str], None] = print) -> dict[str, dict]:
    """Run (or, for slurm, write scripts for) every unfinished variant, then write the table and plots.

    Args:
        sweep: the parsed sweep file.
        runner: ``(argv, log_path) -> exit status``; default a subprocess logging to ``<run>/sweep.log``.
        dry_run: print the commands and run nothing (the ``sweep_paths.yaml`` overlays are written,
            so the printed commands can be run by hand).
        echo: where progress lines go.

    Returns:
        ``{variant name: done.json content, or {"failed": reason}}`` for every variant.
    """
    runner = runner or _default_runner
    configs = {variant.name: merged_config(sweep, variant) for variant in sweep.variants}  # fail before any run
    results: dict[str, dict] = {}
    for variant in sweep.variants:
        run_dir = sweep.run_dir(variant)
        done_path = run_dir / "done.json"
        if done_path.is_file():
            echo(f"[sweep] {variant.name}: done, skipped ({done_path})")
            results[variant.name] = json.loads(done_path.read_text())
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        overlay = paths_overlay(configs[variant.name], run_dir)
        (run_dir / "sweep_paths.yaml").write_text(yaml.safe_dump(overlay, sort_keys=False))
        commands = variant_commands(sweep, variant)
        if sweep.scheduler == "slurm":
            script = run_dir / "sbatch.sh"
            script.write_text(_slurm_script(sweep, variant, commands))
            echo(f"sbatch {script}")
            results[variant.name] = {"failed": "submitted to slurm, not finished"}
            continue
        if dry_run:
            for command in commands:
                echo(shlex.join(command))
            results[variant.name] = {"failed": "dry run"}
            continue
        times, failure = {}, None
        for step, command in zip(("train_time_s", "test_time_s"), commands):
            echo(f"[sweep] {variant.name}: {shlex.join(command)}")
            start = time.perf_counter()
            status = runner(command, run_dir / "sweep.log")
            times[step] = round(time.perf_counter() - start, 3)
            if status != 0:
                failure = f"{command[3]} exited with {status}; see {run_dir / 'sweep.log'}"
                break
        if failure:
            echo(f"[sweep] {variant.name}: FAILED: {failure}")
            results[variant.name] = {"failed": failure}
            continue
        results[variant.name] = write_done(sweep, variant, times, commands)
        echo(f"[sweep] {variant.name}: done in {sum(times.values()):.1f} s")
    if not dry_run and sweep.scheduler == "local":
        write_results(sweep, results, echo)
    return results


def _table_rows(sweep: Sweep, results: dict[str, dict]) -> dict[str, dict]:
    from vasa3d.metrics import MetricResult

    rows: dict[str, dict] = {}
    for name, result in results.items():
        if "failed" in result:
            rows[name] = {"__failed__": result["failed"]}
            continue
        metrics = result.get("metrics", {})
        if sweep.metrics is None:
            from_json = result.get("metrics_source") != "tensorboard"
            metrics = {k: v for k, v in metrics.items() if from_json or k.startswith(("val/", "test/"))}
        else:
            metrics = {k: metrics[k] for k in sweep.metrics if k in metrics}
        rows[name] = {**{k: MetricResult(v) for k, v in metrics.items()}, "train_time_s": MetricResult(result.get("train_time_s"))}
    columns = list(dict.fromkeys(k for row in rows.values() for k in row if k != "__failed__"))
    if sweep.metrics is not None:
        columns = [c for c in [*sweep.metrics, "train_time_s"] if c in columns]
    table = {}
    for name, row in rows.items():
        reason = row.get("__failed__")
        table[name] = {c: MetricResult.not_measured(reason) if reason else row.get(c, MetricResult.not_measured("not logged")) for c in columns}
    return table


def write_results(sweep: Sweep, results: dict[str, dict], echo: Callable[[str], None] = print) -> dict[str, Path]:
    """The sweep's table (delta vs ``sweep.reference``) under ``table_dir`` and its plots under ``<output_dir>/plots``."""
    from vasa3d.metrics.plots import plot_metric_bars, plot_quality_vs_time
    from vasa3d.metrics.table import metric_direction, write_table

    table = _table_rows(sweep, results)
    config_text = "".join(f"# {p}\n{Path(p).read_text()}" for p in [sweep.path, sweep.base, *dict.fromkeys(
        o for v in sweep.variants for o in v.overlays)] if Path(p).is_file())
    paths = write_table(table, f"sweep-{sweep.path.stem}", sweep.table_dir, reference=sweep.reference,
                        command=shlex.join(["vasa3d", "sweep", "--config", str(sweep.path)]), config_text=config_text,
                        notes=f"Runs under `{sweep.output_dir}`; train_time_s is each fit's wall time.")
    plot_dir = Path(sweep.output_dir) / "plots"
    measured = [m for m in next(iter(table.values()), {}) if m != "train_time_s"]
    plot_metric_bars(table, plot_dir, reference=sweep.reference)
    quality = sweep.quality_metric or next((m for m in measured if metric_direction(m) == 1), measured[0] if measured else None)
    if quality:
        plot_quality_vs_time(table, quality, plot_dir / "quality_vs_time.png")
    echo(f"[sweep] table: {paths['md']}; plots: {plot_dir}")
    return paths


def sweep_command(argv: Sequence[str]) -> int:
    """``vasa3d sweep --config sweep.yaml [--dry-run | --collect | --finish NAME]``: run config variants."""
    parser = argparse.ArgumentParser(prog="vasa3d sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, type=Path, help="the sweep file (see `vasa3d/sweep.py`)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--collect", action="store_true", help="only write the table and plots from done.json files")
    parser.add_argument("--finish", metavar="NAME", help="write NAME's done.json (the last step of a slurm script)")
    parser.add_argument("--train-time", type=float, default=None, help="with --finish: the job's wall time in s")
    args = parser.parse_args(list(argv))
    if not args.config.is_file():
        parser.error(f"{args.config}: no such sweep file")
    try:
        sweep = load_sweep(args.config)
        for variant in sweep.variants:
            merged_config(sweep, variant)
    except (ValueError, FileNotFoundError, yaml.YAMLError) as error:
        parser.error(str(error))
    if args.finish:
        variant = next((v for v in sweep.variants if v.name == args.finish), None)
        if variant is None:
            parser.error(f"--finish {args.finish}: no such variant; the sweep has {[v.name for v in sweep.variants]}")
        write_done(sweep, variant, {"train_time_s": args.train_time}, variant_commands(sweep, variant))
        return 0
    if args.collect:
        results = {}
        for variant in sweep.variants:
            done = sweep.run_dir(variant) / "done.json"
            results[variant.name] = json.loads(done.read_text()) if done.is_file() else {"failed": "not finished"}
        write_results(sweep, results)
        return 0
    results = run_sweep(sweep, dry_run=args.dry_run)
    failed = [name for name, result in results.items() if "failed" in result]
    return 1 if failed and not args.dry_run and sweep.scheduler == "local" else 0
