"""The bench file of ``vasa3d bench`` (``experiments/bench.yaml``): its keys, parsed and checked."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vasa3d import runs

SPLITS = ("heldout_latent", "heldout_pose")
BENCH_KEYS = {"name", "subjects", "methods", "fit_missing", "lpips_backbone", "inception_weights", "splits",
              "identity_every", "frontal_yaw_deg", "out_dir", "reference", "python"}
SUBJECT_KEYS = {"portrait", "fit_config", "name"}
METHOD_KEYS = {"name", "checkpoint", "rigid", "teacher", "fit", "fit_config", "overlays", "args"}


@dataclass
class Subject:
    """A portrait (None = the embedded astronaut) and the fit config that makes its teacher video."""

    portrait: str | None
    fit_config: str
    name: str


@dataclass
class Method:
    """A row of the table: an avatar checkpoint (``{subject}`` in the path is the subject's name) or the teacher."""

    name: str
    checkpoint: str | None = None
    rigid: bool = False
    teacher: bool = False
    fit: bool | None = None  # None: the bench's fit_missing
    fit_config: str | None = None  # None: the subject's
    overlays: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)


@dataclass
class Bench:
    """A parsed bench file (see ``experiments/bench.yaml``)."""

    path: Path
    name: str
    subjects: list[Subject]
    methods: list[Method]
    fit_missing: bool = False
    lpips_backbone: str | None = None
    inception_weights: str | None = None
    splits: tuple[str, ...] = SPLITS
    identity_every: int = 4
    frontal_yaw_deg: float = 10.0
    out_dir: str = "benchmarks/results"
    reference: str = "full"
    python: str = sys.executable

    def checkpoint(self, method: Method, subject: Subject) -> Path:
        """The method's checkpoint file. A folder names a run root (``outputs/fit_subject/astronaut``):
        its newest ``version_N/checkpoints/last.ckpt``, else ``<folder>/checkpoints/last.ckpt`` (where a
        bench fit writes)."""
        path = Path(str(method.checkpoint).format(subject=subject.name))
        if path.suffix == ".ckpt":
            return path
        return runs.last_checkpoint(path) or path / "checkpoints" / "last.ckpt"

    def should_fit(self, method: Method) -> bool:
        return self.fit_missing if method.fit is None else bool(method.fit)


def _check_keys(where: str, spec: Any, known: set[str], required: tuple[str, ...] = ()) -> dict:
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: expected a mapping with keys {sorted(known)}, got {spec!r}")
    unknown = set(spec) - known
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    missing = [key for key in required if spec.get(key) in (None, "")]
    if missing:
        raise ValueError(f"{where}: `{missing[0]}:` is missing")
    return spec


def load_bench(path: str | Path) -> Bench:
    """Read and check a bench file; errors name the key and the fix."""
    path = Path(path)
    spec = _check_keys(str(path), yaml.safe_load(path.read_text()) or {}, BENCH_KEYS)
    if not spec.get("subjects"):
        raise ValueError(f"{path}: `subjects:` is missing or empty; give a list of {{portrait, fit_config}} "
                         "(portrait: null is the embedded astronaut)")
    if not spec.get("methods"):
        raise ValueError(f"{path}: `methods:` is missing or empty; give a list of {{name, checkpoint | teacher: true}}")
    subjects = []
    for i, item in enumerate(spec["subjects"]):
        item = _check_keys(f"{path}: subjects[{i}]", item, SUBJECT_KEYS, ("fit_config",))
        portrait = item.get("portrait")
        subjects.append(Subject(portrait, str(item["fit_config"]),
                                str(item.get("name") or (Path(portrait).stem if portrait else "astronaut"))))
    methods = []
    for i, item in enumerate(spec["methods"]):
        item = _check_keys(f"{path}: methods[{i}]", item, METHOD_KEYS, ("name",))
        if bool(item.get("teacher")) == bool(item.get("checkpoint")):
            raise ValueError(f"{path}: method {item['name']!r}: give either `checkpoint:` (an avatar) or `teacher: true`")
        methods.append(Method(**{k: v for k, v in item.items() if k not in ("overlays", "args")},
                              overlays=[str(p) for p in item.get("overlays") or []],
                              args=[str(a) for a in item.get("args") or []]))
    for names, what in (([m.name for m in methods], "method"), ([s.name for s in subjects], "subject")):
        if len(set(names)) != len(names):
            raise ValueError(f"{path}: {what} names repeat: {names}")
    splits = tuple(spec.get("splits") or SPLITS)
    if set(splits) - set(SPLITS):
        raise ValueError(f"{path}: splits {sorted(set(splits) - set(SPLITS))} unknown; choose from {list(SPLITS)}")
    options = {k: spec[k] for k in ("fit_missing", "lpips_backbone", "inception_weights", "identity_every",
                                    "frontal_yaw_deg", "out_dir", "reference", "python") if spec.get(k) is not None}
    return Bench(path=path, name=str(spec.get("name") or path.stem), subjects=subjects, methods=methods,
                 splits=splits, **options)
