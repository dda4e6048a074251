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


@pytest.mark.parametrize("strategy", ["finetune", "mcl", "nc-unlearn"])
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
