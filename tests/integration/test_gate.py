"""The gate on real backdoored and clean models: a backdoor fails a no-repair policy; a clean
model ships unrepaired. The default (repair) policy end to end — the backdoor removed, the
repaired model shipped, every report file — is tests/integration/test_gate_cli.py's pass run
(one run of the default policy serves both the decision and the command line)."""

from __future__ import annotations

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
    # nothing was repaired: no image changed its prediction, so the drop's paired interval
    # is a narrow band around 0 (stop 55)
    assert res.report.ba_drop_interval is not None
    lo, hi = res.report.ba_drop_interval
    assert -0.01 < lo < 0 < hi < 0.01


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
