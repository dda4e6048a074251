"""Purification removes a planted backdoor: ASR measured with the *real* trigger on the test set.

Clean budget: 100 non-poisoned training images per class (``clean_budget``); the trigger the
strategies use is the one the Scanner recovered (``badnets_scan``), never the real one.
Measured when these thresholds were set (seed 0, one thread): BadNets BA 90.3 / ASR 99.2 ->
mcl 87.4 / 0.7, mcl + ce_weight 1 89.2 / 2.0, nc-unlearn 89.4 / 9.2, finetune (100 epochs)
see the assertion's comment. MCL's hardened default (anchor 3, best validated epoch), one
thread as every test runs (conftest): BA 90.2 -> 91.0 / 90.0 / 90.1, ASR 6.22 / 5.67 / 5.33 %
with runtime seeds 0 / 1 / 2. The 14.1 % that had this case marked xfail (2026-12-01) did
not reproduce at one thread, and CI (one thread per worker) reported it XPASS every run since.
"""

from __future__ import annotations

import pytest

import hardenkit as hk
from hardenkit.attacks import BackdooredModel
from hardenkit.data import SyntheticSplits
from hardenkit.reports import ModelFingerprint


def _measure(model: object, bd: BackdooredModel, data: SyntheticSplits) -> hk.ValidationReport:
    return hk.Validator(model).run(data.test.loader(), trigger=bd.trigger, target=bd.target)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def before(badnets_model: BackdooredModel, synthetic: SyntheticSplits) -> hk.ValidationReport:
    rep = _measure(badnets_model.model, badnets_model, synthetic)
    assert rep.asr is not None
    assert rep.asr >= 0.9
    return rep


@pytest.mark.parametrize(
    ("strategy", "config", "max_asr", "max_ba_drop"),
    [
        ("mcl", {"ce_weight": 1.0}, 0.10, 0.03),
        ("mcl", {}, 0.10, 0.04),
        ("nc-unlearn", {}, 0.10, 0.03),
    ],
    ids=["mcl-ce", "mcl-code-default", "nc-unlearn"],
)
def test_trigger_based_strategies_remove_badnets(
    strategy: str,
    config: dict[str, object],
    max_asr: float,
    max_ba_drop: float,
    badnets_model: BackdooredModel,
    badnets_scan: hk.ScanResult,
    clean_budget: hk.ImageDataset,
    synthetic: SyntheticSplits,
    before: hk.ValidationReport,
) -> None:
    fp = ModelFingerprint.of(badnets_model.model)
    res = hk.Purifier(badnets_model.model, strategy, config=config).run(
        clean_budget.loader(), scan=badnets_scan
    )
    assert res.status == "purified"
    after = _measure(res.model, badnets_model, synthetic)
    assert after.asr is not None
    assert after.asr <= max_asr, res.report.summary()
    assert before.ba - after.ba <= max_ba_drop, res.report.summary()
    # the inverted trigger's held-out ASR fell too, and the caller's model is untouched
    assert res.report.trigger_asr[0].after < res.report.trigger_asr[0].before
    assert ModelFingerprint.of(badnets_model.model) == fp
    # no flagged label's trigger adds more than 10 points of held-out ASR: the trigger guard
    guard = res.report.trigger_guard
    assert guard is not None
    assert guard.passed is True, res.report.summary()
    assert guard.labels == badnets_scan.flagged_labels[:1]  # the most anomalous: the target


def test_a_repair_that_leaves_the_known_trigger_is_backdoor_remains(
    badnets_model: BackdooredModel,
    clean_budget: hk.ImageDataset,
    synthetic: SyntheticSplits,
    before: hk.ValidationReport,
) -> None:
    # a gentle fine-tuning with the *real* trigger as the known one keeps BA and leaves the
    # patch: before the trigger guard (stop 54) this was reported "purified", exit 0
    bd = badnets_model
    assert isinstance(bd.target, int)
    k = synthetic.train.num_classes
    scan = hk.ScanResult.from_triggers({bd.target: bd.trigger}, model=bd.model, num_classes=k)
    cfg = {"epochs": 1, "lr": 1e-4}
    res = hk.Purifier(bd.model, "finetune", config=cfg).run(clean_budget.loader(), scan=scan)
    after = _measure(res.model, bd, synthetic)
    assert after.asr is not None
    assert after.asr >= 0.5
    assert before.ba - after.ba <= 0.03
    assert res.status == "backdoor-remains", res.report.summary()
    assert not res.trusted
    assert not res.purified
    guard = res.report.trigger_guard
    assert guard is not None
    assert guard.passed is False
    assert guard.label == bd.target
    row = res.report.trigger_asr[0]
    assert guard.added_asr == pytest.approx(row.after - (row.after_without_trigger or 0.0))
    assert guard.added_asr > 0.10
    assert any(n.startswith(f"BACKDOOR REMAINS: the known trigger of label {bd.target}")
               for n in res.report.notes)  # fmt: skip
    assert "BACKDOOR REMAINS" in res.report.summary()
    assert res.report.utility_guard is not None
    assert res.report.utility_guard.passed
    # the same weights with the guard off (as the gate runs it: HK-ASR-001 judges instead)
    off = hk.Purifier(bd.model, "finetune", config=cfg, max_trigger_asr=None).run(
        clean_budget.loader(), scan=scan
    )
    assert off.status == "purified"
    assert off.report.trigger_guard is None
    assert ModelFingerprint.of(off.model) == ModelFingerprint.of(res.model)


def test_finetune_within_its_known_limits(
    badnets_model: BackdooredModel,
    clean_budget: hk.ImageDataset,
    synthetic: SyntheticSplits,
    before: hk.ValidationReport,
) -> None:
    res = hk.Purifier(badnets_model.model, "finetune").run(clean_budget.loader())
    after = _measure(res.model, badnets_model, synthetic)
    assert res.scan is None  # fine-tuning needs no trigger and does not scan
    assert after.asr is not None
    assert before.asr is not None
    # Plain fine-tuning weakens a patch backdoor but (on 900 images) does not reliably
    # remove it: the known limit. It must at least halve the ASR without hurting BA.
    assert after.asr <= before.asr / 2, res.report.summary()
    assert before.ba - after.ba <= 0.03
