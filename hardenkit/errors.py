"""The hardenkit exception tree.

Every error the library raises on purpose is a :class:`HardenkitError`. Each one also
subclasses the matching builtin, so ``except ValueError`` keeps working for callers that do
not know about hardenkit. Messages follow one pattern: what was expected, what was got, and
how to fix it.

Each class carries an ``exit_code`` that the CLI maps to its process exit status
(2 usage/config/input error, 3 runtime/environment error).

Example:
    >>> from hardenkit.errors import DataError, HardenkitError
    >>> try:
    ...     raise DataError("expected pixels in [0, 1], got max 255.0")
    ... except ValueError as exc:  # DataError is also a ValueError
    ...     isinstance(exc, HardenkitError)
    True
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "DependencyError",
    "DeviceError",
    "ExecutionProviderError",
    "ExportError",
    "HardenkitError",
    "HardenkitWarning",
    "IntegrationError",
    "ModelCompatibilityError",
    "NonFiniteError",
    "ParityError",
    "RegistryError",
    "UnsafeArtifactError",
]


class HardenkitError(Exception):
    """Base class of every error raised by hardenkit on purpose."""

    exit_code: int = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} Fix: {hint}")

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return self.message if self.hint is None else f"{self.message} Fix: {self.hint}"


class ConfigError(HardenkitError, ValueError):
    """A configuration value is invalid (wraps pydantic's ``ValidationError``)."""

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        errors: list[dict[str, object]] | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.errors = errors or []


class DataError(HardenkitError, ValueError):
    """Input data is malformed: wrong shape, dtype, pixel range, labels, or empty."""


class ModelCompatibilityError(HardenkitError, TypeError):
    """The model cannot be used as asked (output size, missing layer, wrong input)."""


class NonFiniteError(HardenkitError, ArithmeticError):
    """A computation produced NaN or infinite values (logits, losses, scores, metrics).

    Raised instead of letting a NaN flow into a verdict: ``argmax`` of NaN logits is class 0,
    so an unchecked NaN would read as "ASR 0" or "clean". A result that cannot be computed
    from finite numbers is an error, never an answer (exit code 3).
    """

    exit_code = 3


class RegistryError(HardenkitError, KeyError):
    """A registry lookup failed, or a registration would silently replace an entry."""


class UnsafeArtifactError(HardenkitError):
    """A model file needs arbitrary code execution to load (a pickle) and was refused."""

    def __init__(
        self, message: str, *, hint: str | None = None, unsafe_globals: list[str] | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.unsafe_globals = unsafe_globals or []


class DeviceError(HardenkitError, RuntimeError):
    """The requested device (e.g. CUDA) is not available in this environment."""

    exit_code = 3


class DependencyError(HardenkitError, ImportError):
    """An optional package a feature needs is not installed; the message names the extra
    to install (e.g. ``pip install "hardenkit[mlflow]"``). Exit code 3."""

    exit_code = 3


class IntegrationError(HardenkitError, RuntimeError):
    """An external service hardenkit reports to (e.g. an MLflow tracking server or model
    registry) failed or refused a request. Exit code 3: the answer is "unknown", not "no"."""

    exit_code = 3


class ExportError(HardenkitError):
    """ONNX export or post-export verification failed."""

    exit_code = 3


class ExecutionProviderError(ExportError):
    """The requested ONNX Runtime execution provider is not the one actually running."""


class ParityError(ExportError):
    """The exported model's outputs differ from PyTorch beyond the tolerance profile.

    A verification that ran and failed is a failed check (exit code 1), not an environment
    error: the answer is "no", not "unknown".
    """

    exit_code = 1


class HardenkitWarning(UserWarning):
    """Warnings hardenkit emits (tests turn them into errors)."""
