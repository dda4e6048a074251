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
    "binomial_cdf",
    "gamma3_fit",
    "gamma3_max_pvalue",
    "gamma_max_pvalue",
    "log_values",
    "logistic_score",
    "mad_anomaly",
    "ratio_scale_floor",
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
        scale: the spread the indices are measured in: ``max(mad, min_scale)`` (``mad``
            unless :func:`mad_anomaly` was given a floor).
        per_label: ``|v_y - median| / scale`` for every label.
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
    scale: float = 0.0


def mad_anomaly(
    values: Sequence[float],
    *,
    side: Literal["low", "high"] = "low",
    threshold: float = 2.0,
    labels: Sequence[int] | None = None,
    min_scale: float = 0.0,
) -> AnomalyStats:
    """Median-absolute-deviation outlier test (Neural Cleanse, consistency constant 1.4826).

    Only outliers on ``side`` count: Neural Cleanse flags abnormally *small* trigger norms
    (``"low"``), max-margin detectors abnormally *large* margins (``"high"``). ``labels``
    names the entries of ``values`` (default ``0..n-1``).

    ``min_scale`` floors the spread the indices are divided by. With ten labels the MAD can
    be tiny when the other labels happen to sit close together (e.g. after a repair), and then
    a label only slightly below the median gets a large index; a floor says "an outlier must
    also be at least ``threshold × min_scale`` away from the median". See
    :func:`ratio_scale_floor` for the floor that means "at most a given fraction of the
    median".

    >>> tight = [4.60, 4.64, 4.58, 4.62, 4.61, 4.59, 4.63, 4.57, 4.09, 4.60]  # log-norms
    >>> mad_anomaly(tight).flagged, mad_anomaly(tight, min_scale=0.347).flagged
    ([8], [])
    """
    if len(values) < 3:
        raise ValueError(f"need >= 3 values for a MAD outlier test, got {len(values)}")
    names = list(range(len(values))) if labels is None else [int(v) for v in labels]
    v = torch.tensor([float(x) for x in values], dtype=torch.float64)
    med = _median(v)
    dev = (v - med).abs()
    mad = max(MAD_CONSISTENCY * _median(dev), 1e-12 * max(1.0, abs(med)))
    if not min_scale >= 0:
        raise ValueError(f"min_scale must be >= 0, got {min_scale}")
    scale = max(mad, float(min_scale))
    per = [min(float(d) / scale, _INDEX_CAP) for d in dev]
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
        scale=scale,
    )


def ratio_scale_floor(
    max_median_ratio: float | None,
    threshold: float,
    *,
    log: bool = True,
    median: float | None = None,
) -> float:
    """The ``min_scale`` of :func:`mad_anomaly` under which index ``>= threshold`` (low side)
    implies a value at most ``max_median_ratio`` of the median.

    On log values (``log=True``) the distance ``log(median / v)`` must reach
    ``log(1 / ratio)``, so the floor is ``log(1 / ratio) / threshold``; on raw values the
    distance ``median - v`` must reach ``(1 - ratio) · median`` (give ``median``, the raw
    median). ``None`` gives 0 (no floor). The index then is one number that is at least the
    threshold exactly when both the MAD test and the ratio test say "outlier".

    >>> round(ratio_scale_floor(0.5, 2.0), 4)  # ln 2 / 2
    0.3466
    >>> ratio_scale_floor(0.5, 2.0, log=False, median=100.0)
    25.0
    """
    if max_median_ratio is None:
        return 0.0
    if not 0 < max_median_ratio <= 1 or not threshold > 0:
        raise ValueError("need 0 < max_median_ratio <= 1 and threshold > 0")
    if log:
        return math.log(1.0 / max_median_ratio) / threshold
    if median is None:
        raise ValueError("a floor on raw values needs the median")
    return (1.0 - max_median_ratio) * abs(median) / threshold


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


def _gamma_shape(d: float) -> float:
    """Solve ``log(a) - digamma(a) = d`` (d > 0) for the gamma shape ``a`` (Minka's start,
    then Newton steps on the log scale)."""
    a = (3 - d + math.sqrt((d - 3) ** 2 + 24 * d)) / (12 * d)
    for _ in range(50):
        t = torch.tensor(a, dtype=torch.float64)
        f = math.log(a) - float(torch.special.digamma(t)) - d
        fp = 1 / a - float(torch.special.polygamma(1, t))
        step = f / (fp * a)  # Newton on log(a): stays positive
        a = a * math.exp(-max(min(step, 5.0), -5.0))
        if abs(step) < 1e-12:
            break
    return a


def _gamma_loglik(y: torch.Tensor, a: float, scale: float) -> float:
    n = len(y)
    return float(
        (a - 1) * torch.log(y).sum()
        - y.sum() / scale
        - n * a * math.log(scale)
        - n * math.lgamma(a)
    )


