"""The gate on real backdoored and clean models: a backdoor fails a no-repair policy; the
default (repair) policy removes it and ships the repaired model; a clean model ships
unrepaired. Seconds on the 2-core CPU: the default policy's quick scans."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from torch import nn

import hardenkit as hk
from hardenkit.attacks import BackdooredModel
from hardenkit.data import SyntheticSplits
from hardenkit.gate import Gate, GateReport


def _rules(report: GateReport) -> dict[str, str]:
    return {r.rule_id: r.status for r in report.rules}


def test_a_backdoor_fails_a_no_repair_policy(
    badnets_model: BackdooredModel,
    clean_budget: hk.ImageDataset,
    synthetic: SyntheticSplits,
    badnets_scan: hk.ScanResult,
) -> None:
    bd = badnets_model
    res = Gate({"repair": "never", "export_onnx": False, "fail_on_skipped": False}).run(
        bd.model,
        clean_budget.loader(),
        synthetic.test.loader(),
        scan=badnets_scan,
        known_triggers={"red-team": (bd.trigger, bd.target)},
    )
    rules = _rules(res.report)
    assert not res.passed
    assert res.exit_code == 1
    assert rules["HK-SCAN-001"] == "fail"
    assert rules["HK-ASR-001"] == "fail"  # the recovered trigger still works
    assert rules["HK-ASR-002"] == "fail"  # and so does the real one
    assert rules["HK-ASR-003"] == "pass"  # to its target: not a redirection
    assert rules["HK-ONNX-001"] == "skipped"
    assert not res.report.repaired
    assert res.model is not bd.model  # a copy ships, never the caller's object


@pytest.fixture(scope="module")
def repaired_gate(
    badnets_model: BackdooredModel,
    clean_budget: hk.ImageDataset,
    synthetic: SyntheticSplits,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[hk.gate.GateResult, Path]:
    """The default policy end to end (its own quick scan, ``auto`` repair, re-scan, ONNX)."""
    bd = badnets_model
    before = {k: v.clone() for k, v in bd.model.state_dict().items()}
    res = Gate(runtime={"device": "cpu", "seed": 0}).run(
        bd.model,
        clean_budget.loader(),
        synthetic.test.loader(),
        known_triggers={"red-team": (bd.trigger, bd.target)},
    )
    after = bd.model.state_dict()
    assert all(bool((before[k] == after[k]).all()) for k in before)  # input untouched
    out = tmp_path_factory.mktemp("gate") / "out"
    res.save(out)
    return res, out


def test_the_default_policy_repairs_the_backdoor_and_ships_the_repaired_model(
    repaired_gate: tuple[hk.gate.GateResult, Path],
) -> None:
    res, _ = repaired_gate
    rep = res.report
    rules = _rules(rep)
    assert rep.input_scan is not None
    assert rep.input_scan["flagged_labels"][:1] == [0]  # the planted target, found
    assert rep.repaired
    assert rep.purification_status == "purified"
    assert rules["HK-REPAIR-001"] == "pass"
    assert rules["HK-BA-002"] == "pass"
    real = next(m for m in rep.triggers if m.source == "known:red-team")
    assert real.input_asr is not None
    assert real.input_asr > 0.9
    assert real.output_asr is not None
    assert real.output_asr <= 0.1  # the planted backdoor is gone
    assert rules["HK-ASR-002"] == "pass"
    assert rules["HK-ASR-003"] == "pass"  # removed, not redirected
    assert real.output_top_share is not None
    assert real.output_top_share < 0.6
    assert rep.input_model.sha256 != rep.output_model.sha256
    assert rep.onnx is not None
    assert rep.onnx["provider"] == "CPUExecutionProvider"
    assert rules["HK-ONNX-001"] == rules["HK-ONNX-002"] == "pass"
    # the decision is the re-scan's: the shipped model flags no label
    assert rep.rescan is not None
    assert rep.rescan["flagged_labels"] == []
    assert rules["HK-SCAN-001"] == "pass"
    assert res.passed, rep.summary()
    assert res.exit_code == 0


def test_the_gate_writes_every_report(repaired_gate: tuple[hk.gate.GateResult, Path]) -> None:
    res, out = repaired_gate
    for name in ("gate.json", "junit.xml", "gate.sarif", "summary.md", "model.safetensors"):
        assert (out / name).is_file(), name
    assert (out / "model.onnx").is_file()
    assert (out / "scan" / "report.json").is_file()
    assert (out / "rescan" / "report.json").is_file()
    again = GateReport.model_validate_json((out / "gate.json").read_text())
    assert again.passed == res.passed
    assert set(again.files) >= {"model.safetensors", "model.onnx", "junit.xml", "gate.sarif"}
    assert again.onnx is not None
    assert again.files["model.onnx"] == again.onnx["sha256"]
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    assert suite is not None
    assert len(suite.findall("testcase")) == len(again.rules)
    assert suite.get("failures") == str(len(again.failed_rules))
    results = json.loads((out / "gate.sarif").read_text())["runs"][0]["results"]
    assert sorted(r["ruleId"] for r in results) == sorted(r.rule_id for r in again.failed_rules)
    # the shipped weights load back into the architecture
    m = hk.load_model_weights(hk.create_model("small-cnn", 10), out / "model.safetensors")
    assert isinstance(m, nn.Module)


def test_a_clean_model_ships_without_repair(
    clean_model: nn.Module, synthetic: SyntheticSplits
) -> None:
    idx = hk.data.stratified_indices(synthetic.train.labels, per_class=100, seed=3)
    res = Gate({"export_onnx": False, "fail_on_skipped": False}).run(
        clean_model, synthetic.train.subset(idx).loader(), synthetic.test.loader()
    )
    assert res.report.input_scan is not None
    assert res.report.input_scan["flagged_labels"] == [], res.report.summary()
    assert not res.report.repaired
    assert res.passed, res.report.summary()
