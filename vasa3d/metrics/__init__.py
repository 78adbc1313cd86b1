"""Benchmark metrics: image quality, distribution (FID/KID), identity, lip-sync, landmarks; tables and plots.

Images everywhere in this package are ``[B, 3, H, W]`` float tensors in ``[0, 1]``; landmarks are
mediapipe's 478-point topology in pixels, ``[..., 478, 2]``.

A metric that needs weights no package ships (the LPIPS backbone, Inception for FID/KID, SyncNet,
ArcFace) loads them from a path the caller gives. Without it the metric returns
``MetricResult.not_measured(reason)`` (or raises :class:`MetricUnavailable` where noted), and the
tables print "not measured (reason)": nothing is silently replaced by another network under the
same name.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class MetricUnavailable(RuntimeError):
    """A metric cannot be measured here (weights or a package missing); ``reason`` says why and how to fix it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class MetricResult:
    """One measured value, or why there is none.

    Args:
        value: the value; None when not measured. NaN is a measured "undefined" (e.g. no face found).
        reason: why ``value`` is None (or a note on a NaN); None for a plain measurement.
        extra: side information (counts, lags, per-frame values) kept in the JSON table.
    """

    value: float | None
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def not_measured(cls, reason: str) -> "MetricResult":
        return cls(None, reason)

    @property
    def measured(self) -> bool:
        return self.value is not None

    def __float__(self) -> float:
        return math.nan if self.value is None else float(self.value)

    def format(self, digits: int = 4) -> str:
        """``"31.25"``, ``"nan (no face in 2/10 frames)"`` or ``"not measured (reason)"``."""
        if self.value is None:
            return f"not measured ({self.reason})"
        text = "inf" if math.isinf(self.value) else f"{self.value:.{digits}g}"
        return f"{text} ({self.reason})" if self.reason else text

    def to_dict(self) -> dict[str, Any]:
        return {"value": _json_float(self.value), "reason": self.reason, "extra": self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MetricResult":
        value = data.get("value")
        if isinstance(value, str):  # "nan" / "inf" / "-inf" as written by to_dict
            value = float(value)
        return cls(value, data.get("reason"), dict(data.get("extra") or {}))


def weights_file(path: str | os.PathLike | None, env: str, what: str, how: str) -> Path:
    """The weights file ``path`` (else ``$env``) for ``what``; ``MetricUnavailable`` when unset or missing.
    ``how`` says how to pass the path (e.g. "pass backbone_path")."""
    path = path or os.environ.get(env)
    if not path:
        raise MetricUnavailable(f"{what} path not configured ({how} or set ${env})")
    path = Path(path).expanduser()
    if not path.is_file():
        raise MetricUnavailable(f"{what} not found at {path}")
    return path


def _json_float(value: float | None) -> float | str | None:
    """JSON has no NaN/inf: write them as strings that ``float()`` reads back."""
    if value is None:
        return None
    value = float(value)
    return str(value) if (math.isnan(value) or math.isinf(value)) else value


def as_result(value: Any) -> MetricResult:
    """A float, None, a one-element tensor or a MetricResult as a MetricResult."""
    if isinstance(value, MetricResult):
        return value
    if value is None:
        return MetricResult.not_measured("no value")
    if hasattr(value, "item"):
        value = value.item()
    return MetricResult(float(value))


__all__ = ["MetricResult", "MetricUnavailable", "as_result"]
