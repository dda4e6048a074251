"""Configuration models.

All configs are pydantic v2 models that are frozen and reject unknown keys. They never hold
tensors or modules: those are call arguments. :func:`parse_config` turns a dict, a config
object or ``None`` into a validated config and wraps pydantic's ``ValidationError`` into
:class:`~hardenkit.errors.ConfigError`, so callers catch one exception tree.

Example:
    >>> from hardenkit.config import RuntimeConfig
    >>> rt = RuntimeConfig(device="cpu", seed=7)
    >>> rt.resolve_device().type
    'cpu'
    >>> RuntimeConfig(device="tpu")
    Traceback (most recent call last):
    ...
    hardenkit.errors.ConfigError: Invalid RuntimeConfig: device: ...
"""

from __future__ import annotations

import difflib
import math
from typing import Annotated, Any, Literal, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError, DeviceError

__all__ = ["HardenkitConfig", "Normalization", "RuntimeConfig", "parse_config"]

C = TypeVar("C", bound="HardenkitConfig")


def _valid_keys(cls: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names of the (nested) model that holds the key at ``loc``."""
    model: Any = cls
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def _format_validation_error(
    name: str, exc: ValidationError, cls: type[BaseModel] | None = None
) -> ConfigError:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(root)"
        msg = f"{loc}: {err.get('msg', 'invalid')} (got {err.get('input')!r})"
        key = err.get("loc", ())[-1:] or ("",)
        if err.get("type") == "extra_forbidden" and cls is not None and isinstance(key[0], str):
            close = difflib.get_close_matches(key[0], _valid_keys(cls, err["loc"]), n=1)
            if close:
                msg += f"; did you mean {close[0]!r}?"
        parts.append(msg)
    return ConfigError(
        f"Invalid {name}: " + "; ".join(parts),
        hint=f"see the {name} field table in the docs, or {name}.model_json_schema()",
        errors=[dict(e) for e in exc.errors()],
    )


class HardenkitConfig(BaseModel):
    """Base class of every hardenkit config: frozen, unknown keys rejected.

    Invalid values raise :class:`~hardenkit.errors.ConfigError` (also a ``ValueError``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _format_validation_error(type(self).__name__, exc, type(self)) from exc

    def with_updates(self: C, **changes: Any) -> C:
        """Return a validated copy with ``changes`` applied."""
        return type(self)(**{**self.model_dump(), **changes})


def parse_config(cls: type[C], value: C | dict[str, Any] | None) -> C:
    """Validate ``value`` (a ``cls`` instance, a mapping, or None for defaults) into ``cls``."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        return cls(**value)
    raise ConfigError(
        f"Expected a {cls.__name__} or a dict of its fields, got {type(value).__name__}.",
        hint=f"pass {cls.__name__}(...) or a dict such as {{'seed': 0}}",
    )


class Normalization(HardenkitConfig):
    """Per-channel mean/std of a normalization ``(x - mean) / std``."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @model_validator(mode="after")
    def _check(self) -> Normalization:
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError("mean and std must be non-empty and of equal length")
        if any(s <= 0 or not math.isfinite(s) for s in self.std):
            raise ValueError("every std must be a positive finite number")
        return self


class RuntimeConfig(HardenkitConfig):
    """Where and how hardenkit runs.

    Attributes:
        device: ``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        seed: seeds Python, NumPy and torch; the same inputs on the same device give the
            same report.
        amp: bf16 autocast on CUDA. ``"auto"`` enables it on CUDA only; it is never used on CPU.
        progress: ``"auto"`` shows a bar on stderr when it is a TTY and tqdm is installed;
            ``"on"`` / ``"off"`` force it (``True`` / ``False`` mean the same).
        input_normalization: declare that your loaders yield *normalized* tensors
            ``(x - mean) / std`` — a :class:`Normalization`, ``{"mean": ..., "std": ...}`` or
            a ``(mean, std)`` pair; hardenkit converts them back to [0, 1] pixels at the boundary.
        deterministic: ask torch for deterministic kernels during training (cuDNN
            deterministic, no autotuning; slower on CUDA, no effect on CPU results).
        distributed: ``"auto"`` — under ``torchrun`` (or with a process group you
            initialised) the Purifier and the RobustTrainer shard each mini-batch over the
            ranks and all-reduce the gradients, and the Scanner splits its trigger inversions
            by candidate label (docs/scale.md); ``"off"`` — ignore the process
            group (every process runs the whole job alone, e.g. a purification called on one
            rank only).
        sync_batchnorm: in a data-parallel run, normalise BatchNorm layers in train mode with
            the statistics of the *global* batch (``torch.nn.SyncBatchNorm``; CUDA only —
            ``ConfigError`` on the CPU). Without it each rank normalises its own shard.
        clean_storage: where the Purifier keeps the clean images: ``"memory"`` or ``"disk"``
            (a temporary file under ``spill_dir``, read back per mini-batch: for clean sets
            larger than RAM). Either way images that are exact multiples of 1/255 are stored
            as uint8.
        spill_dir: directory of the ``clean_storage="disk"`` file (default: the system
            temporary directory). The file is unlinked at once (POSIX): nothing is left behind.
    """

    device: str = "auto"
    seed: Annotated[int, Field(ge=0)] = 0
    amp: bool | Literal["auto"] = "auto"
    progress: Literal["auto", "on", "off"] = "auto"
    input_normalization: Normalization | None = None
    deterministic: bool = False
    distributed: Literal["auto", "off"] = "auto"
    sync_batchnorm: bool = False
    clean_storage: Literal["memory", "disk"] = "memory"
    spill_dir: str | None = None

    @field_validator("progress", mode="before")
    @classmethod
    def _progress_bool(cls, v: Any) -> Any:
        # True/False are what a Python caller writes (and what YAML reads ``on``/``off`` as)
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v

    @field_validator("input_normalization", mode="before")
    @classmethod
    def _normalization_pair(cls, v: Any) -> Any:
        if isinstance(v, (tuple, list)) and len(v) == 2:
            return {"mean": tuple(v[0]), "std": tuple(v[1])}
        return v

    @field_validator("device")
    @classmethod
    def _check_device(cls, v: str) -> str:
        v = v.strip().lower()
        if v in {"auto", "cpu", "cuda", "mps"}:
            return v
        if v.startswith("cuda:") and v[5:].isdigit():
            return v
        raise ValueError("must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")

    def resolve_device(self) -> torch.device:
        """The concrete ``torch.device`` (raises ``DeviceError`` if CUDA is asked but absent)."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise DeviceError(
                f"device={self.device!r} was requested but torch reports no CUDA device "
                f"(torch {torch.__version__}).",
                hint="use device='auto' or 'cpu', or install a CUDA build of torch",
            )
        return torch.device(self.device)

    def use_amp(self, device: torch.device) -> bool:
        """Whether bf16 autocast is used on ``device``."""
        if device.type != "cuda":
            return False
        return True if self.amp == "auto" else bool(self.amp)
