"""Warp-trigger inversion (``warp``) on hand-built models whose reachable labels are known."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import hardenkit as hk
from hardenkit.purify.auto import AutoStrategy
from hardenkit.scan import DETECTORS, WarpConfig, WarpDetector, scan_config_for_budget
from hardenkit.scan.base import DetectorContext
from hardenkit.scan.budget import estimate_scan_seconds
from hardenkit.testing import missed_scan
from hardenkit.triggers import AlternatingTrigger, WarpTrigger

try:
    from .scan_helpers import BrightnessClasses, detector_ctx
except ImportError:  # imported as a top-level module (the torchrun worker, scan_ddp_worker.py)
    from scan_helpers import BrightnessClasses, detector_ctx  # type: ignore[no-redef]

K, C, H, W = 4, 3, 8, 8
LINE = 3  # the bright column of every image


class LineShiftBackdoor(BrightnessClasses):
    """Classes 1..3 score 10 × the mean of channel c-1 — a warp only moves pixels, so it
    cannot change which channel is brightest. Class 0 (with ``backdoor``) scores 60 × (how
    much brighter column 4 is than column 3): moving the bright line one pixel to the right,
    which a small smooth warp does, sends every image to class 0."""

    def backdoor_score(self, x: torch.Tensor) -> torch.Tensor:
        moved = x[:, :, :, LINE + 1].mean(dim=(1, 2)) - x[:, :, :, LINE].mean(dim=(1, 2))
        return 60 * moved


def _images(n: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(n, C, 1, 1, generator=g) * 0.5).expand(n, C, H, W).clone()
    x[:, :, :, LINE] = 1.0
    return x


def _ctx(model: nn.Module, x: torch.Tensor) -> DetectorContext:
    return detector_ctx(model, x, K)


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


@pytest.fixture(scope="module")
def nc_warp_scan() -> hk.ScanResult:
    """Neural Cleanse + warp on the line-shift backdoor: warp flags 0, NC inverts every label."""
    x = _images(80)
    y = torch.arange(80) % K
    return hk.Scanner(
        LineShiftBackdoor(),
        K,
        config={
            "detectors": ["neural-cleanse", "warp"],
            "detector_options": {"neural-cleanse": {"epochs": 2}, "warp": {"epochs": 30}},
            "min_images_per_class": 1,
        },
    ).run([(x, y)])


def test_scan_keeps_every_detectors_inversions(nc_warp_scan: hk.ScanResult, tmp_path: Path) -> None:
    scan = nc_warp_scan
    assert scan.flagged_labels == [0]
    assert set(scan.inversions) == {"neural-cleanse", "warp"}
    assert set(scan.inversions["warp"]) == set(range(K)) == set(scan.inversions["neural-cleanse"])
    # the flagged label's trigger is warp's; the others' Neural Cleanse's (same objects)
    assert scan.all_triggers[0] is scan.inversions["warp"][0]
    assert all(scan.all_triggers[y] is scan.inversions["neural-cleanse"][y] for y in (1, 2, 3))
    loaded = hk.ScanResult.load(scan.save(tmp_path / "scan"))
    # the inversions not in all_triggers are written once, under triggers/<detector>/
    assert len(list((tmp_path / "scan" / "triggers" / "warp").glob("*.safetensors"))) == K - 1
    assert not (tmp_path / "scan" / "triggers" / "neural-cleanse" / "label_1.safetensors").exists()
    assert set(loaded.inversions["warp"]) == set(range(K))
    assert set(loaded.inversions["neural-cleanse"]) == set(range(K))
    assert loaded.all_triggers[0] is loaded.inversions["warp"][0]
    x = _images(8)
    for det, inv in scan.inversions.items():
        for y, trig in inv.items():
            assert torch.allclose(loaded.inversions[det][y](x), trig(x), atol=1e-6), (det, y)


def test_missed_scan_rebuilds_a_genuine_miss_from_the_inversions(
    nc_warp_scan: hk.ScanResult,
) -> None:
    missed = missed_scan(nc_warp_scan)
    assert missed.verdict == "clean"
    assert missed.flagged_labels == []
    # label 0 gets Neural Cleanse's inversion back (what a scan that missed it would hold)
    assert missed.all_triggers[0] is nc_warp_scan.inversions["neural-cleanse"][0]
    row = missed.report.classes[0]
    assert (row.trigger_source, row.trigger_asr, row.flagged) == ("neural-cleanse", None, False)
    assert missed.inversions["warp"][0] is nc_warp_scan.inversions["warp"][0]
    assert missed.report.classes[1].trigger_asr == nc_warp_scan.report.classes[1].trigger_asr


def test_auto_candidates_add_the_smallest_reached_warp(nc_warp_scan: hk.ScanResult) -> None:
    """A missed WaNet target is the smallest warp; warp's field joins the candidates (with
    Neural Cleanse's inversion, alternating, when that label is an NC candidate too)."""
    missed = missed_scan(nc_warp_scan)
    ctx = SimpleNamespace(original=LineShiftBackdoor(), num_classes=K)
    nc = next(d for d in missed.report.detectors if d.detector == "neural-cleanse")
    by_mask = [c.label for c in sorted(nc.classes, key=lambda c: (c.value, c.label))]
    found = AutoStrategy({"unflagged_candidates": 1})._candidates(ctx, missed)  # type: ignore[arg-type]
    assert found is not None
    cand, sources = found
    first = by_mask[0]
    if first != 0:
        assert sources == {first: ["neural-cleanse"], 0: ["warp"]}
    else:
        assert sources == {0: ["neural-cleanse", "warp"]}
    assert cand.flagged_labels == ([first, 0] if first != 0 else [0])
    warp0 = missed.inversions["warp"][0]
    t0 = cand.all_triggers[0]
    if first == 0:
        assert isinstance(t0, AlternatingTrigger)
        assert t0.parts[1] is warp0
    else:
        assert t0 is warp0
    # the label the warp reached is ranked; unreached labels never join
    assert not any(
        c.extra["reached_threshold"]
        for d in missed.report.detectors
        if d.detector == "warp"
        for c in d.classes
        if c.label != 0
    )
    found = AutoStrategy({"unflagged_candidates": K})._candidates(ctx, missed)  # type: ignore[arg-type]
    assert found is not None
    both = found[0]
    assert sorted(both.flagged_labels) == list(range(K))
    alt = both.all_triggers[0]
    assert isinstance(alt, AlternatingTrigger)
    assert alt.parts[0] is missed.all_triggers[0]
    assert alt.parts[1] is warp0
    off = AutoStrategy({"unflagged_candidates": 1, "other_inversion_candidates": 0})
    found = off._candidates(ctx, missed)  # type: ignore[arg-type]
    assert found is not None
    assert found[0].flagged_labels == [first]


def test_alternating_trigger_takes_turns_and_round_trips(tmp_path: Path) -> None:
    patch = hk.PatchTrigger.square(2, location="top-left")
    warp = WarpTrigger.random(k=4, strength=2.0, size=H, seed=3)
    alt = AlternatingTrigger([patch, warp])
    x = _images(5)
    out = alt(x)
    assert torch.equal(out[0::2], patch(x[0::2]))
    assert torch.allclose(out[1::2], warp(x[1::2]))
    back = hk.Trigger.load(alt.save(tmp_path / "alt.safetensors"))
    assert isinstance(back, AlternatingTrigger)
    assert [p.kind for p in back.parts] == ["patch", "warp"]
    assert torch.allclose(back(x), out)
    assert torch.equal(alt(x[:1]), patch(x[:1]))  # a batch of one: the first part only
    with pytest.raises(hk.ConfigError):
        AlternatingTrigger([])
    with pytest.raises(hk.ConfigError):
        AlternatingTrigger([alt])
