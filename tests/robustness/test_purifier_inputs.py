"""The Purifier with odd models: frozen, compiled, wrapped — typed errors or plain results."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import hardenkit as hk
from hardenkit.scan import ScanResult
from hardenkit.testing import BackdoorFixture

from .conftest import unchanged

CPU = {"seed": 0, "device": "cpu"}


@pytest.mark.parametrize("strategy", ["finetune", "mcl", "nc-unlearn", "d3", "sau", "fine-pruning"])
def test_no_trainable_parameter_is_a_typed_error(tiny_fx: BackdoorFixture, strategy: str) -> None:
    bd = tiny_fx.backdoored
    frozen = copy.deepcopy(bd.model).requires_grad_(False)
    scan = ScanResult.from_triggers(
        {0: bd.trigger}, model=frozen, num_classes=4, trigger_asr={0: 1.0}
    )
    with unchanged(frozen), pytest.raises(hk.ModelCompatibilityError, match="requires_grad"):
        hk.Purifier(frozen, strategy, config={"epochs": 1}, runtime=CPU).run(
            tiny_fx.data.train.loader(), scan=scan
        )


def test_d3_refuses_a_frozen_layer_it_would_reinitialise(tiny_fx: BackdoorFixture) -> None:
    """D3 warm-starts its layer far from the original and trains it back: a frozen head would
    stay random (before stop 43: a silently random classifier or a raw ValueError)."""
    model = copy.deepcopy(tiny_fx.backdoored.model)
    head = hk.models.find_last_linear(model)[1]
    head.requires_grad_(False)
    with unchanged(model), pytest.raises(hk.ModelCompatibilityError, match="frozen"):
        hk.Purifier(model, "d3", config={"epochs": 1}, runtime=CPU).run(tiny_fx.data.train.loader())


def test_fine_pruning_with_a_frozen_backbone_prunes_and_tunes_the_head(
    tiny_fx: BackdoorFixture,
) -> None:
    """A transfer-learning model (only the classifier trains) is fine-pruned without error
    (before stop 43: a RuntimeError from a gradient hook on a frozen weight)."""
    model = copy.deepcopy(tiny_fx.backdoored.model).requires_grad_(False)
    name, head = hk.models.find_last_linear(model)
    head.requires_grad_(True)
    with unchanged(model):
        res = hk.Purifier(model, "fine-pruning", config={"epochs": 1}, runtime=CPU).run(
            tiny_fx.data.train.loader()
        )
    pruned = res.report.details["pruning"]
    out = dict(res.model.named_modules())[name]
    assert isinstance(out, nn.Linear)
    assert pruned["layers"][name], "fine-pruning pruned nothing"
    for chan in pruned["layers"][name]:
        assert torch.all(out.weight[:, chan] == 0)
    before = dict(model.named_parameters())
    for key, value in res.model.named_parameters():
        if not key.startswith(name):  # the frozen body: not one weight moved
            assert torch.equal(value, before[key]), key


def test_train_model_without_trainable_parameters_is_a_typed_error(
    tiny_fx: BackdoorFixture,
) -> None:
    model = copy.deepcopy(tiny_fx.backdoored.model).requires_grad_(False)
    x, y = tiny_fx.data.train.tensors()
    with unchanged(model), pytest.raises(hk.ModelCompatibilityError, match="requires_grad"):
        hk.train_model(model, x, y, hk.TrainConfig(epochs=1), runtime=CPU)


@pytest.mark.parametrize("wrap", ["compile", "data-parallel"])
def test_wrapped_model_is_purified_and_saved_with_plain_keys(
    tiny_fx: BackdoorFixture, wrap: str, tmp_path: Path
) -> None:
    inner = copy.deepcopy(tiny_fx.backdoored.model)
    model: nn.Module = (
        torch.compile(inner, backend="eager") if wrap == "compile" else nn.DataParallel(inner)
    )  # type: ignore[assignment]
    with unchanged(inner):
        res = hk.Purifier(model, "finetune", config={"epochs": 1}, runtime=CPU).run(
            tiny_fx.data.train.loader()
        )
    res.save(tmp_path)
    keys = set(load_file(str(tmp_path / "model.safetensors")))
    assert keys == set(inner.state_dict())
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in keys)
    fresh = hk.create_model("small-cnn", 4)
    hk.io.load_model_weights(fresh, tmp_path / "model.safetensors")
