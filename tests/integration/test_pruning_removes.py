"""Pruning strategies on a planted BadNets backdoor (synthetic data, real trigger on the test set).

The model is a SmallCNN of width 32 (224 BatchNorm channels): pruning needs some redundancy,
and on the width-16 SmallCNN of the other integration tests (112 channels) every channel that
carries the trigger also carries clean features (one Shapley-selected channel there, zeroed,
cost 4.6 BA points). Clean budget: 100 non-poisoned training images per class.

Measured when the thresholds were set (seed 0, 2 threads; see the assertions' comments).
"""

from __future__ import annotations

import pytest

import hardenkit as hk
from hardenkit.attacks import BackdooredModel
from hardenkit.data import SyntheticSplits
from hardenkit.models import SmallCNN
from hardenkit.reports import ModelFingerprint
from tests.fixture_store import stored_training


def train_wide(data: SyntheticSplits) -> BackdooredModel:
    """BadNets on the width-32 SmallCNN (the stored fixture ``badnets-wide`` when its key
    matches: tests/fixture_store.py)."""
    with stored_training("badnets-wide"):
        return hk.make_backdoored_model(
            "badnets",
            data.train,
            test=data.test,
            arch=lambda: SmallCNN(num_classes=10, width=32),
            train_config=hk.TrainConfig(epochs=8, batch_size=128, lr=0.05, augment=False),
        )


@pytest.fixture(scope="module")
def wide(synthetic: SyntheticSplits) -> BackdooredModel:
    return train_wide(synthetic)


@pytest.fixture(scope="module")
def budget(synthetic: SyntheticSplits, wide: BackdooredModel) -> hk.ImageDataset:
    idx = hk.data.stratified_indices(
        synthetic.train.labels, per_class=100, exclude=wide.poisoned.poison_indices
    )
    return synthetic.train.subset(idx)


def _measure(model: object, bd: BackdooredModel, data: SyntheticSplits) -> hk.ValidationReport:
    return hk.Validator(model).run(data.test.loader(), trigger=bd.trigger, target=bd.target)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def before(wide: BackdooredModel, synthetic: SyntheticSplits) -> hk.ValidationReport:
    rep = _measure(wide.model, wide, synthetic)
    assert rep.asr is not None
    assert rep.asr >= 0.95
    return rep


def test_fine_pruning_removes_badnets(
    wide: BackdooredModel,
    budget: hk.ImageDataset,
    synthetic: SyntheticSplits,
    before: hk.ValidationReport,
) -> None:
    # 20 fine-tuning epochs instead of 100 keep the test short
    fp = ModelFingerprint.of(wide.model)
    res = hk.Purifier(wide.model, "fine-pruning", config={"epochs": 20}).run(budget.loader())
    after = _measure(res.model, wide, synthetic)
    assert after.asr is not None
    assert after.asr <= 0.10, res.report.summary()
    assert before.ba - after.ba <= 0.05, res.report.summary()
    rec = res.report.details["pruning"]
    assert rec["unit"] == "linear-in"
    assert 0 < rec["pruned"] < rec["total"]
    # the pruned input columns of the last layer are exactly zero after fine-tuning
    cols = rec["layers"]["linear"]
    assert float(res.model.linear.weight.detach()[:, cols].abs().max()) == 0.0  # type: ignore[union-attr]
    assert res.report.details["selection"]["on"] == "validation split of the clean budget"
    assert ModelFingerprint.of(wide.model) == fp


def test_anp_removes_badnets_with_oracle_free_threshold(
    wide: BackdooredModel,
    budget: hk.ImageDataset,
    synthetic: SyntheticSplits,
    before: hk.ValidationReport,
) -> None:
    # 75 mask iterations instead of 2,000 keep the test short; measured with 300: 26 of 224
    # channels, BA 89.9 -> 88.5, ASR 99.4 -> 2.4 (python -m benchmarks.pruning_synthetic); with
    # 150 (one thread): 26 / 28 channels, BA 89.9 -> 88.0 / 86.5, ASR 99.4 -> 1.4 / 5.4 (runtime
    # seeds 0 / 1); with 75 (seed 0, stop 47): 23 channels, BA 89.9 -> 88.4, ASR 2.6, 25 s
    # against 50 s with 150 (python -m benchmarks.pruning_test_budgets --strategy anp)
    res = hk.Purifier(wide.model, "anp", config={"iterations": 75}).run(budget.loader())
    after = _measure(res.model, wide, synthetic)
    assert after.asr is not None
    assert after.asr <= 0.10, res.report.summary()
    assert before.ba - after.ba <= 0.05, res.report.summary()
    d = res.report.details
    assert d["threshold"] is not None
    assert d["pruning"]["unit"] == "bn"
    assert d["selection"]["on"] == "validation split of the clean budget"


