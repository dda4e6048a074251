"""Typed, JSON-serialisable reports.

Every report carries ``schema_version``, the hardenkit version, the environment that produced
it and a creation time. Reports are pydantic models: ``report.model_dump_json()`` gives the
JSON, ``Report.model_json_schema()`` its schema (published in ``docs/schemas/``).

Example:
    >>> import torch
    >>> from hardenkit.reports import ModelFingerprint
    >>> fp = ModelFingerprint.of(torch.nn.Linear(2, 2))
    >>> fp.num_parameters
    6
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ._utils.environment import environment_info, parameter_count, state_dict_sha256
from ._version import __version__

__all__ = ["BaseReport", "DistributedInfo", "EnvironmentInfo", "ModelFingerprint"]


class EnvironmentInfo(BaseModel):
    """Versions and hardware that produced a report."""

    model_config = ConfigDict(frozen=True)

    hardenkit: str
    python: str
    platform: str
    torch: str
    cuda_available: bool
    cuda_device: str | None = None
    torch_threads: int
    numpy: str | None = None
    onnxruntime: str | None = None

    @classmethod
    def current(cls) -> EnvironmentInfo:
        return cls.model_validate(environment_info())


class ModelFingerprint(BaseModel):
    """Identity of a model: sha256 of its state dict plus its size and class."""

    model_config = ConfigDict(frozen=True)

    sha256: str
    num_parameters: int
    num_tensors: int
    model_class: str

    @classmethod
    def of(cls, model: nn.Module) -> ModelFingerprint:
        return cls(
            sha256=state_dict_sha256(model),
            num_parameters=parameter_count(model),
            num_tensors=len(model.state_dict()),
            model_class=f"{type(model).__module__}.{type(model).__qualname__}",
        )


class DistributedInfo(BaseModel):
    """How many processes ran a data-parallel job (``torchrun``) and how they talked."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    world_size: int = 1
    """Processes (ranks) that shared the work — each mini-batch of a purification or a
    training, the candidate labels of a scan; 1 for an ordinary run."""
    backend: str | None = None
    """``torch.distributed`` backend (``gloo``, ``nccl``); ``None`` for one process."""
    sync_batchnorm: bool = False
    """BatchNorm used global-batch statistics (``SyncBatchNorm``) rather than each rank's."""


class BaseReport(BaseModel):
    """Common fields of every report."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    SCHEMA_VERSION: ClassVar[str] = "1.0"

    schema_version: str = Field(default_factory=lambda: BaseReport.SCHEMA_VERSION)
    report_type: str = "base"
    report_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    hardenkit_version: str = __version__
    environment: EnvironmentInfo = Field(default_factory=EnvironmentInfo.current)

    def to_json(self, **kwargs: Any) -> str:
        """The report as indented JSON."""
        return self.model_dump_json(indent=2, **kwargs)

    def save(self, path: str | Path) -> Path:
        """Write the report as JSON to ``path`` (parents created, written atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.to_json() + "\n")
        tmp.replace(path)
        return path
