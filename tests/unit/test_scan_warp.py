"""Warp-trigger inversion (``warp``) on hand-built models whose reachable labels are known."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hardenkit as hk
from hardenkit.scan import DETECTORS, WarpConfig, WarpDetector, scan_config_for_budget
from hardenkit.scan.base import DetectorContext
from hardenkit.scan.budget import estimate_scan_seconds
from hardenkit.triggers import WarpTrigger

K, C, H, W = 4, 3, 8, 8
LINE = 3  # the bright column of every image


class LineShiftBackdoor(nn.Module):
    """Classes 1..3 score 10 × the mean of channel c-1 — a warp only moves pixels, so it
    cannot change which channel is brightest. Class 0 (with ``backdoor``) scores 60 × (how
    much brighter column 4 is than column 3): moving the bright line one pixel to the right,
    which a small smooth warp does, sends every image to class 0."""

    def __init__(self, backdoor: bool = True) -> None:
        super().__init__()
        self.backdoor = backdoor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        means = x.mean(dim=(2, 3)) * 10  # (N, 3)
        s0 = means.mean(1, keepdim=True) - 3.0
        if self.backdoor:
            moved = x[:, :, :, LINE + 1].mean(dim=(1, 2)) - x[:, :, :, LINE].mean(dim=(1, 2))
            s0 = s0 + 60 * moved.unsqueeze(1)
        return torch.cat([s0, means], dim=1)


def _images(n: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(n, C, 1, 1, generator=g) * 0.5).expand(n, C, H, W).clone()
    x[:, :, :, LINE] = 1.0
    return x


def _ctx(model: nn.Module, x: torch.Tensor) -> DetectorContext:
    return DetectorContext(
        model=model.eval().requires_grad_(False),
        num_classes=K,
        image_shape=(C, H, W),
        device=torch.device("cpu"),
        amp=False,
        seed=0,
        x=x,
        y=model(x).argmax(1),
        labels=list(range(K)),
        progress=lambda *a, **k: None,
    )


def test_registered_with_documented_defaults() -> None:
    assert "warp" in DETECTORS.names()
    cfg = WarpConfig()
    assert (cfg.k, cfg.max_shift, cfg.restarts, cfg.attack_threshold) == (4, 4.0, 2, 0.9)
    assert cfg.max_median_ratio == 0.5


def test_finds_the_line_shift_backdoor_and_its_warp_works() -> None:
    model = LineShiftBackdoor()
    x = _images()
    assert (model(x).argmax(1) != 0).all()
    out = WarpDetector({"epochs": 30}).detect(_ctx(model, x))
    assert out.flagged == [0]
    assert out.per_label[0]["reached_threshold"]
    assert not any(out.per_label[y]["reached_threshold"] for y in (1, 2, 3))
    assert out.values[0] < 0.5 * WarpConfig().max_shift
    assert all(out.values[y] == WarpConfig().max_shift for y in (1, 2, 3))
    assert out.anomaly_index >= 2.0
    assert out.score >= 0.5
    trig = out.triggers[0]
    assert isinstance(trig, WarpTrigger)
    assert trig.noise_grid.shape == (H, W, 2)
    assert (model(trig(x)).argmax(1) == 0).float().mean() >= 0.9


def test_a_model_no_warp_can_move_is_not_flagged() -> None:
    """Constant-colour images are unchanged by any warp: no label is reachable, index 0."""
    model = LineShiftBackdoor(backdoor=False)
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(48, C, 1, 1, generator=g) * 0.5).expand(48, C, H, W).clone()
    out = WarpDetector({"epochs": 15, "give_up_epochs": 5}).detect(_ctx(model, x))
    assert out.flagged == []
    assert out.anomaly_index == 0.0
    assert set(out.values.values()) == {WarpConfig().max_shift}
    # hopeless fields stopped early (give_up_epochs), not after every epoch
    assert max(r["epochs"] for r in out.per_label.values()) <= 6


def test_scanner_runs_warp_and_the_trigger_feeds_purifiers(tmp_path: object) -> None:
    model = LineShiftBackdoor()
    x = _images(80)
    y = torch.arange(80) % K  # stated labels (the scan only needs every class present)
    scan = hk.Scanner(
        model,
        K,
        config={
            "detectors": ["warp"],
            "detector_options": {"warp": {"epochs": 30}},
            "min_images_per_class": 1,
        },
    ).run([(x, y)])
    assert scan.verdict == "backdoored"
    assert scan.flagged_labels == [0]
    assert isinstance(scan.trigger, WarpTrigger)
    asr = scan.trigger_asr(0)
    assert asr is not None
    assert asr >= 0.9


def test_budget_presets_and_estimate_include_warp() -> None:
    model = LineShiftBackdoor()
    base = {"detectors": ["neural-cleanse", "warp"]}
    only_nc = estimate_scan_seconds(
        model,
        scan_config_for_budget("quick", {"detectors": ["neural-cleanse"]}),
        num_classes=K,
        input_shape=(C, H, W),
        clean_images=200,
        per_image_seconds=1e-3,
    )
    both = estimate_scan_seconds(
        model,
        scan_config_for_budget("quick", base),
        num_classes=K,
        input_shape=(C, H, W),
        clean_images=200,
        per_image_seconds=1e-3,
    )
    assert both > only_nc


def test_warp_needs_clean_images() -> None:
    model = LineShiftBackdoor()
    ctx = _ctx(model, _images(8))
    ctx.x = None
    with pytest.raises(ValueError, match="clean images"):
        WarpDetector().detect(ctx)
