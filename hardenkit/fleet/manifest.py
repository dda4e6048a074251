"""The fleet manifest: which models ``hardenkit scan-fleet`` scans, and with what settings.

A manifest is a YAML or JSON mapping with ``defaults`` (settings every model inherits) and
``models`` (one entry per model). Each entry names its weights (a ``.safetensors`` file; a
relative path is read from the manifest's folder), its architecture (a zoo ``arch`` or a
``factory`` ``"package.module:function"``; both default to what the weights file records),
``num_classes`` and, optionally, its own data and scan settings.

Example:
    >>> from hardenkit.fleet.manifest import FleetManifest
    >>> m = FleetManifest(
    ...     defaults={"data": "synthetic:num_classes=4", "budget": "quick"},
    ...     models=[{"id": "vendor-a", "weights": "a.safetensors", "arch": "small-cnn",
    ...              "num_classes": 4}],
    ... )
    >>> m.models[0].id, m.defaults.budget
    ('vendor-a', 'quick')
    >>> FleetManifest(models=[{"id": "a b", "weights": "a.safetensors"}])
    Traceback (most recent call last):
    ...
    hardenkit.errors.ConfigError: Invalid fleet manifest: models[0] (id 'a b'): id: id 'a b' is ...
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..config import HardenkitConfig
from ..errors import ConfigError

__all__ = ["FleetDefaults", "FleetManifest", "FleetModel", "load_manifest"]

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_FACTORY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
RESERVED_IDS = frozenset({"fleet.json", "fleet.csv", "fleet.md"})
"""Ids that would collide with the fleet's summary files in the output folder."""

Budget = str | Annotated[float, Field(gt=0)]
ImageSize = tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]]
InputShape = tuple[
    Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]
]


