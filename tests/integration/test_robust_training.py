"""DLP trains a clean model from a 10 %-BadNets-poisoned synthetic set (seconds, one core).

Setting (measured ~20 s single-threaded for the three runs): 4 classes x 100 synthetic
training images, 10 % BadNets (5x5 patch, target 0), a width-8 ``small-cnn``, no crop/flip
(which on this small set keeps even plain training from planting the patch), batch 32.
Plain training on the poisoned set plants the backdoor (ASR ~0.8); DLP must bring the ASR to
at most 10 % with BA within 5 points of plain training on the clean part of the same set.
On this data the clean task is learned as fast as the backdoor, so DLP's first (lowest-loss)
isolation finds no poison; the re-scoring during semi-supervised fine-tuning (every epoch
here, ``rescore_every=1``) finds it from the high-loss end (measured: recall 0.00 → 0.93,
BA 0.92, ASR 0.04; plain on the clean part: BA 0.91). Only the high-loss end is re-scored
(``rescore_low_ratio=0``): with the low end too the suspected set grows to 55 % of the data and
its target-class concentration sits on the 1.25x "looks like poison" line (1.19x with one
thread, 1.27x with two); with the high end alone it is 40 % and 1.61-1.64x.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import hardenkit as hk
from hardenkit.data import PoisonedDataset, SyntheticSplits
from hardenkit.robust import RobustTrainer, TrainingResult
from hardenkit.triggers import Trigger

K = 4
COMMON: dict[str, Any] = {"batch_size": 32, "augment": False}
RT = {"device": "cpu", "seed": 0, "progress": "off"}


@pytest.fixture(scope="session")
def robust_data() -> SyntheticSplits:
    return hk.make_synthetic_dataset(num_classes=K, train_per_class=100, test_per_class=50)


@pytest.fixture(scope="session")
def robust_attack() -> hk.attacks.Attack:
    return hk.build_attack("badnets", poison_rate=0.1, target=0, patch_size=5)


@pytest.fixture(scope="session")
def robust_poisoned(
    robust_data: SyntheticSplits, robust_attack: hk.attacks.Attack
) -> PoisonedDataset:
    return robust_attack.poison(robust_data.train)


def _fit(
    strategy: str, cfg: dict[str, Any], train: hk.ImageDataset, test: hk.ImageDataset, t: Trigger
) -> TrainingResult:
    torch.manual_seed(0)
    model = hk.build_model("small-cnn", K, width=8)
    return RobustTrainer(model, strategy, config={**cfg, **COMMON}, runtime=RT).fit(
        train, test=test, trigger=t, target=0
    )


@pytest.fixture(scope="session")
def plain_poisoned(
    robust_poisoned: PoisonedDataset, robust_data: SyntheticSplits, robust_attack: hk.attacks.Attack
) -> TrainingResult:
    return _fit(
        "plain", {"epochs": 10}, robust_poisoned, robust_data.test, robust_attack.build_trigger()
    )


@pytest.fixture(scope="session")
def plain_clean_part(
    robust_poisoned: PoisonedDataset, robust_data: SyntheticSplits, robust_attack: hk.attacks.Attack
) -> TrainingResult:
    keep = torch.ones(len(robust_poisoned), dtype=torch.bool)
    keep[robust_poisoned.poison_indices] = False
    clean = robust_poisoned.subset(torch.nonzero(keep).flatten())
    return _fit("plain", {"epochs": 10}, clean, robust_data.test, robust_attack.build_trigger())


@pytest.fixture(scope="session")
def dlp_run(
    robust_poisoned: PoisonedDataset, robust_data: SyntheticSplits, robust_attack: hk.attacks.Attack
) -> TrainingResult:
    return _fit(
        "dlp",
        {"sl_epochs": 3, "ssl_epochs": 7, "rescore_every": 1, "rescore_low_ratio": 0.0},
        robust_poisoned,
        robust_data.test,
        robust_attack.build_trigger(),
    )


def test_plain_training_plants_the_backdoor(plain_poisoned: TrainingResult) -> None:
    assert (plain_poisoned.report.asr or 0.0) >= 0.5, plain_poisoned.report.summary()


def test_dlp_removes_the_backdoor_and_keeps_accuracy(
    dlp_run: TrainingResult, plain_clean_part: TrainingResult
) -> None:
    rep = dlp_run.report
    assert rep.asr is not None
    assert rep.asr <= 0.10, rep.summary()
    assert rep.ba is not None
    assert plain_clean_part.report.ba is not None
    assert rep.ba >= plain_clean_part.report.ba - 0.05, (
        f"DLP BA {rep.ba:.3f} vs plain on the clean part {plain_clean_part.report.ba:.3f}"
    )


def test_dlp_isolates_the_poison(dlp_run: TrainingResult) -> None:
    iso = dlp_run.report.isolation
    assert iso is not None
    assert iso.poison_indices_source == "dataset"
    assert iso.recall is not None
    assert iso.recall >= 0.8, dlp_run.report.summary()
    assert iso.dominant_class == 0
    assert iso.looks_like_poison
    assert dlp_run.report.status == "trained"
    assert dlp_run.trusted
    assert [s.name for s in dlp_run.report.stages] == [
        "supervised",
        "active-unlearning",
        "active-semi-supervised",
    ]
