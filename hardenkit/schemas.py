"""The JSON Schemas hardenkit publishes: report files it writes, config files it reads.

``hardenkit schema NAME`` prints one; ``docs/generate_schemas.py`` writes them all to
``docs/schemas/NAME.schema.json``.

Example:
    >>> from hardenkit.schemas import json_schema, schema_names
    >>> "gate-policy" in schema_names()
    True
    >>> json_schema("gate-policy")["title"]
    'DeploymentPolicy'
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from .errors import ConfigError

__all__ = ["JSON_SCHEMA_DIALECT", "json_schema", "schema_models", "schema_names"]

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

_NAMES = (
    "validation-report",
    "scan-report",
    "purification-report",
    "training-report",
    "gate-report",
    "demo-report",
    "gate-policy",
    "validation-policy",
    "runtime-config",
    "train-config",
    "scan-config",
    "fleet-manifest",
    "fleet-report",
)


def schema_names() -> list[str]:
    """Every published schema name (no import of torch-heavy modules)."""
    return list(_NAMES)


def schema_models() -> dict[str, type[BaseModel]]:
    """Schema name -> pydantic model. Reports describe JSON that hardenkit writes; configs
    describe JSON/YAML that hardenkit reads (``hardenkit gate --policy`` reads a gate-policy,
    ``hardenkit validate --policy`` a validation-policy, ``hardenkit scan --config`` a
    scan-config, ``hardenkit scan-fleet`` a fleet-manifest)."""
    from .cli._demo_report import DemoReport
    from .config import RuntimeConfig
    from .fleet import FleetManifest, FleetReport
    from .gate import DeploymentPolicy, GateReport
    from .purify import PurificationReport
    from .robust import TrainingReport
    from .scan import ScanConfig, ScanReport
    from .training import TrainConfig
    from .validate import GatePolicy, ValidationReport

    models: dict[str, type[BaseModel]] = {
        "validation-report": ValidationReport,
        "scan-report": ScanReport,
        "purification-report": PurificationReport,
        "training-report": TrainingReport,
        "gate-report": GateReport,
        "demo-report": DemoReport,
        "gate-policy": DeploymentPolicy,
        "validation-policy": GatePolicy,
        "runtime-config": RuntimeConfig,
        "train-config": TrainConfig,
        "scan-config": ScanConfig,
        "fleet-manifest": FleetManifest,
        "fleet-report": FleetReport,
    }
    assert list(models) == list(_NAMES)
    return models


def json_schema(name: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``name`` (see :func:`schema_names`)."""
    if name not in _NAMES:
        raise ConfigError(
            f"unknown schema {name!r}; available: {', '.join(_NAMES)}.",
            hint="e.g. hardenkit schema gate-policy",
        )
    return {"$schema": JSON_SCHEMA_DIALECT, **schema_models()[name].model_json_schema()}
