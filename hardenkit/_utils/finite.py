"""Finiteness guards: a NaN must become an error, never a number in a verdict.

``argmax`` of a row of NaN logits is class 0, so unchecked NaN logits read as "predicted the
first class" — a NaN-emitting backdoored model would measure ASR 0. Every place that turns
model outputs or statistics into a decision goes through these checks.

Example:
    >>> import torch
    >>> from hardenkit._utils.finite import ensure_finite_logits
    >>> ensure_finite_logits(torch.zeros(2, 3), where="test")
    >>> ensure_finite_logits(torch.tensor([[0.0, float("nan")]]), where="test loader")
    Traceback (most recent call last):
    ...
    hardenkit.errors.NonFiniteError: test loader: the model produced NaN or infinite logits ...
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

from ..errors import NonFiniteError

__all__ = ["ensure_finite", "ensure_finite_logits", "ensure_finite_values"]


def ensure_finite_logits(out: Tensor, *, where: str) -> None:
    """Raise :class:`NonFiniteError` unless every logit in ``out`` is finite."""
    bad_rows = ~torch.isfinite(out.detach()).all(dim=-1) if out.ndim else ~torch.isfinite(out)
    n_bad = int(bad_rows.sum())
    if n_bad:
        raise NonFiniteError(
            f"{where}: the model produced NaN or infinite logits for {n_bad} of "
            f"{int(bad_rows.numel())} images; no accuracy, ASR or verdict can be computed.",
            hint="check the weights (a corrupt or diverged checkpoint), the normalization "
            "inside the model (a zero std) and the inputs",
        )


def ensure_finite(value: float, *, what: str) -> float:
    """Return ``value`` or raise :class:`NonFiniteError` naming ``what`` when it is NaN/inf."""
    if not math.isfinite(value):
        raise NonFiniteError(
            f"{what} is {value}; a non-finite number cannot be part of a result.",
            hint="check the model and data for NaN/inf (see the log for the step that failed)",
        )
    return value


def ensure_finite_values(values: Iterable[float], *, what: str) -> list[float]:
    """Return ``values`` as a list or raise :class:`NonFiniteError` if any is NaN/inf."""
    out = [float(v) for v in values]
    bad = [i for i, v in enumerate(out) if not math.isfinite(v)]
    if bad:
        raise NonFiniteError(
            f"{what}: {len(bad)} of {len(out)} values are NaN or infinite (first at index "
            f"{bad[0]}); the statistic cannot be trusted.",
            hint="check the model for NaN outputs and the data for NaN/inf pixels",
        )
    return out