def gamma3_fit(values: Sequence[float], *, min_shape: float = 1.0) -> tuple[float, float, float]:
    """Maximum-likelihood fit of a 3-parameter gamma (``shape``, ``loc``, ``scale``).

    MM-BD's reference fits its null with ``scipy.stats.gamma.fit`` (all three parameters by
    maximum likelihood). For a fixed ``loc`` the likelihood's maximum over shape and scale has
    a closed form up to one equation (``log a − ψ(a) = log ȳ − mean(log y)``, ``scale = ȳ / a``
    with ``y = x − loc``), so the fit searches the profile likelihood over ``loc < min(x)``: a
    log-spaced grid of distances below the minimum, then golden-section refinement. The
    likelihood is unbounded as ``loc`` approaches the minimum with ``shape < 1`` (the density
    diverges there), so the fit takes the best *interior* local maximum with ``shape >
    min_shape`` (1) — the regular solution a local optimiser such as the reference's finds —
    and, when there is none, the best point with the shape held at ``min_shape``.
    Returns ``(shape, loc, scale)``.

    >>> g = torch.distributions.Gamma(torch.tensor(3.0), torch.tensor(1 / 1.5))
    >>> _ = torch.manual_seed(0)
    >>> a, loc, scale = gamma3_fit((g.sample((4000,)) + 2.0).tolist())
    >>> round(a), round(loc), round(scale, 1)
    (3, 2, 1.5)
    """
    x = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if len(x) < 3:
        raise ValueError(f"need >= 3 values for a gamma fit, got {len(x)}")
    lo = float(x.min())
    spread = float(x.std(unbiased=True))
    if not spread > 0:  # all equal: a point mass; any tiny scale describes it
        return 1e6, lo - 1e-6, 1e-12

    def profile(t: float) -> tuple[float, float, float, float]:
        loc = lo - spread * math.exp(t)
        y = x - loc
        d = math.log(float(y.mean())) - float(torch.log(y).mean())
        a = _gamma_shape(max(d, 1e-12))
        if a < min_shape:
            a = min_shape
        scale = float(y.mean()) / a
        return _gamma_loglik(y, a, scale), a, loc, scale

    grid = [-12 + 0.1 * i for i in range(181)]  # loc from min − 6e-6·sd to min − 6e2·sd
    prof = [profile(t) for t in grid]
    vals = [p[0] for p in prof]
    # interior local maxima (shape above the bound): the regular solutions a local optimiser
    # such as the reference's finds; without one, the best point of the grid (at the bound)
    interior = [
        j
        for j in range(1, len(grid) - 1)
        if prof[j][1] > min_shape and vals[j] >= vals[j - 1] and vals[j] >= vals[j + 1]
    ]
    i = max(interior or range(len(grid)), key=lambda j: vals[j])
    lo_t, hi_t = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    g = (math.sqrt(5) - 1) / 2
    for _ in range(60):  # golden-section search on the bracket around that grid point
        c1, c2 = hi_t - g * (hi_t - lo_t), lo_t + g * (hi_t - lo_t)
        if profile(c1)[0] >= profile(c2)[0]:
            hi_t = c2
        else:
            lo_t = c1
    _, a, loc, scale = profile((lo_t + hi_t) / 2)
    return a, loc, scale


def gamma3_max_pvalue(values: Sequence[float], *, exponent: int | None = None) -> tuple[float, int]:
    """MM-BD's reference test: ``1 - F(max) ** K`` under a 3-parameter gamma fitted by maximum
    likelihood (:func:`gamma3_fit`) to the values other than the largest; ``K`` = the number of
    values (the reference's exponent) unless ``exponent`` is given. Returns ``(p, argmax)``.

    >>> p, arg = gamma3_max_pvalue([1.0, 1.2, 0.9, 1.1, 1.05, 0.95, 1.15, 9.0])
    >>> arg, p < 1e-6
    (7, True)
    """
    v = [float(x) for x in values]
    if len(v) < 4:
        raise ValueError(f"need >= 4 values (3 for the null fit), got {len(v)}")
    arg = max(range(len(v)), key=lambda i: v[i])
    rest = v[:arg] + v[arg + 1 :]
    a, loc, scale = gamma3_fit(rest)
    z = (v[arg] - loc) / scale
    cdf = (
        float(
            torch.special.gammainc(
                torch.tensor(a, dtype=torch.float64), torch.tensor(z, dtype=torch.float64)
            )
        )
        if z > 0
        else 0.0
    )
    k = len(v) if exponent is None else exponent
    p = -math.expm1(k * math.log(cdf)) if cdf > 0 else 1.0
    return min(max(p, 0.0), 1.0) + 0.0, arg


def binomial_cdf(k: int, n: int, p: float) -> float:
    """``P(K <= k)`` for ``K ~ Binomial(n, p)`` (summed in log space; exact for any ``n``).

    >>> round(binomial_cdf(0, 240, 0.04), 6), binomial_cdf(240, 240, 0.5)
    (5.6e-05, 1.0)
    """
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    lp, lq = math.log(p), math.log1p(-p)
    terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq
        for i in range(k + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


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