class _Section(BaseModel):
    """A part of a :class:`FleetManifest`: frozen, unknown keys rejected. Its errors are
    reported by the manifest, naming the entry (``models[2] (id 'x'): weights: ...``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


class FleetDefaults(_Section):
    """Settings every model of the fleet inherits (a model's own value wins).

    Attributes:
        data: clean images, as ``hardenkit scan --data`` takes them: an ImageFolder directory,
            a ``.tar.gz`` archive (relative paths are read from the manifest's folder), or
            ``synthetic[:k=v,...]``. ``None``: each model gives its own, or ``data_free``.
        split: the split folder inside ``data`` (``train``/``test`` for synthetic data).
        image_size: resize the images of ``data`` to ``(H, W)`` on load.
        data_free: scan without clean images (the ``mm-bd`` detector unless ``scan`` names
            detectors), like ``hardenkit scan --data-free``.
        input_shape: ``(C, H, W)`` of the model input, for ``data_free`` scans.
        budget: a scan budget preset (``quick``, ``standard``, ``thorough``) or seconds, as
            ``hardenkit scan --budget`` (and with its default); ``scan`` settings win over the
            preset.
        scan: :class:`~hardenkit.scan.ScanConfig` fields (e.g. ``detectors``,
            ``detector_options``), like ``hardenkit scan --config``.
        seed: the seed of each scan (subsampling and random starts).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, where each scan runs.
    """

    data: str | None = None
    split: str = "train"
    image_size: ImageSize | None = None
    data_free: bool = False
    input_shape: InputShape = (3, 32, 32)
    budget: Budget = "quick"
    scan: dict[str, Any] = Field(default_factory=dict)
    seed: Annotated[int, Field(ge=0)] = 0
    device: str = "auto"

    @model_validator(mode="after")
    def _data_xor_free(self) -> FleetDefaults:
        if self.data_free and self.data is not None:
            raise ValueError("data and data_free: true exclude each other")
        return self


class FleetModel(_Section):
    """One model of the fleet; ``None`` settings are inherited from the fleet's ``defaults``.

    Attributes:
        id: unique name of the model, also its output folder ``DIR/<id>/``: letters, digits,
            ``.``, ``_`` and ``-``, starting with a letter or a digit, at most 128 characters
            (ids that differ only in case are duplicates).
        weights: its ``.safetensors`` file; a relative path is read from the manifest's folder.
        arch: a zoo architecture (``hardenkit models`` lists them).
        factory: ``"package.module:function"`` returning the ``nn.Module`` (give ``arch`` or
            ``factory``, not both; without either, the architecture the weights file records).
        arch_args: extra architecture / factory arguments (e.g. ``{"width": 32}``); default:
            the ones the weights file records with its architecture.
        num_classes: number of classes; default: recorded in the weights file.
        scan: ScanConfig fields merged over the defaults' ``scan`` (``detector_options`` per
            detector).
    """

    id: str
    weights: Annotated[str, Field(min_length=1)]
    arch: str | None = None
    factory: str | None = None
    arch_args: dict[str, Any] = Field(default_factory=dict)
    num_classes: Annotated[int, Field(ge=2)] | None = None
    data: str | None = None
    split: str | None = None
    image_size: ImageSize | None = None
    data_free: bool | None = None
    input_shape: InputShape | None = None
    budget: Budget | None = None
    scan: dict[str, Any] = Field(default_factory=dict)
    seed: Annotated[int, Field(ge=0)] | None = None
    device: str | None = None

    @field_validator("id")
    @classmethod
    def _safe_id(cls, v: str) -> str:
        if not _ID.fullmatch(v) or v in {".", ".."}:
            raise ValueError(
                f"id {v!r} is not a safe folder name: use letters, digits, '.', '_' and '-', "
                "starting with a letter or a digit, at most 128 characters"
            )
        if v.lower() in RESERVED_IDS:
            raise ValueError(f"id {v!r} would overwrite the fleet summary file of that name")
        return v

    @field_validator("factory")
    @classmethod
    def _factory_spec(cls, v: str | None) -> str | None:
        if v is not None and not _FACTORY.fullmatch(v):
            raise ValueError(f"factory must look like 'package.module:function', got {v!r}")
        return v

    @model_validator(mode="after")
    def _one_architecture(self) -> FleetModel:
        if self.arch is not None and ":" in self.arch:
            raise ValueError(
                f"arch {self.arch!r} is a 'module:function' spec: write it as factory: "
                f"{self.arch!r}"
            )
        if self.arch is not None and self.factory is not None:
            raise ValueError("give arch (a zoo name) or factory (module:function), not both")
        if self.data_free and self.data is not None:
            raise ValueError("data and data_free: true exclude each other")
        return self

    @property
    def architecture(self) -> str | None:
        """``arch`` or ``factory`` (``None``: the one the weights file records)."""
        return self.arch if self.arch is not None else self.factory


class FleetManifest(HardenkitConfig):
    """A fleet: ``defaults`` plus at least one model, ids unique (ignoring case)."""

    defaults: FleetDefaults = Field(default_factory=FleetDefaults)
    models: Annotated[list[FleetModel], Field(min_length=1)]

    def __init__(self, **data: Any) -> None:
        try:
            BaseModel.__init__(self, **data)
        except ValidationError as exc:
            raise _manifest_error(exc, data) from exc

    @model_validator(mode="after")
    def _unique_ids(self) -> FleetManifest:
        seen: dict[str, int] = {}
        for i, m in enumerate(self.models):
            key = m.id.lower()
            if key in seen:
                j = seen[key]
                raise ValueError(
                    f"models[{i}] repeats the id {m.id!r} of models[{j}] "
                    f"({self.models[j].id!r}); ids name the output folders and must be "
                    "unique (ignoring case)"
                )
            seen[key] = i
        return self


_SECTIONS: dict[str, type[BaseModel]] = {"defaults": FleetDefaults, "models": FleetModel}


def _where(loc: tuple[Any, ...], data: dict[str, Any]) -> str:
    """``models[2] (id 'x'): weights`` for the pydantic location ``("models", 2, "weights")``."""
    if len(loc) >= 2 and loc[0] == "models" and isinstance(loc[1], int):
        models = data.get("models")
        entry = models[loc[1]] if isinstance(models, list) and loc[1] < len(models) else None
        ident = entry.get("id") if isinstance(entry, dict) else None
        head = f"models[{loc[1]}]" + (f" (id {ident!r})" if isinstance(ident, str) else "")
        rest = ".".join(str(p) for p in loc[2:])
        return f"{head}: {rest}" if rest else head
    return ".".join(str(p) for p in loc)


def _manifest_error(exc: ValidationError, data: dict[str, Any]) -> ConfigError:
    parts = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        msg = str(err.get("msg", "invalid"))
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        where = _where(loc, data)
        text = f"{where}: {msg}" if where else msg
        kind = err.get("type")
        if kind not in {"missing", "value_error", "extra_forbidden"}:
            text += f" (got {_short(err.get('input'))})"
        if kind == "extra_forbidden" and loc and isinstance(loc[-1], str):
            section = _SECTIONS.get(str(loc[0])) if len(loc) > 1 else FleetManifest
            fields = list(section.model_fields) if section is not None else []
            close = difflib.get_close_matches(loc[-1], fields, n=1)
            if close:
                text += f"; did you mean {close[0]!r}?"
        parts.append(text)
    return ConfigError(
        "Invalid fleet manifest: " + "; ".join(parts),
        hint="see the manifest field tables in docs/scale.md",
        errors=[dict(e) for e in exc.errors()],
    )


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_manifest(path: str | Path) -> FleetManifest:
    """Read and validate a fleet manifest file (``.yaml``/``.yml`` as YAML, else JSON).

    Every problem is a one-line :class:`~hardenkit.errors.ConfigError` naming the file and
    the entry (``models.2.weights: Field required``): unreadable file, syntax error, duplicate
    key or id, unknown field (with the nearest valid one), bad id.
    """
    from ..cli._common import load_policy_file  # the CLI's strict JSON/YAML reader

    p = Path(path)
    fields = load_policy_file(p, "fleet manifest")
    try:
        return FleetManifest(**fields)
    except ConfigError as exc:
        raise ConfigError(
            exc.message.replace("Invalid fleet manifest", f"Invalid fleet manifest {str(p)!r}"),
            hint=exc.hint,
            errors=exc.errors,
        ) from exc
