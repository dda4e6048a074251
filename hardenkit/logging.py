"""Structured logging: structlog over the standard library, never configured by the library.

The library only creates loggers (:func:`get_logger`) whose key/value events go through
stdlib ``logging.getLogger("hardenkit....")``. Nothing is printed unless the host application
configures logging. Applications and the CLI may call :func:`configure_logging`.

Example:
    >>> from hardenkit.logging import get_logger
    >>> log = get_logger("hardenkit.example")
    >>> log.info("example.event", answer=42)  # silent unless the application configured logging
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

import structlog

__all__ = ["configure_logging", "get_logger"]

logging.getLogger("hardenkit").addHandler(logging.NullHandler())


_RESERVED = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


def _rename_reserved_keys(_logger: Any, _method: str, event_dict: Any) -> Any:
    """Keys that clash with ``LogRecord`` attributes (``name``, ``args``...) get a ``_`` suffix."""
    for key in [k for k in event_dict if k in _RESERVED and k != "event"]:
        event_dict[f"{key}_"] = event_dict.pop(key)
    return event_dict


def get_logger(name: str = "hardenkit") -> Any:
    """A structlog ``BoundLogger`` wrapping the stdlib logger ``name`` (keys go to ``extra``)."""
    if not name.startswith("hardenkit"):
        name = f"hardenkit.{name}"
    return structlog.wrap_logger(
        logging.getLogger(name),
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_logger_name,
            _rename_reserved_keys,
            structlog.stdlib.render_to_log_kwargs,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
    )


class _KeyValueFormatter(logging.Formatter):
    """Renders stdlib records produced by :func:`get_logger` with their extra fields."""

    _skip = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}

    def __init__(self, fmt: Literal["json", "console"]) -> None:
        super().__init__()
        self.fmt = fmt

    def format(self, record: logging.LogRecord) -> str:
        extra = {k: v for k, v in vars(record).items() if k not in self._skip}
        event = record.getMessage()
        if self.fmt == "json":
            import json

            payload = {
                "event": event,
                "level": record.levelname.lower(),
                "logger": record.name,
                "timestamp": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
                **extra,
            }
            return json.dumps(payload, default=str)
        kv = " ".join(f"{k}={v}" for k, v in extra.items())
        return f"{record.levelname.lower():<7} {event:<28} {kv}".rstrip()


def configure_logging(
    fmt: Literal["json", "console", "auto"] = "auto", level: int | str = "INFO"
) -> None:
    """Send hardenkit's events to stderr (for applications and the CLI, never the library).

    ``fmt="auto"`` picks ``console`` when stderr is a TTY and JSON lines otherwise.
    """
    chosen: Literal["json", "console"]
    chosen = ("console" if sys.stderr.isatty() else "json") if fmt == "auto" else fmt
    logger = logging.getLogger("hardenkit")
    for h in list(logger.handlers):
        if getattr(h, "_hardenkit_cli", False):
            logger.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler._hardenkit_cli = True  # type: ignore[attr-defined]
    handler.setFormatter(_KeyValueFormatter(chosen))
    logger.addHandler(handler)
    logger.setLevel(level if isinstance(level, int) else level.upper())
