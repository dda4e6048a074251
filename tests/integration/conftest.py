"""Session-scoped backdoored models for the integration tests (each trained once per session).

``badnets_model`` comes from tests/conftest.py; the other attacks use the same recipes
(``ATTACK_RECIPES`` / ``ATTACK_EPOCHS``) through ``train_backdoored``.
"""

from __future__ import annotations

import pytest

import hardenkit as hk
from hardenkit.attacks import BackdooredModel
from hardenkit.data import SyntheticSplits
from tests.conftest import train_backdoored
from tests.fixture_store import stored_training

# All-to-all BadNets (label y -> (y + 1) mod K). SmallCNN cannot learn this conditional rule
# on the synthetic data: its three 3x3 convs feed a global average pool and one Linear, and
# ASR stayed at 2-18% (8-20 epochs, 10 or 4 classes, 3x3 or 5x5 patch, 10-20% poisoning, and
# Blended too). CifarCNN (width 16: six convs, three pools) learns it. Setting chosen: 4
# classes x 500, a 5x5 white patch, 20% poisoning, 15 epochs — about 15 s of single-thread
# CPU. Measured ASR 0.897 / 0.897 / 0.902 / 0.882 for seeds 0-3 (BA 0.90-0.93); ASR cannot
# exceed clean class recognition by much, since the trigger must map each class separately.
ALL_TO_ALL_CLASSES = 4
ALL_TO_ALL_TRAIN_PER_CLASS = 500
ALL_TO_ALL_ATTACK = {"mode": "all-to-all", "patch_size": 5, "poison_rate": 0.2}
ALL_TO_ALL_EPOCHS = 15


# Scanner settings of the integration tests: 300 inversion images, 30 epochs -- ~30 s
# single-threaded on the 10-class SmallCNN.
NC = {"epochs": 30, "batch_size": 32}
SCAN = {"max_images": 300, "detector_options": {"neural-cleanse": NC}}


@pytest.fixture(scope="session")
def clean_budget(synthetic: SyntheticSplits, badnets_model: BackdooredModel) -> hk.ImageDataset:
    """The defender's clean data: 100 non-poisoned training images per class (20 %)."""
    idx = hk.data.stratified_indices(
        synthetic.train.labels, per_class=100, exclude=badnets_model.poisoned.poison_indices
    )
    return synthetic.train.subset(idx)


@pytest.fixture(scope="session")
def badnets_scan(badnets_model: BackdooredModel, clean_budget: hk.ImageDataset) -> hk.ScanResult:
    """Neural Cleanse + MM-BD on the BadNets model; ``combine="all"`` needs both to agree."""
    cfg = {**SCAN, "detectors": ["neural-cleanse", "mm-bd"], "combine": "all"}
    return hk.Scanner(badnets_model.model, 10, config=cfg).run(clean_budget.loader())


@pytest.fixture(scope="session")
def blended_model(synthetic: SyntheticSplits) -> BackdooredModel:
    return train_backdoored("blended", synthetic)


@pytest.fixture(scope="session")
def wanet_model(synthetic: SyntheticSplits) -> BackdooredModel:
    return train_backdoored("wanet", synthetic)


@pytest.fixture(scope="session")
def sig_model(synthetic: SyntheticSplits) -> BackdooredModel:
    return train_backdoored("sig", synthetic)


@pytest.fixture(scope="session")
def bpp_model(synthetic: SyntheticSplits) -> BackdooredModel:
    return train_backdoored("bpp", synthetic)


@pytest.fixture(scope="session")
def ftrojan_model(synthetic: SyntheticSplits) -> BackdooredModel:
    return train_backdoored("ftrojan", synthetic)


def make_all_to_all_data() -> SyntheticSplits:
    return hk.make_synthetic_dataset(
        num_classes=ALL_TO_ALL_CLASSES,
        train_per_class=ALL_TO_ALL_TRAIN_PER_CLASS,
        test_per_class=100,
    )


def train_all_to_all(data: SyntheticSplits) -> BackdooredModel:
    """The all-to-all recipe (the stored fixture ``all-to-all`` when its key matches)."""
    with stored_training("all-to-all"):
        return hk.make_backdoored_model(
            "badnets",
            data.train,
            test=data.test,
            arch=lambda: hk.create_model("cifar-cnn", num_classes=ALL_TO_ALL_CLASSES, width=16),
            attack_config=ALL_TO_ALL_ATTACK,
            train_config=hk.TrainConfig(
                epochs=ALL_TO_ALL_EPOCHS, batch_size=128, lr=0.05, augment=False
            ),
            runtime={"seed": 0, "device": "cpu"},
        )


@pytest.fixture(scope="session")
def all_to_all_data() -> SyntheticSplits:
    return make_all_to_all_data()


@pytest.fixture(scope="session")
def all_to_all_model(all_to_all_data: SyntheticSplits) -> BackdooredModel:
    return train_all_to_all(all_to_all_data)