def test_shapley_pruning_with_one_image_per_class(
    wide: BackdooredModel,
    synthetic: SyntheticSplits,
    before: hk.ValidationReport,
) -> None:
    # 10 clean images in all; no held-out split (holdout_fraction=0)
    idx = hk.data.stratified_indices(
        synthetic.train.labels, per_class=1, exclude=wide.poisoned.poison_indices
    )
    shots = synthetic.train.subset(idx)
    # 50 permutations instead of 100: the same 7 channels, BA 89.9 -> 88.4, ASR 2.3 (seed 0,
    # stop 47; 78 s against 93 s, most of it the scan; python -m
    # benchmarks.pruning_test_budgets --strategy shapley-pruning)
    res = hk.Purifier(
        wide.model, "shapley-pruning", holdout_fraction=0, config={"max_permutations": 50}
    ).run(shots.loader())
    after = _measure(res.model, wide, synthetic)
    rep = res.report
    # nothing held out and one image per class (no validation split): BA is not measured,
    # so the repair is honest about it; the test set below measures it
    assert res.status == "unverified", rep.summary()
    assert rep.ba_before is None  # nothing held out: not measured, not invented
    assert rep.clean_images == {"train": 10, "validation": 0, "holdout": 0}
    assert rep.details["data"] == {"source": "given", "images": 10, "with_augmented_copies": 50}
    assert rep.details["scan"]["flagged_labels"] == [wide.target]
    rec = rep.details["pruning"]
    assert 0 < rec["pruned"] <= 0.05 * rec["total"]
    assert after.asr is not None
    assert before.asr is not None
    assert rec["ablation"] == "mean"
    assert rep.details["ablation"]["activations"] == dict.fromkeys(
        ["block1.1", "block2.1", "block3.1"], "relu"
    )
    # measured (python -m benchmarks.pruning_synthetic): 7 of 224 channels mean-ablated;
    # BA 89.9 -> 88.2, ASR 99.4 -> 4.0 (zero ablation, the other row there: 4 channels,
    # BA 84.8, ASR 13.6 — it misses this bar)
    assert after.asr <= 0.10, rep.summary()
    assert before.ba - after.ba <= 0.05, rep.summary()


def test_shapley_pruning_data_free_runs_end_to_end(
    wide: BackdooredModel,
    budget: hk.ImageDataset,
    synthetic: SyntheticSplits,
    before: hk.ValidationReport,
) -> None:
    # shortened synthesis / inversion / estimation to keep the test near a minute; with
    # max_permutations 50 and the default synthesis and inversion it flagged label 0 from
    # the 40 synthesised images and mean-ablated 4 of 224 channels: test BA 89.9 -> 89.9, ASR
    # 99.4 -> 56.6 (a partial repair; python -m benchmarks.pruning_synthetic)
    cfg = {
        "max_permutations": 20,
        "augment_copies": 1,
        "synthesis": {"images_per_class": 2, "steps": 100},
        "scan": {"detector_options": {"neural-cleanse": {"epochs": 60}}},
    }
    res = hk.Purifier(wide.model, "shapley-pruning", input_shape=(3, 32, 32), config=cfg).run(
        None, holdout_loader=budget.loader()
    )
    rep = res.report
    data = rep.details["data"]
    assert data["source"] == "synthesized"
    assert data["images"] == 20
    assert data["with_augmented_copies"] == 40
    assert rep.clean_images["train"] == 0
    assert rep.ba_before is not None  # measured on the given held-out images
    assert any("data-free" in n for n in rep.notes)
    after = _measure(res.model, wide, synthetic)
    print(rep.summary(), f"\ntest BA {after.ba:.3f} ASR {after.asr}")
    if res.status == "nothing-to-purify":
        assert ModelFingerprint.of(res.model) == ModelFingerprint.of(wide.model)
        assert rep.details["scan"]["verdict"] != "backdoored"
    else:
        # this short run prunes a few channels: a partial repair (real test ASR 83 % at stop
        # 54, 61 % at stop 61). The trigger guard on the *inverted* trigger sits near its
        # 10-point bound here (14 points at stop 54; 9.7 at stop 61, where it passed), so stop 62
        # added the recheck: label 0 inverted again on the pruned model is still flagged against
        # the scan's other labels -> backdoor-remains. The status must agree with both, and a
        # repair that left the real trigger working must not read "purified".
        guard, recheck = rep.trigger_guard, rep.recheck
        assert guard is not None, rep.summary()
        assert recheck is not None, rep.summary()
        assert recheck.skipped is None, rep.summary()
        assert recheck.rows, rep.summary()
        ok = guard.passed is not False and recheck.passed is not False
        assert res.status == ("purified" if ok else "backdoor-remains"), rep.summary()
        assert after.asr is not None
        if after.asr > 0.5:
            assert res.status != "purified", rep.summary()
        assert rep.details["pruning"]["pruned"] > 0
        assert before.asr is not None
        assert after.asr < before.asr, rep.summary()
