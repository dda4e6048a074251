"""Scan budgets: presets, seconds, the time cap and the up-front estimate."""

from __future__ import annotations

import pytest

import hardenkit as hk
from hardenkit.errors import ConfigError
from hardenkit.scan import SCAN_BUDGETS, ScanConfig, estimate_scan_seconds, scan_config_for_budget
from hardenkit.scan.budget import DEFAULT_DETECTORS
from hardenkit.testing import tiny_backdoored_model

CPU = {"seed": 0, "device": "cpu"}


def test_presets_and_seconds() -> None:
    quick = scan_config_for_budget("quick")
    standard = scan_config_for_budget("standard")
    thorough = scan_config_for_budget("thorough")
    nc = [
        c.detector_options.get("neural-cleanse", {}).get("epochs", 80)
        for c in (quick, standard, thorough)
    ]
    assert nc == sorted(nc) == [15, 30, 80]
    assert thorough == ScanConfig(detectors=DEFAULT_DETECTORS)
    assert all(c.detectors == DEFAULT_DETECTORS for c in (quick, standard, thorough))
    assert DEFAULT_DETECTORS == ("neural-cleanse", "warp", "prediction-share", "signal")
    # detectors the caller names win over the preset's
    assert scan_config_for_budget("quick", {"detectors": ["pixel"]}).detectors == ("pixel",)
    assert scan_config_for_budget(45).max_seconds == 45.0
    assert scan_config_for_budget("45s").max_seconds == 45.0
    assert scan_config_for_budget("45").max_images == SCAN_BUDGETS["standard"]["max_images"]
    # keys the caller set win over the preset
    mine = scan_config_for_budget("quick", {"max_images": 500, "max_seconds": 10})
    assert (mine.max_images, mine.max_seconds) == (500, 10)
    kept = scan_config_for_budget("quick", {"detector_options": {"neural-cleanse": {"lr": 0.2}}})
    assert kept.detector_options["neural-cleanse"] == {"epochs": 15, "batch_size": 32, "lr": 0.2}
    for bad in ("fast", "0", "-3", "nan"):
        with pytest.raises(ConfigError):
            scan_config_for_budget(bad)


@pytest.fixture(scope="module")
def fx() -> object:
    return tiny_backdoored_model(epochs=3)


def test_a_budget_cut_is_reported_and_not_conclusive(fx: object) -> None:
    bd = fx.backdoored  # type: ignore[attr-defined]
    cfg = {"max_seconds": 1e-6, "max_images": 40}
    res = hk.Scanner(bd.model, 4, config=cfg, runtime=CPU).run(
        fx.data.train.loader()  # type: ignore[attr-defined]
    )
    rep = res.report
    assert rep.budget_exhausted
    assert rep.detectors[0].info["budget_exhausted"] is True
    if rep.verdict != "backdoored":
        assert not rep.conclusive
        assert "NOT conclusive" in rep.summary()
    full = hk.Scanner(
        bd.model,
        4,
        config={"max_images": 40, "detector_options": {"neural-cleanse": {"epochs": 2}}},
        runtime=CPU,
    ).run(fx.data.train.loader())  # type: ignore[attr-defined]
    assert not full.report.budget_exhausted
    assert full.report.conclusive


def test_estimate_scales_with_the_preset(fx: object) -> None:
    model = fx.backdoored.model  # type: ignore[attr-defined]
    est = {
        b: estimate_scan_seconds(
            model,
            scan_config_for_budget(b),
            num_classes=4,
            input_shape=(3, 32, 32),
            clean_images=400,
            per_image_seconds=1e-3,  # one cost for all presets: timing noise cannot reorder them
        )
        for b in ("quick", "standard", "thorough")
    }
    assert 0 < est["quick"] < est["standard"] < est["thorough"]
    capped = estimate_scan_seconds(
        model,
        scan_config_for_budget(0.5),
        num_classes=4,
        input_shape=(3, 32, 32),
        clean_images=400,
    )
    assert capped <= 0.5
    assert model.training is False  # left as found (eval)
