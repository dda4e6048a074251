"""A step and wall-time budget shared by the loops of a strategy (purification or training)."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Budget"]


class Budget:
    """Step and wall-time budget shared by a strategy's loops (``budget()`` → stop?).

    Example:
        >>> b = Budget(max_steps=2, max_seconds=None)
        >>> [b(), b(), b()], b.exhausted
        ([False, False, True], True)
    """

    def __init__(
        self,
        max_steps: int | None,
        max_seconds: float | None,
        *,
        agree: Callable[[bool], bool] | None = None,
    ) -> None:
        self.max_steps = max_steps
        self.max_seconds = max_seconds
        self.agree = agree
        """Under ``torchrun``: "is the time up on any rank?" — every rank then stops at the
        same step (a rank that stopped alone would leave the others waiting in an
        all-reduce)."""
        self.steps = 0
        self.exhausted = False
        self._t0 = time.perf_counter()

    def __call__(self) -> bool:
        """Count one step; return True (stop) when the budget is used up."""
        out_of_steps = self.max_steps is not None and self.steps >= self.max_steps
        elapsed = time.perf_counter() - self._t0
        out_of_time = self.max_seconds is not None and elapsed > self.max_seconds
        if self.max_seconds is not None and self.agree is not None:
            out_of_time = self.agree(out_of_time)
        if out_of_steps or out_of_time:
            self.exhausted = True
        else:
            self.steps += 1
        return self.exhausted
