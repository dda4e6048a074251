"""Progress reporting through a callback protocol; tqdm and heartbeat lines are optional sinks.

On a terminal (stderr is a TTY) the default sink is a tqdm bar per phase. Elsewhere (CI logs,
files, pipes) it is :class:`HeartbeatProgress`: one plain line on stderr at the first and last
step of a phase and at most every ``HARDENKIT_HEARTBEAT_SECONDS`` (default 10) in between, plus
a structured ``progress.heartbeat`` event at INFO on the ``hardenkit.progress`` logger.
"""

from __future__ import annotations

import math
import numbers
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from ..logging import get_logger
from .imports import is_available

HEARTBEAT_ENV = "HARDENKIT_HEARTBEAT_SECONDS"
"""Environment variable: seconds between heartbeat lines (``0`` = every step)."""

DEFAULT_HEARTBEAT_SECONDS = 10.0

_MIN_ETA_STEPS = 2
"""Measured steps needed before an ETA is shown (or one step over ``_MIN_ETA_SECONDS``)."""
_MIN_ETA_SECONDS = 2.0

_log = get_logger("hardenkit.progress")


def _clock() -> float:
    """The heartbeat clock (a module function so tests can replace it)."""
    return time.monotonic()


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


def _tqdm_disabled() -> bool:
    return os.environ.get("TQDM_DISABLE", "") not in {"", "0"}


class TqdmProgress:
    """One tqdm bar per phase on stderr; TQDM_* environment variables keep working.

    A finished bar stays on screen (``leave=True``). The bar is created at a phase's first
    report with that step as its starting point, so its rate is measured from the steps that
    follow (no bogus rate from a step whose start time is unknown).
    """

    def __init__(self) -> None:
        self._bars: dict[str, Any] = {}

    def __call__(self, phase: str, step: int, total: int, **info: Any) -> None:
        from tqdm.auto import tqdm

        try:
            bar = self._bars.get(phase)
            if bar is not None and step < bar.n:  # the phase started over
                bar.close()
                bar = None
            postfix = {k: _short(v) for k, v in info.items()}
            if bar is None:
                bar = tqdm(
                    total=total,
                    initial=step,
                    desc=phase,
                    file=sys.stderr,
                    leave=True,
                    postfix=postfix or None,
                    # tqdm reads TQDM_* once, when it is imported; read TQDM_DISABLE now so
                    # the bar follows the environment of this call, not of the first import.
                    disable=_tqdm_disabled(),
                )
                self._bars[phase] = bar
            else:
                if postfix:
                    bar.set_postfix(postfix, refresh=False)
                if bar.total != total:
                    bar.total = total
                bar.update(step - bar.n)
            if step >= total:
                bar.close()
                del self._bars[phase]
        except (OSError, ValueError):  # closed stream: never fail the computation
            pass

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


@dataclass
class _Phase:
    t0: float
    """Clock at the phase's first report (the timer starts there)."""
    step0: int
    """The step of that first report."""
    last_emit: float
    last_step: int


