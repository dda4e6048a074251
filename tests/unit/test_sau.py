"""SAU (shared adversarial unlearning): config presets, the shared-perturbation attack, a run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hardenkit as hk
from hardenkit.errors import ConfigError
from hardenkit.purify import STRATEGIES, SAUConfig, shared_adversarial_examples


def test_paper_preset_is_backdoorbench_and_explicit_fields_win() -> None:
    paper = SAUConfig(preset="paper").resolved()
    assert (paper.epochs, paper.selection, paper.augment) == (100, "final", False)
    assert (paper.lr, paper.eps, paper.steps, paper.beta1, paper.beta2) == (1e-4, 0.2, 5, 0.01, 1)
    assert SAUConfig(preset="paper", epochs=7).resolved().epochs == 7
    assert SAUConfig().resolved().epochs == 20
    with pytest.raises(ConfigError):
        STRATEGIES.get("sau")({"eps": 0})


class _Lin(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(3 * 8 * 8, 4, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w


@pytest.mark.parametrize("init", ["max", "random", "zero"])
@pytest.mark.parametrize("clip", [False, True])
def test_perturbation_stays_in_the_ball_and_leaves_weights_alone(init: str, clip: bool) -> None:
    m, ref = _Lin(0), _Lin(1)
    x = torch.rand(16, 3, 8, 8)
    y = m(x).argmax(1)  # start where the model is right: the attack has work to do
    cfg = SAUConfig(init=init, clip=clip, eps=0.1, step_size=0.05, steps=3)  # type: ignore[arg-type]
    adv = shared_adversarial_examples(m, ref, x, y, cfg, torch.Generator().manual_seed(0))
    assert (adv - x).abs().max() <= 0.1 + 1e-6
    if clip:
        assert adv.min() >= 0
        assert adv.max() <= 1
    assert m.w.grad is None
    assert ref.w.grad is None
    assert m.w.requires_grad  # restored after the attack


def test_the_attack_raises_the_models_loss() -> None:
    m = _Lin(0)
    x = torch.rand(64, 3, 8, 8)
    y = m(x).argmax(1)
    cfg = SAUConfig(beta1=1.0, beta2=0.0, init="zero", eps=0.05, step_size=0.02, steps=5)
    adv = shared_adversarial_examples(m, m, x, y, cfg)
    ce = nn.functional.cross_entropy
    assert ce(m(adv), y) > ce(m(x), y) + 0.1


def test_sau_runs_without_a_scan_and_reports_its_epochs(
    tiny_synthetic: hk.data.SyntheticSplits,
) -> None:
    model = hk.create_model("small-cnn", 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = hk.Purifier(  # an untrained model: the at-chance refusal is switched off
        model, "sau", config={"epochs": 2, "batch_size": 32}, require_above_chance=False
    ).run(tiny_synthetic.train.loader())
    assert res.scan is None  # trigger-free: no scan
    assert res.report.details["final_epoch"] == 2
    assert len(res.report.details["history"]) == 2
    assert 0 <= res.report.details["history"][0]["shared_rate"] <= 1
    # the caller's model is untouched, the repaired copy moved
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    after = res.model.state_dict()
    assert any(not torch.equal(v, after[k]) for k, v in before.items() if v.is_floating_point())
