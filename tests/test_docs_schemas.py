"""The manual in docs/ stays in step with the code.

* the JSON Schemas committed in docs/schemas/ equal freshly generated ones;
* every field of the documented configs has a row in its docs table, with the code's default;
* every CLI option is documented in docs/cli.md.

After changing a report or config model, run ``python docs/generate_schemas.py``.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import math
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pydantic import BaseModel

from hardenkit.attacks import AttackConfig, BadNetsConfig, BlendedConfig, SIGConfig, WaNetConfig
from hardenkit.config import Normalization, RuntimeConfig
from hardenkit.fleet import FleetDefaults, FleetModel
from hardenkit.gate import DeploymentPolicy
from hardenkit.purify import (
    ANPConfig,
    AutoConfig,
    D3Config,
    FinePruningConfig,
    FinetuneConfig,
    MCLConfig,
    NCUnlearnConfig,
    SAUConfig,
    ShapleyPruningConfig,
)
from hardenkit.purify.synthesis import SynthesisConfig
from hardenkit.robust import ABLConfig, DLPConfig, PlainConfig
from hardenkit.scan import (
    MaxMarginConfig,
    NeuralCleanseConfig,
    PixelConfig,
    PredictionShareConfig,
    ScanConfig,
    SmoothSignalConfig,
    WarpConfig,
)
from hardenkit.training import TrainConfig
from hardenkit.validate import GatePolicy

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SCHEMAS = DOCS / "schemas"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "_hk_generate_schemas", DOCS / "generate_schemas.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _generator()
GENERATED: dict[str, dict[str, Any]] = GEN.generate()


def test_expected_schemas_are_generated() -> None:
    assert sorted(GENERATED) == [
        "demo-report.schema.json",
        "fleet-manifest.schema.json",
        "fleet-report.schema.json",
        "gate-policy.schema.json",
        "gate-report.schema.json",
        "purification-report.schema.json",
        "runtime-config.schema.json",
        "scan-config.schema.json",
        "scan-report.schema.json",
        "train-config.schema.json",
        "training-report.schema.json",
        "validation-policy.schema.json",
        "validation-report.schema.json",
    ]


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_committed_schema_is_fresh(name: str) -> None:
    path = SCHEMAS / name
    assert path.is_file(), f"{path} is missing: run python docs/generate_schemas.py"
    committed = json.loads(path.read_text())
    assert committed == GENERATED[name], f"{path} is stale: run python docs/generate_schemas.py"
    assert path.read_text() == GEN.render(GENERATED[name]), f"{path} is not formatted by the script"


def test_no_stray_schema_files() -> None:
    on_disk = sorted(p.name for p in SCHEMAS.glob("*.json"))
    assert on_disk == sorted(GENERATED)


def test_check_mode_agrees() -> None:
    assert GEN.main(["--check"]) == 0


# --- config tables ---------------------------------------------------------------------------

ROW = re.compile(r"^\|\s*`(?P<field>[a-z_][a-z0-9_]*)`\s*\|(?P<type>[^|]*)\|(?P<default>[^|]*)\|")


def _table_rows(doc: str, heading: str) -> dict[str, str]:
    """``field -> default cell`` of the first 4-column field table after ``heading``."""
    text = (DOCS / doc).read_text()
    start = text.index(heading)
    rows: dict[str, str] = {}
    in_table = False
    for line in text[start:].splitlines()[1:]:
        if line.startswith("| field |"):
            in_table = True
            continue
        if in_table:
            if not line.startswith("|"):
                break
            m = ROW.match(line)
            if m:
                rows[m["field"]] = m["default"].strip()
    assert rows, f"no field table after {heading!r} in {doc}"
    return rows


def _parse_default(cell: str) -> Any:
    token = re.search(r"`([^`]+)`", cell)
    assert token, f"default cell {cell!r} has no `code` value"
    raw = token.group(1)
    if re.fullmatch(r"\d+/\d+", raw):
        a, b = raw.split("/")
        return int(a) / int(b)
    return ast.literal_eval(raw)


def _same(doc_value: Any, code_value: Any) -> bool:
    if isinstance(code_value, BaseModel):
        # a nested config default is documented as the dict of its non-default fields
        # (``{}`` = all of the nested config's defaults)
        if not isinstance(doc_value, dict):
            return False
        return type(code_value).model_validate(doc_value) == code_value
    if isinstance(code_value, float) or isinstance(doc_value, float):
        return (
            not isinstance(code_value, bool)
            and not isinstance(doc_value, bool)
            and math.isclose(float(doc_value), float(code_value), rel_tol=1e-9)
        )
    return bool(doc_value == code_value and type(doc_value) is type(code_value))


CONFIG_TABLES: list[tuple[type[BaseModel], str, str, set[str]]] = [
    (RuntimeConfig, "configuration.md", "## RuntimeConfig", set()),
    (Normalization, "configuration.md", "## Normalization", set()),
    (TrainConfig, "training.md", "## TrainConfig", set()),
    # robust training: every table lists the shared RobustConfig fields too
    (PlainConfig, "training.md", "### PlainConfig", set()),
    (ABLConfig, "training.md", "### ABLConfig", set()),
    (DLPConfig, "training.md", "### DLPConfig", set()),
    (GatePolicy, "validation.md", "## GatePolicy", set()),
    (DeploymentPolicy, "gate.md", "## DeploymentPolicy", set()),
    (AttackConfig, "attacks.md", "### Fields shared by every attack", set()),
    (BadNetsConfig, "attacks.md", "### BadNets", set(AttackConfig.model_fields)),
    (BlendedConfig, "attacks.md", "### Blended", set(AttackConfig.model_fields)),
    (WaNetConfig, "attacks.md", "### WaNet", set(AttackConfig.model_fields)),
    (SIGConfig, "attacks.md", "### SIG", set(AttackConfig.model_fields)),
    (ScanConfig, "scanning.md", "## ScanConfig", set()),
    # the base DetectorConfig field (score_slope) is listed in both detector tables
    (NeuralCleanseConfig, "scanning.md", "### NeuralCleanseConfig", set()),
    (MaxMarginConfig, "scanning.md", "### MaxMarginConfig", set()),
    (PixelConfig, "scanning.md", "### PixelConfig", set()),
    (WarpConfig, "scanning.md", "### WarpConfig", set()),
    (SmoothSignalConfig, "scanning.md", "### SmoothSignalConfig", set()),
    (PredictionShareConfig, "scanning.md", "### PredictionShareConfig", set()),
    # the StrategyConfig fields (max_steps, max_seconds) and, for NCUnlearnConfig, the
    # FinetuneConfig fields are listed in every strategy table
    (FinetuneConfig, "purification.md", "### FinetuneConfig", set()),
    (NCUnlearnConfig, "purification.md", "### NCUnlearnConfig", set()),
    (MCLConfig, "purification.md", "### MCLConfig", set()),
    (D3Config, "purification.md", "### D3Config", set()),
    (AutoConfig, "purification.md", "### AutoConfig", set()),
    (SAUConfig, "purification.md", "### SAUConfig", set()),
    # pruning: FinePruningConfig lists the FinetuneConfig fields too; ShapleyPruningConfig's
    # nested ``synthesis`` default is documented as ``{}`` (the SynthesisConfig defaults)
    (FinePruningConfig, "pruning.md", "### FinePruningConfig", set()),
    (ANPConfig, "pruning.md", "### ANPConfig", set()),
    (ShapleyPruningConfig, "pruning.md", "### ShapleyPruningConfig", set()),
    (SynthesisConfig, "pruning.md", "### SynthesisConfig", set()),
    (FleetDefaults, "scale.md", "#### `defaults`", set()),
    (FleetModel, "scale.md", "#### `models[]`", set()),
]


@pytest.mark.parametrize(
    ("model", "doc", "heading", "inherited"),
    CONFIG_TABLES,
    ids=[m.__name__ for m, *_ in CONFIG_TABLES],
)
def test_config_table_matches_code(
    model: type[BaseModel], doc: str, heading: str, inherited: set[str]
) -> None:
    rows = _table_rows(doc, heading)
    own = {k: f for k, f in model.model_fields.items() if k not in inherited}
    assert sorted(rows) == sorted(own), f"{doc} {heading}: table fields differ from the code"
    for name, field in own.items():
        cell = rows[name]
        if field.is_required():
            assert "required" in cell, f"{model.__name__}.{name} is required; docs say {cell!r}"
            continue
        documented = _parse_default(cell)
        # a default_factory (e.g. ``Field(default_factory=dict)``) is compared by its value
        default = field.get_default(call_default_factory=True, validated_data={})
        assert _same(documented, default), (
            f"{model.__name__}.{name}: docs default {documented!r}, code {default!r}"
        )


# --- CLI -------------------------------------------------------------------------------------


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    out: set[str] = set()
    for action in parser._actions:
        out.update(s for s in action.option_strings if s not in {"-h", "--help"})
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out |= _option_strings(sub)
    return out


def test_every_cli_option_is_documented() -> None:
    from hardenkit.cli import build_parser

    parser = build_parser()
    text = (DOCS / "cli.md").read_text()
    missing = sorted(opt for opt in _option_strings(parser) if f"`{opt}" not in text)
    assert not missing, f"docs/cli.md does not document {missing}"
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name in commands:
        assert f"## `hardenkit {name}`" in text, f"docs/cli.md has no section for {name!r}"
