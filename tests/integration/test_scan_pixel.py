"""PixelBackdoor (``pixel``): finds a blended trigger, spares the clean twin, and its additive
trigger drives a repair. Inversion settings: the 1,000 clean images of ``clean_budget``
subsampled to the detector's 100, 60 epochs (~20 s single-threaded on the 10-class SmallCNN).
"""

from __future__ import annotations

import statistics

import pytest
from torch import nn

import hardenkit as hk
from hardenkit.attacks import BackdooredModel
from hardenkit.data import SyntheticSplits
from hardenkit.reports import ModelFingerprint

PIXEL = {"detectors": ["pixel"], "detector_options": {"pixel": {"epochs": 60}}}


def _clean(data: SyntheticSplits, bd: BackdooredModel | None = None) -> hk.ImageDataset:
    exclude = None if bd is None else bd.poisoned.poison_indices
    idx = hk.data.stratified_indices(data.train.labels, per_class=100, exclude=exclude)
    return data.train.subset(idx)


@pytest.fixture(scope="module")
def blended_pixel_scan(blended_model: BackdooredModel, synthetic: SyntheticSplits) -> hk.ScanResult:
    return hk.Scanner(blended_model.model, 10, config=PIXEL).run(
        _clean(synthetic, blended_model).loader()
    )


def test_pixel_finds_the_blended_target_with_a_working_additive_trigger(
    blended_pixel_scan: hk.ScanResult, blended_model: BackdooredModel, synthetic: SyntheticSplits
) -> None:
    rep = blended_pixel_scan.report
    assert rep.verdict == "backdoored", rep.summary()
    assert rep.flagged_labels == [blended_model.target] == [0]
    det = rep.detectors[0]
    assert det.detector == "pixel"
    assert det.statistic == "trigger_pixels"
    assert det.info["statistic"] == "log-pixels"
    sizes = {c.label: c.trigger_pixels for c in rep.classes}
    assert all(v is not None for v in sizes.values())
    others = [float(v) for y, v in sizes.items() if y != 0 and v is not None]
    assert sizes[0] is not None
    assert sizes[0] < statistics.median(others) / 4
    trig = blended_pixel_scan.trigger
    assert isinstance(trig, hk.AdditiveTrigger)
    assert rep.classes[0].trigger_source == "pixel"
    val = hk.Validator(blended_model.model).run(synthetic.test.loader(), trigger=trig, target=0)
    assert val.asr is not None
    assert val.asr > 0.9


def test_pixel_does_not_flag_the_clean_twin(
    clean_model: nn.Module, synthetic: SyntheticSplits
) -> None:
    rep = hk.Scanner(clean_model, 10, config=PIXEL).run(_clean(synthetic).loader()).report
    assert rep.verdict == "clean", rep.summary()
    assert rep.flagged_labels == []
    assert rep.detectors[0].anomaly_index < 2.0


@pytest.mark.parametrize("strategy", ["mcl", "nc-unlearn"])
def test_the_pixel_trigger_drives_a_repair_of_blended(
    strategy: str,
    blended_pixel_scan: hk.ScanResult,
    blended_model: BackdooredModel,
    synthetic: SyntheticSplits,
) -> None:
    """MCL (``auto``'s trigger strategy) on the pixel trigger removes the blend: real-trigger
    ASR 96.78 % -> 3.33 %. NC unlearning of the same trigger removes most of it but not all,
    as on the zoo models (docs/purification.md: 3.5-21.6 % left): measured 8.78 / 12.44 /
    11.56 % with runtime seeds 1 / 0 / 2 (epochs 40: 18.56 %; unlearning_ratio 0.4: 10.56 %;
    the inverted trigger itself reads <= 1.33 %), so its bound is 20 %, not MCL's 10 %.
    Single-threaded, as under ``pytest -n 2``; a bound hit only by some seeds is not a test.
    """
    bound = {"mcl": 0.10, "nc-unlearn": 0.20}[strategy]
    bd = blended_model
    fp = ModelFingerprint.of(bd.model)
    res = hk.Purifier(bd.model, strategy).run(
        _clean(synthetic, bd).loader(), scan=blended_pixel_scan
    )
    assert res.status == "purified", res.report.summary()
    before = hk.Validator(bd.model).run(synthetic.test.loader(), trigger=bd.trigger, target=0)
    after = hk.Validator(res.model).run(synthetic.test.loader(), trigger=bd.trigger, target=0)
    assert before.asr is not None
    assert before.asr >= 0.9
    assert after.asr is not None
    assert after.asr <= bound, res.report.summary()
    assert before.ba - after.ba <= 0.03, res.report.summary()
    assert ModelFingerprint.of(bd.model) == fp