class HeartbeatProgress:
    """Heartbeat log lines for non-interactive output (CI logs, files, pipes).

    At a phase's first and last step, and whenever ``interval`` seconds have passed since the
    phase's previous line, writes one line to stderr, e.g.::

        [hardenkit] purify[finetune] 12/100 (12%) elapsed 30s eta 3m40s loss=0.412

    and logs the event ``progress.heartbeat`` at INFO on the ``hardenkit.progress`` logger
    (``phase``, ``step``, ``total``, ``percent``, ``elapsed_s``, ``eta_s`` and the metrics).
    Times count from the phase's first report. The ETA comes from the measured rate and is
    left out until two steps (or one step over two seconds) have been measured.

    Args:
        interval: seconds between lines of one phase; ``0`` writes every step. Default: the
            ``HARDENKIT_HEARTBEAT_SECONDS`` environment variable, else 10.
        stream: where lines go (default: the current ``sys.stderr``); ``None`` lines are
            written only to the log.
        clock: a monotonic clock in seconds (default :func:`time.monotonic`).
    """

    def __init__(
        self,
        interval: float | None = None,
        *,
        stream: Any = "stderr",
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.interval = heartbeat_interval() if interval is None else max(0.0, float(interval))
        self._stream = stream
        self._clock = clock
        self._phases: dict[str, _Phase] = {}

    def __call__(self, phase: str, step: int, total: int, **info: Any) -> None:
        now = self._clock() if self._clock is not None else _clock()
        st = self._phases.get(phase)
        if st is None or step < st.last_step:  # new phase, or the phase started over
            st = _Phase(t0=now, step0=step, last_emit=now, last_step=step)
            self._phases[phase] = st
            emit = True
        else:
            emit = step >= total or now - st.last_emit >= self.interval
            st.last_step = step
        if step >= total:
            del self._phases[phase]
        if not emit:
            return
        st.last_emit = now
        self._emit(phase, step, total, now, st, info)

    def _emit(
        self, phase: str, step: int, total: int, now: float, st: _Phase, info: dict[str, Any]
    ) -> None:
        elapsed = max(0.0, now - st.t0)
        done = step - st.step0
        eta: float | None = None
        if step < total and (done >= _MIN_ETA_STEPS or (done >= 1 and elapsed >= _MIN_ETA_SECONDS)):
            eta = (total - step) * elapsed / done
        pct = 100.0 * step / total if total > 0 else 100.0
        parts = [f"[hardenkit] {phase} {step}/{total} ({pct:.0f}%) elapsed {_duration(elapsed)}"]
        if step >= total:
            parts.append("done")
        elif eta is not None:
            parts.append(f"eta {_duration(eta)}")
        parts.extend(f"{k}={_short(v)}" for k, v in info.items())
        self._write(" ".join(parts))
        fields: dict[str, Any] = {
            "phase": phase,
            "step": step,
            "total": total,
            "percent": round(pct, 1),
            "elapsed_s": round(elapsed, 3),
            "eta_s": None if eta is None else round(eta, 3),
        }
        fields.update({k: v for k, v in info.items() if k not in fields and k != "event"})
        _log.info("progress.heartbeat", **fields)

    def _write(self, line: str) -> None:
        stream = sys.stderr if self._stream == "stderr" else self._stream
        if stream is None:
            return
        try:
            stream.write(line + "\n")
            stream.flush()
        except (OSError, ValueError, AttributeError):  # closed stream: never fail the run
            pass

    def close(self) -> None:
        self._phases.clear()


def heartbeat_interval() -> float:
    """Seconds between heartbeat lines: ``HARDENKIT_HEARTBEAT_SECONDS``, else 10 (0: every step)."""
    raw = os.environ.get(HEARTBEAT_ENV, "").strip()
    if not raw:
        return DEFAULT_HEARTBEAT_SECONDS
    try:
        value = float(raw)
    except ValueError:
        return DEFAULT_HEARTBEAT_SECONDS
    return value if math.isfinite(value) and value >= 0 else DEFAULT_HEARTBEAT_SECONDS


def _duration(seconds: float) -> str:
    """``7s``, ``3m40s``, ``2h05m``."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _short(v: Any) -> Any:
    if isinstance(v, (bool, numbers.Integral)):
        return v
    if isinstance(v, numbers.Real):
        return f"{float(v):.4g}"
    return v


def make_progress(
    mode: Literal["auto", "on", "off"], callback: ProgressCallback | None = None
) -> ProgressCallback:
    """Resolve the progress sink: an explicit callback wins, else per ``mode``.

    ``"off"`` (or ``TQDM_DISABLE`` set to anything but ``0``): nothing. ``"on"``: a tqdm bar
    whenever tqdm is installed. ``"auto"``: a tqdm bar when stderr is a TTY and tqdm is
    installed, otherwise heartbeat lines (:class:`HeartbeatProgress`).
    """
    if callback is not None:
        return callback
    if mode == "off" or _tqdm_disabled():
        return NullProgress()
    tqdm_ok = is_available("tqdm")
    if mode == "on":
        return TqdmProgress() if tqdm_ok else NullProgress()
    if tqdm_ok and _isatty(sys.stderr):
        return TqdmProgress()
    return HeartbeatProgress()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, OSError, ValueError):
        return False
