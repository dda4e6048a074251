"""Progress reporting through a callback protocol; tqdm is only one optional sink."""

from __future__ import annotations

import os
import sys
from typing import Any, Literal, Protocol, runtime_checkable

from .imports import is_available


@runtime_checkable
class ProgressCallback(Protocol):
    """Called by long loops: ``phase`` names the loop, ``step`` of ``total`` is done."""

    def __call__(self, phase: str, step: int, total: int, **info: Any) -> None: ...


class NullProgress:
    """A progress callback that does nothing."""

    def __call__(self, phase: str, step: int, total: int, **info: Any) -> None:
        return None

    def close(self) -> None:
        return None


class TqdmProgress:
    """One tqdm bar per phase on stderr; TQDM_* environment variables keep working."""

    def __init__(self) -> None:
        self._bars: dict[str, Any] = {}

    def __call__(self, phase: str, step: int, total: int, **info: Any) -> None:
        from tqdm.auto import tqdm

        bar = self._bars.get(phase)
        if bar is None:
            bar = tqdm(total=total, desc=phase, file=sys.stderr, leave=False)
            self._bars[phase] = bar
        try:
            bar.n = step
            if info:
                bar.set_postfix({k: _short(v) for k, v in info.items()}, refresh=False)
            bar.refresh()
            if step >= total:
                bar.close()
                del self._bars[phase]
        except (OSError, ValueError):  # closed stream: never fail the computation
            pass

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


def _short(v: Any) -> Any:
    return f"{v:.4g}" if isinstance(v, float) else v


def make_progress(
    mode: Literal["auto", "on", "off"], callback: ProgressCallback | None = None
) -> ProgressCallback:
    """Resolve the progress sink: an explicit callback wins, else tqdm per ``mode``."""
    if callback is not None:
        return callback
    if mode == "off" or os.environ.get("TQDM_DISABLE", "") not in {"", "0"}:
        return NullProgress()
    if not is_available("tqdm"):
        return NullProgress()
    if mode == "on" or sys.stderr.isatty():
        return TqdmProgress()
    return NullProgress()
