"""Smooth-signal inversion (``signal``) on hand-built models whose reachable labels are known."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hardenkit as hk
from hardenkit.scan import (
    DETECTORS,
    SmoothSignalConfig,
    SmoothSignalDetector,
    scan_config_for_budget,
)
from hardenkit.scan.base import DetectorContext
from hardenkit.scan.budget import estimate_scan_seconds
from hardenkit.triggers import AdditiveTrigger

from .scan_helpers import BrightnessClasses, detector_ctx

K, C, H, W = 4, 3, 16, 16


class GradientBackdoor(BrightnessClasses):
    """Classes 1..3 score 10 × the mean of channel c-1: reaching one takes a large uniform
    brightness change. Class 0 (with ``backdoor``) also scores 80 × (how much brighter the
    left half of channel 0 is than its right half): a faint left-to-right gradient — a smooth
    signal — sends every image to class 0."""

    def backdoor_score(self, x: torch.Tensor) -> torch.Tensor:
        left = x[:, 0, :, : W // 2].mean(dim=(1, 2))
        right = x[:, 0, :, W // 2 :].mean(dim=(1, 2))
        return 80 * (left - right)


def _images(n: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, C, 1, 1, generator=g) * 0.4 + 0.3
    return (base + 0.02 * torch.randn(n, C, H, W, generator=g)).clamp(0, 1)


def _ctx(model: nn.Module, x: torch.Tensor) -> DetectorContext:
    return detector_ctx(model, x, K)


def test_registered_with_documented_defaults() -> None:
    assert "signal" in DETECTORS.names()
    cfg = SmoothSignalConfig()
    assert (cfg.k, cfg.epochs, cfg.max_images, cfg.attack_threshold) == (8, 30, 100, 0.9)
    assert (cfg.max_median_ratio, cfg.anomaly_threshold, cfg.early_stop_patience) == (
        0.5,
        2.0,
        None,
    )


def test_finds_the_gradient_backdoor_and_its_signal_works() -> None:
    model = GradientBackdoor()
    x = _images()
    assert (model(x).argmax(1) != 0).all()
    out = SmoothSignalDetector({"k": 4}).detect(_ctx(model, x))
    assert out.flagged == [0]
    assert all(out.per_label[y]["reached_threshold"] for y in range(K))
    others = sorted(out.values[y] for y in (1, 2, 3))
    assert out.values[0] < 0.5 * others[1]  # far under the median label
    assert out.anomaly_index >= 2.0
    assert out.score >= 0.5
    trig = out.triggers[0]
    assert isinstance(trig, AdditiveTrigger)
    assert trig.delta.shape == (C, H, W)
    # the recovered signal is smooth and works on images it was not inverted on
    fresh = _images(64, seed=5)
    assert (model(trig(fresh)).argmax(1) == 0).float().mean() >= 0.9
    assert trig.delta.pow(2).mean().sqrt() == pytest.approx(out.values[0], rel=0.5)


def test_a_clean_model_is_not_flagged() -> None:
    """Without the backdoor class 0 is unreachable (size 1.0, never suspicious) and the
    three brightness classes need signals of about the same size."""
    model = GradientBackdoor(backdoor=False)
    out = SmoothSignalDetector({"k": 4, "epochs": 20}).detect(_ctx(model, _images()))
    assert out.flagged == []
    assert out.values[0] == 1.0
    assert not out.per_label[0]["reached_threshold"]
    assert out.anomaly_index < 2.0


def test_early_stop_is_off_by_default_and_stops_labels_when_set() -> None:
    model = GradientBackdoor()
    x = _images(48)
    full = SmoothSignalDetector({"k": 4, "epochs": 12}).detect(_ctx(model, x))
    assert {r["epochs"] for r in full.per_label.values()} == {12}
    early = SmoothSignalDetector({"k": 4, "epochs": 40, "early_stop_patience": 1}).detect(
        _ctx(model, x)
    )
    assert min(r["epochs"] for r in early.per_label.values()) < 40


def test_scanner_reports_signal_rms_and_the_trigger_feeds_purifiers() -> None:
    model = GradientBackdoor()
    x = _images(80)
    y = torch.arange(80) % K  # stated labels (the scan only needs every class present)
    scan = hk.Scanner(
        model,
        K,
        config={
            "detectors": ["signal"],
            "detector_options": {"signal": {"k": 4}},
            "min_images_per_class": 1,
        },
    ).run([(x, y)])
    assert scan.verdict == "backdoored"
    assert scan.flagged_labels == [0]
    assert isinstance(scan.trigger, AdditiveTrigger)
    row = scan.report.classes[0]
    assert row.signal_rms is not None
    assert row.signal_rms < 0.1
    assert row.trigger_source == "signal"
    asr = scan.trigger_asr(0)
    assert asr is not None
    assert asr >= 0.9


def test_budget_estimate_includes_signal() -> None:
    model = GradientBackdoor()

    def est(detectors: list[str]) -> float:
        return estimate_scan_seconds(
            model,
            scan_config_for_budget("quick", {"detectors": detectors}),
            num_classes=K,
            input_shape=(C, H, W),
            clean_images=200,
            per_image_seconds=1e-3,
        )

    assert est(["neural-cleanse", "signal"]) > est(["neural-cleanse"])


def test_signal_needs_clean_images() -> None:
    ctx = _ctx(GradientBackdoor(), _images(8))
    ctx.x = None
    with pytest.raises(ValueError, match="clean images"):
        SmoothSignalDetector().detect(ctx)


def test_auto_candidates_take_signal_inversions_only_when_asked() -> None:
    """The scan-miss branch of ``auto`` uses other detectors' smallest inversions; the
    signal's is left out by default (not measured there) and joins when named."""
    from types import SimpleNamespace

    from hardenkit.purify.auto import AutoStrategy
    from hardenkit.testing import missed_scan

    x = _images(80)
    y = torch.arange(80) % K
    scan = hk.Scanner(
        GradientBackdoor(),
        K,
        config={
            "detectors": ["neural-cleanse", "signal"],
            "detector_options": {"neural-cleanse": {"epochs": 2}, "signal": {"k": 4}},
            "min_images_per_class": 1,
        },
    ).run([(x, y)])
    assert scan.flagged_labels == [0]
    missed = missed_scan(scan)
    ctx = SimpleNamespace(original=GradientBackdoor(), num_classes=K)
    found = AutoStrategy({"unflagged_candidates": 1})._candidates(ctx, missed)  # type: ignore[arg-type]
    assert found is not None
    assert all("signal" not in src for src in found[1].values())
    asked = AutoStrategy(
        {"unflagged_candidates": 1, "other_inversion_detectors": ["warp", "signal"]}
    )._candidates(ctx, missed)  # type: ignore[arg-type]
    assert asked is not None
    assert "signal" in asked[1][0]
