"""The committed test fixtures (tests/fixture_store.py): a stored model is the trained model, bit
for bit; a changed recipe trains again and says so; the committed index matches its files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import hardenkit as hk
from hardenkit.data import SyntheticSplits
from tests import fixture_store as fs

CFG = hk.TrainConfig(epochs=1, batch_size=32, lr=0.05, augment=False)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(fs, "STORE", tmp_path)
    monkeypatch.setattr(fs, "INDEX", tmp_path / "index.json")
    return tmp_path


def _train(data: SyntheticSplits, cfg: hk.TrainConfig = CFG) -> hk.attacks.BackdooredModel:
    with fs.stored_training("tiny"):
        return hk.make_backdoored_model(
            "badnets", data.train, arch="small-cnn", train_config=cfg, runtime={"seed": 0}
        )


def test_a_stored_fixture_loads_the_trained_weights(
    store: Path, tiny_synthetic: SyntheticSplits, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(fs.REBUILD_ENV, "1")
    trained = _train(tiny_synthetic)
    assert (store / "tiny.safetensors").is_file()
    monkeypatch.delenv(fs.REBUILD_ENV)
    calls: list[int] = []
    real = fs._real_train_model
    monkeypatch.setattr(fs, "_real_train_model", lambda *a, **k: calls.append(1) or real(*a, **k))
    loaded = _train(tiny_synthetic)
    assert calls == []  # loaded, not trained
    for (k, a), (_, b) in zip(
        trained.model.state_dict().items(), loaded.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), k
    convs = [p for p in loaded.model.parameters() if p.dim() == 4]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)  # as trained
    assert not loaded.model.training
    assert loaded.history.epochs[0].loss == trained.history.epochs[0].loss
    assert hk.train_model is real  # the patch is undone


def test_a_changed_recipe_trains_and_warns(
    store: Path, tiny_synthetic: SyntheticSplits, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(fs.REBUILD_ENV, "1")
    _train(tiny_synthetic)
    monkeypatch.delenv(fs.REBUILD_ENV)
    other = CFG.model_copy(update={"lr": 0.01})
    with pytest.warns(fs.StaleFixtureWarning, match="tiny"):
        retrained = _train(tiny_synthetic, other)
    fresh = hk.make_backdoored_model(
        "badnets", tiny_synthetic.train, arch="small-cnn", train_config=other, runtime={"seed": 0}
    )
    for (k, a), (_, b) in zip(
        retrained.model.state_dict().items(), fresh.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), k


def test_the_committed_index_names_its_files() -> None:
    index = json.loads(fs.INDEX.read_text())
    names = {"badnets", "blended", "wanet", "sig", "bpp", "ftrojan", "clean", "badnets-wide",
             "all-to-all"}  # fmt: skip
    assert set(index) == names
    for name, record in index.items():
        assert (fs.STORE / f"{name}.safetensors").is_file(), name
        assert len(record["key"]) == 32
        assert record["history"]["epochs"], name
