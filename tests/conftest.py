"""Shared, seeded, session-scoped fixtures: synthetic data and backdoored models trained once."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import hardenkit as hk
from hardenkit.attacks import BackdooredModel
from hardenkit.data import SyntheticSplits
from tests.fixture_store import stored_training

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HARDENKIT_DISABLE_PLUGINS", "1")

# One intra-op thread in every run, with or without pytest-xdist: CPU reductions sum in an
# order that depends on the thread count, so a trained fixture's numbers (and a bound set on
# them) differ between `pytest -n 2` and a plain `pytest` of one file; and under xdist two
# workers x two threads would oversubscribe the 2-core machine. The bounds were measured so.
torch.set_num_threads(1)

CIFAR_ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpeg.tar.gz"

# Recipes that plant each attack reliably on the synthetic data (measured: ASR >= 95%).
# WaNet's default sub-pixel warp (s=0.5) barely changes the smooth synthetic images, so the
# tests use a stronger warp with a lighter noise mode; CIFAR benchmarks use the defaults.
ATTACK_RECIPES: dict[str, dict[str, object]] = {
    "badnets": {},
    "blended": {},
    "sig": {},
    "wanet": {"s": 2.0, "cross_ratio": 0.5},
    "bpp": {},
    # FTrojan's published 30/255 planted 2.2 % ASR here (8 epochs, stop 59): these images'
    # own high-frequency texture hides it; 80/255 planted 98.2 %
    "ftrojan": {"magnitude": 80 / 255},
}
ATTACK_EPOCHS = {"badnets": 8, "blended": 8, "sig": 8, "wanet": 10, "bpp": 8, "ftrojan": 8}


# Under pytest-xdist (the README runs `-n 2 --dist loadfile`) every test file goes to one
# worker, and the files named here share one: they all use the session's `badnets_scan` (a
# minute of Neural Cleanse + MM-BD), which then runs once, not on both workers.
SAME_WORKER = {
    "tests/integration/test_scan_detects.py": "badnets-scan",
    "tests/integration/test_gate.py": "badnets-scan",
    "tests/integration/test_purify_removes.py": "badnets-scan",
}
# The longest work units, longest first (seconds on the 2-core machine, `--durations=0`):
# they start first, so the short files fill the end and neither worker idles long.
LONGEST_FIRST = (
    "tests/test_examples.py",
    "badnets-scan",
    "tests/integration/test_pruning_removes.py",
    "tests/integration/test_gate_cli.py",
    "tests/test_docs_commands.py",
    "tests/cli/test_cli.py",
    "tests/integration/test_scan_pixel.py",
    "tests/unit/test_purify.py",
)


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: unknown (and unused) without it
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """``--dist loadfile``, with the files of :data:`SAME_WORKER` as one work unit and the
    units of :data:`LONGEST_FIRST` handed out first.

    (``--dist loadgroup`` with ``xdist_group`` marks would group the files too, but with
    pytest 9 and pytest-xdist 3.8 its marks do not reach the scheduler: marked tests split.)
    """
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SharedFixtureScheduling(LoadFileScheduling):
        ordered = False

        def _split_scope(self, nodeid: str) -> str:
            path = super()._split_scope(nodeid)
            return SAME_WORKER.get(path, path)

        def _assign_work_unit(self, node: Any) -> None:
            if not self.ordered:  # the first hand-out: the queue is complete
                self.ordered = True
                rank = {unit: i for i, unit in enumerate(LONGEST_FIRST)}
                units = sorted(self.workqueue.items(), key=lambda u: rank.get(u[0], len(rank)))
                self.workqueue.clear()
                self.workqueue.update(units)
            super()._assign_work_unit(node)

    return SharedFixtureScheduling(config, log)  # type: ignore[arg-type]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_cifar = pytest.mark.skip(reason=f"CIFAR-10 archive not found at {CIFAR_ARCHIVE}")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "cifar" in item.keywords and not CIFAR_ARCHIVE.is_file():
            item.add_marker(skip_cifar)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _restore_hardenkit_logging() -> Iterator[None]:
    """CLI tests call ``main()``, which configures the ``hardenkit`` logger with a handler on
    the (captured) stderr of that test; restore the library default afterwards so a later
    test does not log into a closed stream."""
    import logging

    logger = logging.getLogger("hardenkit")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


@pytest.fixture(autouse=True)
def _hardenkit_warnings_are_errors() -> None:
    """Our own warnings fail the test (set here, not in the ini file: an ini filter naming
    ``hardenkit.errors.HardenkitWarning`` imports hardenkit before coverage starts)."""
    warnings.simplefilter("error", hk.HardenkitWarning)


@pytest.fixture(scope="session")
def synthetic() -> SyntheticSplits:
    """10-class synthetic data: 5,000 train / 1,000 test images (3x32x32)."""
    return hk.make_synthetic_dataset(num_classes=10, train_per_class=500, test_per_class=100)


@pytest.fixture(scope="session")
def tiny_synthetic() -> SyntheticSplits:
    """4-class synthetic data for fast unit tests: 160 train / 40 test images."""
    return hk.make_synthetic_dataset(num_classes=4, train_per_class=40, test_per_class=10)


def train_backdoored(attack: str, data: SyntheticSplits) -> BackdooredModel:
    """``attack``'s recipe on ``data`` (the stored fixture ``attack`` when its key matches)."""
    cfg = ATTACK_RECIPES.get(attack, {})
    with stored_training(attack):
        return hk.make_backdoored_model(
            attack,
            data.train,
            test=data.test,
            arch="small-cnn",
            attack_config=cfg,
            train_config=hk.TrainConfig(
                epochs=ATTACK_EPOCHS.get(attack, 8), batch_size=128, lr=0.05, augment=False
            ),
            runtime={"seed": 0, "device": "cpu"},
        )


def train_clean(data: SyntheticSplits) -> nn.Module:
    """A SmallCNN trained like ``badnets_model`` (same recipe and seed) on clean data."""
    torch.manual_seed(0)
    model = hk.create_model("small-cnn", num_classes=10)
    with stored_training("clean"):
        hk.train_model(
            model,
            *data.train.tensors(),
            hk.TrainConfig(epochs=ATTACK_EPOCHS["badnets"], batch_size=128, lr=0.05, augment=False),
            runtime={"seed": 0, "device": "cpu"},
        )
    return model.eval()


@pytest.fixture(scope="session")
def clean_model(synthetic: SyntheticSplits) -> nn.Module:
    """A SmallCNN trained like ``badnets_model`` (same recipe and seed) on clean data."""
    return train_clean(synthetic)


@pytest.fixture(scope="session")
def badnets_model(synthetic: SyntheticSplits) -> BackdooredModel:
    """A SmallCNN with a BadNets backdoor (target 0) trained once per session."""
    return train_backdoored("badnets", synthetic)
