"""Anomaly statistics over per-label detector outputs (MAD outliers, order-statistic p-values).

Example:
    >>> from hardenkit.scan.anomaly import mad_anomaly
    >>> stats = mad_anomaly([20.0, 21.0, 19.5, 22.0, 2.0, 20.5], side="low")
    >>> stats.flagged, round(stats.index, 1)
    ([4], 16.4)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = [
    "LOG_FLOOR",
    "MAD_CONSISTENCY",
    "AnomalyStats",
    "gamma_max_pvalue",
    "log_values",
    "logistic_score",
    "mad_anomaly",
]

MAD_CONSISTENCY = 1.4826
"""Makes the MAD a consistent estimator of the standard deviation of a normal distribution."""

LOG_FLOOR = 1e-3
"""Values below this are taken at it before a logarithm (a zero mask norm stays finite)."""

_INDEX_CAP = 1e6  # a finite stand-in for "infinitely anomalous" (MAD == 0), JSON-safe


@dataclass(frozen=True)
class AnomalyStats:
    """MAD outlier statistics of one per-label statistic.

    Attributes:
        median: median of the values.
        mad: ``1.4826 * median(|v - median|)`` (floored at a tiny positive number).
        per_label: ``|v_y - median| / mad`` for every label.
        index: the model-level anomaly index: ``per_label`` of the most extreme value on the
            suspicious ``side`` (the smallest for ``"low"``, the largest for ``"high"``).
        flagged: labels on the suspicious side whose index exceeds ``threshold``, most
            anomalous first.
    """

    median: float
    mad: float
    per_label: list[float]
    index: float
    flagged: list[int]


def mad_anomaly(
    values: Sequence[float],
    *,
    side: Literal["low", "high"] = "low",
    threshold: float = 2.0,
    labels: Sequence[int] | None = None,
) -> AnomalyStats:
    """Median-absolute-deviation outlier test (Neural Cleanse, consistency constant 1.4826).

    Only outliers on ``side`` count: Neural Cleanse flags abnormally *small* trigger norms
    (``"low"``), max-margin detectors abnormally *large* margins (``"high"``). ``labels``
    names the entries of ``values`` (default ``0..n-1``).
    """
    if len(values) < 3:
        raise ValueError(f"need >= 3 values for a MAD outlier test, got {len(values)}")
    names = list(range(len(values))) if labels is None else [int(v) for v in labels]
    v = torch.tensor([float(x) for x in values], dtype=torch.float64)
    med = _median(v)
    dev = (v - med).abs()
    mad = max(MAD_CONSISTENCY * _median(dev), 1e-12 * max(1.0, abs(med)))
    per = [min(float(d) / mad, _INDEX_CAP) for d in dev]
    sign = -1.0 if side == "low" else 1.0
    on_side = [i for i in range(len(v)) if sign * (float(v[i]) - med) > 0]
    index = max((per[i] for i in on_side), default=0.0)
    flagged = sorted((i for i in on_side if per[i] > threshold), key=lambda i: -per[i])
    return AnomalyStats(
        median=med,
        mad=mad,
        per_label=per,
        index=index,
        flagged=[names[i] for i in flagged],
    )


def log_values(values: Sequence[float]) -> list[float]:
    """``log(max(v, LOG_FLOOR))`` of each value: the scale of Neural Cleanse's ``log-l1`` test.

    >>> [round(v, 3) for v in log_values([1.0, 0.0])]
    [0.0, -6.908]
    """
    return [math.log(max(float(v), LOG_FLOOR)) for v in values]


def _median(v: torch.Tensor) -> float:
    """The usual median (mean of the two middle values for an even count, like NumPy)."""
    s = v.sort().values
    n = len(s)
    return float(s[n // 2]) if n % 2 else float(s[n // 2 - 1 : n // 2 + 1].mean())


def gamma_max_pvalue(values: Sequence[float]) -> tuple[float, int]:
    """Order-statistic p-value of the largest value under a gamma null fitted to the others.

    MM-BD's test: fit a gamma density (method of moments) to the K-1 non-maximal statistics
    and return ``1 - F(max) ** (K - 1)`` with the index of the maximum. Values are shifted to
    be positive first (a gamma lives on (0, inf)).

    >>> p, arg = gamma_max_pvalue([1.0, 1.2, 0.9, 1.1, 1.05, 9.0])
    >>> arg, p < 1e-6
    (5, True)
    """
    v = torch.tensor([float(x) for x in values], dtype=torch.float64)
    if len(v) < 3:
        raise ValueError(f"need >= 3 values, got {len(v)}")
    arg = int(v.argmax())
    rest = torch.cat([v[:arg], v[arg + 1 :]])
    shift = min(0.0, float(rest.min())) - 1e-6 if float(rest.min()) <= 0 else 0.0
    rest = rest - shift
    top = float(v[arg]) - shift
    mean = float(rest.mean())
    var = float(rest.var(unbiased=True)) if len(rest) > 1 else 0.0
    var = max(var, 1e-12 * max(1.0, mean * mean))
    shape = mean * mean / var
    scale = var / mean
    cdf = float(
        torch.special.gammainc(
            torch.tensor(shape, dtype=torch.float64), torch.tensor(top / scale, dtype=torch.float64)
        )
    )
    # 1 - cdf**(K-1), computed stably for cdf close to 1
    k1 = len(v) - 1
    p = -math.expm1(k1 * math.log(cdf)) if cdf > 0 else 1.0
    return min(max(p, 0.0), 1.0) + 0.0, arg  # + 0.0 turns -0.0 into 0.0


def logistic_score(evidence: float, threshold: float, slope: float = 2.0) -> float:
    """Map detector evidence to a score in [0, 1]: ``sigmoid(slope * (evidence - threshold))``.

    The score is exactly 0.5 at the detector's decision threshold, so ``score >= 0.5`` and the
    detector's own verdict agree.

    >>> logistic_score(2.0, 2.0)
    0.5
    >>> round(logistic_score(3.0, 2.0), 3)
    0.881
    """
    z = slope * (evidence - threshold)
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)
