"""The class-prior recalibration after a repair (``hardenkit.purify.calibration``)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import hardenkit as hk
from hardenkit.models import find_last_linear
from hardenkit.purify import calibration
from hardenkit.purify.calibration import BiasCalibration, calibrate_output_bias
from hardenkit.scan import ScanResult
from hardenkit.testing import BackdoorFixture, tiny_backdoored_model
from hardenkit.training import predict


@pytest.fixture(scope="module")
def fx() -> BackdoorFixture:
    return tiny_backdoored_model(epochs=4)


def _counts(model: nn.Module, x: torch.Tensor, k: int) -> torch.Tensor:
    return torch.bincount(predict(model, x).argmax(1), minlength=k)


def test_calibration_gives_a_shrunk_class_its_share_back(fx: BackdoorFixture) -> None:
    ref = fx.backdoored.model
    x, _ = fx.data.test.tensors()
    shrunk = copy.deepcopy(ref)
    _, lin = find_last_linear(shrunk)
    with torch.no_grad():
        lin.bias[2] -= 4.0  # a repair that stopped predicting class 2
    before = _counts(ref, x, 4)
    assert _counts(shrunk, x, 4)[2] < before[2] // 4
    cal = calibrate_output_bias(shrunk, ref, x)
    assert cal.applied
    assert cal.layer is not None
    assert cal.layer.endswith("linear")
    assert cal.kl_after is not None
    assert cal.kl_before is not None
    assert cal.kl_after < 1e-3 < cal.kl_before
    # the fix is the bias it lost (up to a constant, which softmax ignores)
    rel = [s - cal.shift[0] for s in cal.shift]
    assert rel[2] == pytest.approx(4.0, abs=0.05)
    assert rel[1] == pytest.approx(0.0, abs=0.05)
    assert torch.equal(_counts(shrunk, x, 4), before)


class _Scale(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        (nn.Sequential(nn.Flatten(), nn.Linear(12, 3, bias=False)), "has no bias"),
        (nn.Sequential(nn.Flatten(), nn.Linear(12, 3), _Scale()), "not its last nn.Linear"),
        (nn.Sequential(nn.Conv2d(3, 3, 2), nn.Flatten()), "no nn.Linear"),
    ],
)
def test_calibration_leaves_a_model_it_cannot_shift_unchanged(
    model: nn.Module, reason: str
) -> None:
    torch.manual_seed(0)
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cal = calibrate_output_bias(model, ref, torch.rand(16, 3, 2, 2))
    assert not cal.applied
    assert cal.reason is not None
    assert reason in cal.reason
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def _scan(fx: BackdoorFixture) -> ScanResult:
    bd = fx.backdoored
    return ScanResult.from_triggers({0: bd.trigger}, model=bd.model, num_classes=4,
                                    trigger_asr={0: 1.0})  # fmt: skip


def test_mcl_recalibrates_the_prior_when_asked_not_by_default(fx: BackdoorFixture) -> None:
    loader = fx.data.train.loader(batch_size=64)
    on = {"epochs": 2, "recalibrate_prior": True}
    res = hk.Purifier(fx.backdoored.model, "mcl", config=on).run(loader, scan=_scan(fx))
    rec = res.report.details["prior_calibration"]
    assert res.report.config["recalibrate_prior"] is True
    assert set(rec) >= {"applied", "layer", "shift", "kl_before", "kl_after"}
    if rec["applied"]:
        assert rec["kl_after"] < rec["kl_before"]
        assert set(rec) >= {"val_trigger_asr_before", "val_trigger_asr_after"}
    for cfg in ({"epochs": 1}, {"epochs": 1, "preset": "paper"}):
        plain = hk.Purifier(fx.backdoored.model, "mcl", config=cfg).run(loader, scan=_scan(fx))
        assert "prior_calibration" not in plain.report.details


def test_a_recalibration_that_brings_the_trigger_back_is_undone(
    fx: BackdoorFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A calibration that moves every prediction to the trigger's target (label 0) lifts the
    inverted trigger's validation ASR: it is taken back, and the report says so."""
    seen: dict[str, torch.Tensor] = {}

    def to_target(
        model: nn.Module, reference: nn.Module, images: object, **_: object
    ) -> BiasCalibration:
        name, lin = find_last_linear(model)
        seen["bias"] = lin.bias.detach().clone()
        shift = [30.0, 0.0, 0.0, 0.0]
        with torch.no_grad():
            lin.bias += torch.tensor(shift)
        return BiasCalibration(applied=True, layer=name, shift=shift, kl_before=1.0, kl_after=0.5)

    monkeypatch.setattr(calibration, "calibrate_output_bias", to_target)
    res = hk.Purifier(
        fx.backdoored.model, "mcl", config={"epochs": 2, "recalibrate_prior": True}
    ).run(fx.data.train.loader(batch_size=64), scan=_scan(fx))
    rec = res.report.details["prior_calibration"]
    assert rec["applied"] is False
    assert "undone" in rec["reason"]
    assert rec["val_trigger_asr_after"] > rec["val_trigger_asr_before"]
    assert any("class-prior recalibration it raised" in n for n in res.report.notes)
    _, lin = find_last_linear(res.model)
    assert torch.allclose(lin.bias.detach(), seen["bias"])
