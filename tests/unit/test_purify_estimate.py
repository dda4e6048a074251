"""The up-front time estimate of a repair (``Purifier.estimate``, ``hardenkit purify``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hardenkit as hk
from hardenkit.purify import STRATEGIES, estimate_repair_seconds, step_seconds

SHAPE = (3, 32, 32)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return hk.create_model("small-cnn", 10)


def test_every_strategy_states_its_schedule_or_none() -> None:
    stated = {}
    for name in STRATEGIES.names():
        passes = STRATEGIES.get(name)(None).estimate_passes()
        stated[name] = passes
        if passes is not None:
            assert 0 < passes[0] <= passes[1], name
    # the two whose work depends on what they find (pruning search, Shapley sampling)
    assert {n for n, p in stated.items() if p is None} == {"anp", "shapley-pruning"}


@pytest.mark.parametrize("name", ["finetune", "nc-unlearn", "mcl", "d3", "sau"])
def test_passes_grow_with_the_epochs(name: str) -> None:
    ten = STRATEGIES.get(name)({"epochs": 10}).estimate_passes()
    twenty = STRATEGIES.get(name)({"epochs": 20}).estimate_passes()
    assert ten is not None
    assert twenty is not None
    assert twenty == pytest.approx((2 * ten[0], 2 * ten[1]))


def test_auto_spans_its_branches() -> None:
    auto = STRATEGIES.get("auto")(None)
    mcl = STRATEGIES.get("mcl")(None).estimate_passes()
    nc = STRATEGIES.get("nc-unlearn")(None).estimate_passes()
    ft = STRATEGIES.get("finetune")(None).estimate_passes()
    est = auto.estimate_passes()
    assert est is not None
    assert mcl is not None
    assert nc is not None
    assert ft is not None
    assert est[0] == mcl[0]  # the scan flags a label and MCL's repair is kept
    # the scan flags nothing: two checked MCL runs (the first, the signal's own), then NC
    assert est[1] == pytest.approx(max(2 * mcl[1] + nc[1], ft[1]))
    assert auto.estimate_batch_size() == STRATEGIES.get("mcl")(None).estimate_batch_size()
    # a longer trigger-free fallback is the longest branch
    long_fb = STRATEGIES.get("auto")({"fallback_config": {"epochs": 1000}}).estimate_passes()
    assert long_fb is not None
    assert long_fb[1] == pytest.approx(1000 * ft[1] / 100)


def test_step_seconds_leaves_the_model_alone(model: nn.Module) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    assert step_seconds(model, SHAPE, 4) > 0
    assert not model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_repair_seconds_scale_with_the_images(model: nn.Module) -> None:
    cfg = {"epochs": 4, "batch_size": 8}
    assert estimate_repair_seconds(model, "anp", num_images=64, input_shape=SHAPE) is None
    assert estimate_repair_seconds(model, "finetune", num_images=0, input_shape=SHAPE) is None
    est = estimate_repair_seconds(model, "finetune", num_images=64, input_shape=SHAPE, config=cfg)
    assert est is not None
    lo, hi = est
    assert 0 < lo < hi


def test_purifier_estimate_names_the_parts_that_run(model: nn.Module) -> None:
    ft = hk.Purifier(model, "finetune", config={"epochs": 1}).estimate(1000, SHAPE)
    assert ft.repair_images == 810  # 10 % held out, then 10 % of the rest for validation
    assert ft.scan is None  # finetune uses no scan, so no recheck either
    assert ft.recheck is None
    assert ft.repair is not None
    assert ft.total == ft.repair
    assert ft.device == "cpu"
    assert ft.unknown == []
    mcl = hk.Purifier(model, "mcl", config={"epochs": 1}).estimate(1000, SHAPE)
    assert mcl.scan is not None
    assert mcl.scan > 0
    assert mcl.recheck == mcl.scan  # the recheck is one more scan like the first
    assert mcl.repair is not None
    assert mcl.total == pytest.approx((mcl.repair[0] + 2 * mcl.scan, mcl.repair[1] + 2 * mcl.scan))
    given = hk.Purifier(model, "mcl", config={"epochs": 1}).estimate(1000, SHAPE, scan_given=True)
    assert (given.scan, given.recheck) == (None, None)  # a scan given: none run, no recheck
    for kw in ({"recheck": False}, {"max_trigger_asr": None}):
        off = hk.Purifier(model, "mcl", **kw).estimate(1000, SHAPE)  # type: ignore[arg-type]
        assert off.scan is not None
        assert off.recheck is None
    none_held = hk.Purifier(model, "finetune", holdout_fraction=0).estimate(1000, SHAPE)
    assert none_held.repair_images == 900
    # a holdout_loader given to run(): none of these images is held out
    given_ho = hk.Purifier(model, "finetune").estimate(1000, SHAPE, holdout_given=True)
    assert given_ho.repair_images == 900
    anp = hk.Purifier(model, "anp").estimate(1000, SHAPE)
    assert anp.repair is None
    assert anp.total is None
    assert any("anp" in u for u in anp.unknown)


class _Broken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, 10)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > 2:  # the Purifier's own checks pass, the timing fails
            raise RuntimeError("boom")
        return self.fc(x.flatten(1))


def test_an_estimate_never_stops_the_work() -> None:
    est = hk.Purifier(_Broken(), "mcl").estimate(500, SHAPE)
    assert est.repair is None
    assert est.total is None
    assert any(u.startswith("repair: RuntimeError") for u in est.unknown)
