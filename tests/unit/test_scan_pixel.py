"""PixelBackdoor (``pixel``) on hand-built models whose smallest additive triggers are known."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hardenkit.scan import PixelConfig, PixelDetector, scan_config_for_budget
from hardenkit.scan.base import DetectorContext
from hardenkit.scan.budget import estimate_scan_seconds
from hardenkit.scan.pixel import _State
from hardenkit.triggers import AdditiveTrigger

try:
    from .scan_helpers import BrightnessClasses, detector_ctx
except ImportError:  # imported as a top-level module (test_scan_distributed.py)
    from scan_helpers import BrightnessClasses, detector_ctx  # type: ignore[no-redef]

K, C, H, W = 4, 3, 8, 8


class OnePixelBackdoor(BrightnessClasses):
    """Class c (1..3) scores the mean of channel c-1, so reaching it from another class takes
    raising a whole channel; class 0 scores 60 × one pixel: a one-pixel backdoor."""

    def backdoor_score(self, x: torch.Tensor) -> torch.Tensor:
        return 60 * x[:, 0, 2, 5]


def _ctx(model: nn.Module, n: int = 64) -> DetectorContext:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, C, H, W, generator=g) * 0.5  # dark images: the backdoor pixel is off
    return detector_ctx(model, x, K)


def test_reference_defaults() -> None:
    cfg = PixelConfig()
    assert (cfg.lr, cfg.betas, cfg.init_cost, cfg.attack_threshold) == (0.1, (0.5, 0.9), 1e-3, 0.9)
    assert (cfg.patience, cfg.cost_multiplier, cfg.batch_size, cfg.max_images) == (10, 1.5, 32, 100)


def test_cost_schedule_follows_the_reference() -> None:
    det = PixelDetector({"patience": 2})
    s = _State.new(1, 1e-3)
    for acc in (0.95, 0.95):
        det._schedule(s, 0, acc)
    assert math.isclose(float(s.cost[0]), 1.5e-3)
    assert bool(s.raised[0])
    for acc in (0.1, 0.1):
        det._schedule(s, 0, acc)
    assert math.isclose(float(s.cost[0]), 1.5e-3 / 1.5**1.5)
    s.cost[0] = 0.0
    for acc in (0.95, 0.95):
        det._schedule(s, 0, acc)
    assert float(s.cost[0]) == 1e-3


def test_finds_the_one_pixel_backdoor_and_spares_the_clean_twin() -> None:
    cfg = {"epochs": 80, "batch_size": 16, "early_stop_patience": 10}
    out = PixelDetector(cfg).detect(_ctx(OnePixelBackdoor()))
    assert out.flagged == [0]
    assert out.values[0] <= 3  # the planted pixel (Adam may touch a neighbour on the way)
    assert min(out.values[y] for y in (1, 2, 3)) > 10 * out.values[0]
    assert out.per_label[0]["reached_threshold"]
    trig = out.triggers[0]
    assert isinstance(trig, AdditiveTrigger)
    assert float(trig.delta[0, 2, 5]) > 0.3  # the planted pixel is in the recovered trigger
    assert out.score > 0.5
    assert out.info["statistic"] == "log-pixels"

    clean = PixelDetector(cfg).detect(_ctx(OnePixelBackdoor(backdoor=False)))
    assert clean.flagged == []
    assert clean.score < 0.5


def test_l1_statistic_and_labels_that_never_succeed() -> None:
    class Unreachable(OnePixelBackdoor):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = super().forward(x)
            return torch.cat([out[:, :3], torch.full_like(out[:, 3:], -1e3)], dim=1)

    out = PixelDetector({"epochs": 30, "statistic": "l1", "batch_size": 16}).detect(
        _ctx(Unreachable())
    )
    assert out.statistic == "trigger_l1"
    assert not out.per_label[3]["reached_threshold"]
    assert out.values[3] == C * H * W  # the largest possible size: never suspicious
    assert 3 not in out.flagged


def test_budget_presets_and_estimate_include_pixel() -> None:
    cfg = scan_config_for_budget(
        "quick",
        {"detectors": ["neural-cleanse", "pixel"], "detector_options": {"pixel": {"epochs": 7}}},
    )
    assert cfg.detector_options["pixel"] == {"epochs": 7}
    assert cfg.detector_options["neural-cleanse"]["epochs"] == 15
    model = OnePixelBackdoor()

    def est(epochs: int) -> float:
        c = scan_config_for_budget(
            "quick", {"detectors": ["pixel"], "detector_options": {"pixel": {"epochs": epochs}}}
        )
        return estimate_scan_seconds(
            model, c, num_classes=K, input_shape=(C, H, W), clean_images=200
        )

    # one timed pass per call: compare with a wide margin (the cost is linear in epochs)
    assert 0 < est(10) < est(1000)


def test_pixel_needs_clean_images() -> None:
    ctx = _ctx(OnePixelBackdoor())
    ctx.x = None
    with pytest.raises(ValueError, match="clean images"):
        PixelDetector().detect(ctx)
