"""Unit tests of the Scanner: anomaly statistics, NC schedule, batched == sequential, errors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from torch import nn

import hardenkit as hk
from hardenkit.data import SyntheticSplits
from hardenkit.errors import ConfigError, DataError, ModelCompatibilityError
from hardenkit.scan import (
    DETECTORS,
    Detector,
    DetectorConfig,
    DetectorContext,
    DetectorOutput,
    NeuralCleanse,
    ScanResult,
    gamma_max_pvalue,
    logistic_score,
    mad_anomaly,
)
from hardenkit.scan.neural_cleanse import NeuralCleanseConfig, _LabelState

# ----------------------------------------------------------------------------- anomaly


def test_mad_anomaly_matches_hand_computation() -> None:
    values = [10.0, 12.0, 11.0, 13.0, 2.0]
    s = mad_anomaly(values, side="low")
    # median 11, |dev| = [1, 1, 0, 2, 9] -> median 1 -> MAD 1.4826
    assert s.median == 11.0
    assert s.mad == pytest.approx(1.4826)
    assert s.index == pytest.approx(9 / 1.4826)
    assert s.flagged == [4]
    assert s.per_label[3] == pytest.approx(2 / 1.4826)


def test_mad_anomaly_only_counts_the_suspicious_side() -> None:
    values = [10.0, 11.0, 10.5, 9.5, 40.0, 10.2]
    low = mad_anomaly(values, side="low")
    high = mad_anomaly(values, side="high")
    assert low.flagged == []
    assert low.index < 2
    assert high.flagged == [4]
    assert high.index > 2


def test_mad_anomaly_even_count_median_and_labels() -> None:
    s = mad_anomaly([1.0, 2.0, 3.0, 4.0], labels=[7, 8, 9, 10])
    assert s.median == 2.5
    assert s.flagged == []
    s2 = mad_anomaly([20.0, 21.0, 22.0, 1.0], labels=[7, 8, 9, 10])
    assert s2.flagged == [10]


def test_mad_anomaly_zero_mad_is_finite() -> None:
    s = mad_anomaly([5.0, 5.0, 5.0, 5.0, 1.0])
    assert math.isfinite(s.index)
    assert s.index > 1000
    assert s.flagged == [4]
    flat = mad_anomaly([5.0, 5.0, 5.0])
    assert flat.index == 0.0
    assert flat.flagged == []


def test_mad_anomaly_needs_three_values() -> None:
    with pytest.raises(ValueError, match=">= 3"):
        mad_anomaly([1.0, 2.0])


def test_gamma_max_pvalue_separates_outlier_from_null() -> None:
    g = torch.Generator().manual_seed(0)
    null = (torch.rand(9, generator=g) * 2 + 5).tolist()
    p_out, arg = gamma_max_pvalue([*null, 40.0])
    assert arg == 9
    assert p_out < 1e-6
    p_null, _ = gamma_max_pvalue([*null, 6.5])
    assert p_null > 0.05
    p_neg, _ = gamma_max_pvalue([-1.0, -0.5, 0.0, 0.3, 8.0])
    assert 0.0 <= p_neg <= 1.0


def test_logistic_score_is_monotone_and_half_at_threshold() -> None:
    assert logistic_score(2.0, 2.0) == 0.5
    xs = [logistic_score(e, 2.0) for e in (-100.0, 0.0, 1.0, 2.0, 3.0, 1e6)]
    assert xs == sorted(xs)
    assert 0.0 <= xs[0] < 1e-10
    assert xs[-1] == 1.0


# ----------------------------------------------------------------------------- NC schedule


def _state_after(cfg: NeuralCleanseConfig, accs: list[float], regs: list[float]) -> _LabelState:
    nc = NeuralCleanse(cfg)
    s = _LabelState.new(1, cfg.init_cost)
    for a, r in zip(accs, regs, strict=True):
        nc._update_schedule(s, 0, a, r)
    return s


def test_cost_goes_up_after_patience_successes_and_down_after_failures() -> None:
    cfg = NeuralCleanseConfig(patience=3)
    s = _state_after(cfg, [1.0] * 3, [50.0, 40.0, 30.0])
    assert float(s.cost[0]) == pytest.approx(2e-3)
    assert bool(s.up_flag[0])
    assert not bool(s.down_flag[0])
    assert float(s.best_reg[0]) == 30.0
    s = _state_after(cfg, [1.0] * 3 + [0.5] * 3, [50.0, 40.0, 30.0, 20.0, 20.0, 20.0])
    assert float(s.cost[0]) == pytest.approx(2e-3 / 2**1.5)
    assert bool(s.down_flag[0])
    assert float(s.best_reg[0]) == 30.0  # unsuccessful epochs never become "best"


def test_early_stop_needs_both_adjustments_and_no_improvement() -> None:
    cfg = NeuralCleanseConfig(patience=2, early_stop_patience=3)
    # successes only: the cost keeps rising, never stops (no down-adjustment yet)
    s = _state_after(cfg, [1.0] * 20, [10.0] * 20)
    assert bool(s.active[0])
    # up, then down, then stagnation for early_stop_patience epochs -> stop
    accs = [1.0, 1.0, 0.5, 0.5] + [1.0, 0.5] * 3
    s = _state_after(cfg, accs, [10.0] * len(accs))
    assert not bool(s.active[0])


def test_zero_cost_is_reset_to_init_cost() -> None:
    cfg = NeuralCleanseConfig(init_cost=0.0, patience=2)
    s = _state_after(cfg, [1.0, 1.0], [5.0, 5.0])
    assert float(s.cost[0]) == 0.0  # reset to init_cost (0) and counters cleared
    assert not bool(s.up_flag[0])


# ----------------------------------------------------------------------------- scanning


@pytest.fixture(scope="module")
def tiny_model(tiny_synthetic: SyntheticSplits) -> nn.Module:
    torch.manual_seed(0)
    m = hk.create_model("small-cnn", num_classes=4, normalization=None)
    hk.train_model(
        m,
        *tiny_synthetic.train.tensors(),
        hk.TrainConfig(epochs=2, batch_size=32, augment=False),
        runtime={"seed": 0, "device": "cpu"},
    )
    return m.eval()


def _nc(**kw: object) -> dict[str, object]:
    return {"detector_options": {"neural-cleanse": {"epochs": 3, "batch_size": 16, **kw}}}


def test_batched_equals_sequential(tiny_model: nn.Module, tiny_synthetic: SyntheticSplits) -> None:
    loader = tiny_synthetic.train.loader(batch_size=64)
    rt = {"device": "cpu", "seed": 3}
    batched = hk.Scanner(tiny_model, 4, config=_nc(), runtime=rt).run(loader)
    seq = hk.Scanner(tiny_model, 4, config=_nc(mode="sequential"), runtime=rt).run(loader)
    chunked = hk.Scanner(tiny_model, 4, config=_nc(max_images_per_step=16), runtime=rt).run(loader)
    a = [c.mask_l1 for c in batched.report.classes]
    b = [c.mask_l1 for c in seq.report.classes]
    c = [c.mask_l1 for c in chunked.report.classes]
    assert a == pytest.approx(b, rel=1e-3)
    assert a == pytest.approx(c, rel=1e-3)
    for y in range(4):
        torch.testing.assert_close(
            batched.all_triggers[y].tensors()["mask"],
            seq.all_triggers[y].tensors()["mask"],
            atol=1e-3,
            rtol=1e-3,
        )


def test_scan_is_deterministic(tiny_model: nn.Module, tiny_synthetic: SyntheticSplits) -> None:
    loader = tiny_synthetic.train.loader(batch_size=64)
    r1 = hk.Scanner(tiny_model, 4, config=_nc(), runtime={"seed": 1}).run(loader)
    r2 = hk.Scanner(tiny_model, 4, config=_nc(), runtime={"seed": 1}).run(loader)
    assert [c.mask_l1 for c in r1.report.classes] == [c.mask_l1 for c in r2.report.classes]


def test_report_contents_and_save_load(
    tiny_model: nn.Module, tiny_synthetic: SyntheticSplits, tmp_path: Path
) -> None:
    scan = hk.Scanner(tiny_model, 4, config=_nc()).run(tiny_synthetic.train.loader())
    rep = scan.report
    assert rep.num_classes == 4
    assert rep.candidate_labels == [0, 1, 2, 3]
    assert rep.clean_images["holdout"] > 0
    assert rep.trigger_asr_on_holdout
    assert rep.clean_images["inversion"] + rep.clean_images["holdout"] == 160
    assert 0.0 <= rep.score <= 1.0
    assert rep.timings["total_seconds"] >= rep.timings["neural-cleanse_seconds"] > 0
    assert rep.detectors[0].config["epochs"] == 3
    assert all(c.trigger_asr is not None and 0 <= c.trigger_asr <= 1 for c in rep.classes)
    assert len(scan.all_triggers) == 4
    out = scan.save(tmp_path / "scan")
    assert (out / "report.json").is_file()
    assert sorted(p.name for p in (out / "triggers").iterdir()) == [
        f"label_{y}.safetensors" for y in range(4)
    ]
    back = ScanResult.load(out)
    assert back.report == rep
    assert back.all_triggers[2].tensors()["mask"].shape == (32, 32)
    assert "verdict" in rep.summary()


def test_save_writes_png_for_flagged_labels(tmp_path: Path) -> None:
    scan = _fake_scan("backdoored")
    scan.save(tmp_path)
    assert (tmp_path / "flagged_label_1.png").is_file()
    from PIL import Image

    with Image.open(tmp_path / "flagged_label_1.png") as img:
        assert img.size[1] == 128
        assert img.size[0] > 3 * 128


def test_load_rejects_missing_or_bad_report(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        ScanResult.load(tmp_path)
    (tmp_path / "report.json").write_text('{"verdict": "maybe"}')
    with pytest.raises(DataError, match="not a valid scan report"):
        ScanResult.load(tmp_path)


def test_candidate_label_subset(tiny_model: nn.Module, tiny_synthetic: SyntheticSplits) -> None:
    cfg = {**_nc(), "labels": [1, 2, 3]}
    scan = hk.Scanner(tiny_model, 4, config=cfg).run(tiny_synthetic.train.loader())
    assert [c.label for c in scan.report.classes] == [1, 2, 3]
    assert set(scan.all_triggers) == {1, 2, 3}


# ----------------------------------------------------------------------------- errors


def test_too_few_images_per_class(tiny_model: nn.Module, tiny_synthetic: SyntheticSplits) -> None:
    few = tiny_synthetic.train.subset(torch.arange(0, 160, 16))  # ~2-3 per class
    with pytest.raises(DataError, match="too few clean images per class"):
        hk.Scanner(tiny_model, 4, config=_nc()).run(few.loader())
    one = tiny_synthetic.train.subset(
        torch.tensor([int((tiny_synthetic.train.labels == c).nonzero()[0]) for c in range(4)])
    )
    scan = hk.Scanner(
        tiny_model, 4, config={**_nc(), "min_images_per_class": 1, "holdout_fraction": 0}
    ).run(one.loader())
    assert scan.report.clean_images == {"inversion": 4, "holdout": 0}
    assert not scan.report.trigger_asr_on_holdout


def test_missing_class_is_reported(tiny_model: nn.Module, tiny_synthetic: SyntheticSplits) -> None:
    no3 = tiny_synthetic.train.subset(torch.nonzero(tiny_synthetic.train.labels != 3).flatten())
    with pytest.raises(DataError, match="class 3: 0"):
        hk.Scanner(tiny_model, 4, config=_nc()).run(no3.loader())


def test_num_classes_mismatch(tiny_model: nn.Module, tiny_synthetic: SyntheticSplits) -> None:
    with pytest.raises(ModelCompatibilityError, match="num_classes=10 but the model outputs 4"):
        hk.Scanner(tiny_model, 10, config=_nc()).run(tiny_synthetic.train.loader())


def test_non_image_loaders_are_rejected(tiny_model: nn.Module) -> None:
    with pytest.raises(DataError):
        hk.Scanner(tiny_model, 4).run([(torch.rand(8, 10), torch.zeros(8, dtype=torch.long))])
    with pytest.raises(DataError):
        hk.Scanner(tiny_model, 4).run(["not", "batches"])  # type: ignore[arg-type]
    with pytest.raises(DataError):
        hk.Scanner(tiny_model, 4).run(torch.rand(4, 3, 32, 32))  # type: ignore[arg-type]


def test_labels_outside_model_classes(tiny_model: nn.Module) -> None:
    x = torch.rand(40, 3, 32, 32)
    y = torch.arange(40) % 5
    with pytest.raises(DataError, match="labels"):
        hk.Scanner(tiny_model, 4).run([(x, y)])


def test_config_errors(tiny_model: nn.Module) -> None:
    with pytest.raises(ConfigError, match="unknown detector"):
        hk.Scanner(tiny_model, 4, config={"detectors": ["nope"]})
    with pytest.raises(ConfigError, match="not in detectors"):
        hk.Scanner(tiny_model, 4, config={"detector_options": {"mm-bd": {}}})
    with pytest.raises(ConfigError):
        hk.Scanner(tiny_model, 4, config={"detector_options": {"neural-cleanse": {"lr": -1}}})
    with pytest.raises(ConfigError, match=">= 3"):
        hk.Scanner(tiny_model, 2)
    with pytest.raises(ModelCompatibilityError):
        hk.Scanner("model", 4)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="outside"):
        hk.Scanner(tiny_model, 4, config={"labels": [0, 1, 9]}).run(
            [(torch.rand(40, 3, 32, 32), torch.arange(40) % 4)]
        )


def test_data_free_mode_rules(tiny_model: nn.Module) -> None:
    with pytest.raises(DataError, match="need clean images"):
        hk.Scanner(tiny_model, 4).run()
    mm = {"detectors": ["mm-bd"], "detector_options": {"mm-bd": {"steps": 5, "starts": 2}}}
    with pytest.raises(ConfigError, match="input_shape"):
        hk.Scanner(tiny_model, 4, config=mm).run()
    scan = hk.Scanner(tiny_model, 4, config=mm, input_shape=(3, 32, 32)).run()
    rep = scan.report
    assert rep.data_free
    assert rep.clean_images == {"inversion": 0, "holdout": 0}
    d = rep.detectors[0]
    assert d.detector == "mm-bd"
    assert d.p_value is not None
    assert 0 <= d.p_value <= 1
    assert all(c.max_margin is not None for c in rep.classes)
    assert scan.trigger is None
    assert scan.all_triggers == {}


def test_wrong_model_output(tiny_synthetic: SyntheticSplits) -> None:
    class Bad(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(2, 3))[..., None]

    with pytest.raises(ModelCompatibilityError, match="logits"):
        hk.Scanner(Bad(), 4).run(tiny_synthetic.train.loader())


# ----------------------------------------------------------------------------- combination


class _Fixed(Detector):
    """A plugin-style detector with a fixed outcome (tests the combination rules)."""

    name = "fixed"
    needs_data = False
    outcomes: ClassVar[dict[str, tuple[float, list[int]]]] = {}

    def detect(self, ctx: DetectorContext) -> DetectorOutput:
        score, flagged = self.outcomes[type(self).name]
        values = {y: float(y + 1) for y in ctx.labels}
        return DetectorOutput(
            detector=type(self).name,
            statistic="fixed",
            suspicious_side="high",
            values=values,
            anomaly_per_label=dict.fromkeys(ctx.labels, 0.0),
            anomaly_index=0.0,
            evidence=score,
            threshold=0.5,
            flagged=flagged,
            score=score,
            seconds=0.0,
        )


def _fixed(name: str, score: float, flagged: list[int]) -> str:
    cls = type(name, (_Fixed,), {"name": name})
    _Fixed.outcomes[name] = (score, flagged)
    DETECTORS.register(name, cls, override=True)
    return name


@pytest.mark.parametrize(
    ("combine", "verdict", "score", "flagged"),
    [
        ("any", "backdoored", 0.9, [1, 2]),
        ("all", "suspicious", 0.3, []),
        ("mean", "backdoored", 0.6, [1, 2]),
    ],
)
def test_combination_rules(
    tiny_model: nn.Module, combine: str, verdict: str, score: float, flagged: list[int]
) -> None:
    a = _fixed("fixed-a", 0.9, [1, 2])
    b = _fixed("fixed-b", 0.3, [])
    try:
        scan = hk.Scanner(
            tiny_model, 4, config={"detectors": [a, b], "combine": combine}, input_shape=(3, 32, 32)
        ).run()
    finally:
        DETECTORS.unregister(a)
        DETECTORS.unregister(b)
    assert scan.verdict == verdict
    assert scan.score == pytest.approx(score)
    assert scan.flagged_labels == flagged
    assert [d.verdict for d in scan.report.detectors] == ["backdoored", "suspicious"]


def test_any_orders_flagged_labels_by_the_strongest_detector(tiny_model: nn.Module) -> None:
    """A natural label one detector flags weakly (score 0.6) must not come before the target
    another detector flags strongly (0.99): repairs use the first label's trigger."""
    a = _fixed("fixed-weak", 0.6, [3])
    b = _fixed("fixed-strong", 0.99, [1])
    try:
        scan = hk.Scanner(
            tiny_model, 4, config={"detectors": [a, b]}, input_shape=(3, 32, 32)
        ).run()
    finally:
        DETECTORS.unregister(a)
        DETECTORS.unregister(b)
    assert scan.flagged_labels == [1, 3]


def _fake_scan(verdict: str) -> ScanResult:
    a = _fixed("fixed-c", 0.95 if verdict == "backdoored" else 0.1, [1])
    try:
        scan = hk.Scanner(
            hk.create_model("small-cnn", 4, normalization=None),
            4,
            config={"detectors": [a]},
            input_shape=(3, 32, 32),
        ).run()
    finally:
        DETECTORS.unregister(a)
    mask = torch.zeros(32, 32)
    mask[-4:, -4:] = 1
    scan.all_triggers[1] = hk.MaskPatternTrigger(mask, torch.ones(3, 32, 32))
    # pretend the fixed detector recovered that trigger itself (as neural-cleanse does)
    dets = [d.model_copy(update={"produces_triggers": True}) for d in scan.report.detectors]
    return ScanResult(scan.report.model_copy(update={"detectors": dets}), scan.all_triggers)


def test_result_accessors() -> None:
    scan = _fake_scan("backdoored")
    assert scan.is_backdoored
    assert scan.target == 1
    assert isinstance(scan.trigger, hk.MaskPatternTrigger)
    assert scan.triggers == {1: scan.all_triggers[1]}
    assert "backdoored" in repr(scan)
    clean = _fake_scan("clean")
    assert clean.verdict == "clean"
    assert clean.target is None
    assert clean.trigger is None


def test_detector_config_base_rejects_unknown_keys() -> None:
    with pytest.raises(ConfigError):
        DetectorConfig(nope=1)  # type: ignore[call-arg]


def test_labels_flagged_only_by_a_trigger_free_detector_get_no_trigger() -> None:
    scan = _fake_scan("backdoored")
    dets = [d.model_copy(update={"produces_triggers": False}) for d in scan.report.detectors]
    other = ScanResult(scan.report.model_copy(update={"detectors": dets}), scan.all_triggers)
    assert other.flagged_labels == [1]
    assert other.triggers == {}
    assert other.trigger is None


# ----------------------------------------------------------------------------- NC statistic

# A wide spread of natural norms (as on short-trained CIFAR models), a target at an eighth of
# the median and a second, naturally small label: the raw-L1 MAD misses the target.
SPREAD_L1 = [20.0, 60.0, 35.0, 80.0, 45.0, 30.0, 70.0, 5.0, 12.0, 50.0]


def _scan_with_norms(
    monkeypatch: pytest.MonkeyPatch, l1: list[float], tmp_path: Path, **nc: object
) -> ScanResult:
    """A real Scanner run whose Neural Cleanse inversion returns masks with the given norms."""

    def fake_invert(
        self: NeuralCleanse, ctx: DetectorContext, labels: list[int], group: list[int], *a: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        c, h, w = ctx.image_shape
        masks = torch.stack([torch.full((h, w), l1[i] / (h * w)) for i in group])
        return masks, torch.zeros(len(group), c, h, w)

    monkeypatch.setattr(NeuralCleanse, "_invert", fake_invert)
    model = hk.create_model("small-cnn", num_classes=10, normalization=None).eval()
    data = hk.make_synthetic_dataset(num_classes=10, train_per_class=8, test_per_class=1)
    cfg = {"detectors": ["neural-cleanse"], **_nc(**nc)}
    scan = hk.Scanner(model, 10, config=cfg, runtime={"device": "cpu"}).run(data.train.loader())
    scan.save(tmp_path / "scan")  # the anomaly chart draws the statistic's own threshold line
    assert (tmp_path / "scan" / "anomaly_neural-cleanse.png").is_file()
    return scan


def test_published_raw_l1_statistic_misses_a_tiny_trigger_among_spread_norms(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    scan = _scan_with_norms(monkeypatch, SPREAD_L1, tmp_path, statistic="l1")  # the published rule
    det = scan.report.detectors[0]
    assert det.info["statistic"] == "l1"
    assert det.flagged_labels == []  # index (40 - 5) / 29.7 = 1.18 < 2
    assert det.anomaly_index == pytest.approx(35 / (1.4826 * 20), rel=1e-6)


def test_log_l1_statistic_flags_the_tiny_trigger_not_the_naturally_small_label(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    scan = _scan_with_norms(monkeypatch, SPREAD_L1, tmp_path)  # the default
    det = scan.report.detectors[0]
    assert det.info["statistic"] == "log-l1"
    assert det.flagged_labels == [7]
    logs = [math.log(v) for v in SPREAD_L1]
    stats = mad_anomaly(logs, side="low")
    assert det.anomaly_index == pytest.approx(stats.index, rel=1e-6)
    assert stats.per_label[8] < 2.0  # the naturally small label (12) stays below the threshold
    # the table still reports the norms themselves
    assert [c.mask_l1 for c in sorted(scan.report.classes, key=lambda c: c.label)] == (
        pytest.approx(SPREAD_L1, rel=1e-5)
    )


def test_log_l1_statistic_does_not_flag_an_even_spread(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    even = [20.0, 60.0, 35.0, 80.0, 45.0, 30.0, 70.0, 25.0, 40.0, 50.0]
    scan = _scan_with_norms(monkeypatch, even, tmp_path, statistic="log-l1")
    assert scan.report.detectors[0].flagged_labels == []
    assert scan.verdict != "backdoored"


def test_unknown_statistic_is_a_config_error(tiny_model: nn.Module) -> None:
    with pytest.raises(ConfigError, match="statistic"):
        hk.Scanner(tiny_model, 4, config=_nc(statistic="l2"))


def test_a_naturally_small_label_among_tight_norms_is_not_flagged_by_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The MAD of ten tight log-norms is so small that a label at 0.6 of the median passes
    index 2; ``max_median_ratio`` (0.5, a floor on the MAD) keeps its index under 2 and it
    unflagged (verdict ``suspicious``) while a trigger at a tenth of the median is still
    flagged."""
    tight = [100.0, 104.0, 98.0, 102.0, 101.0, 99.0, 103.0, 97.0, 60.0, 100.0]
    scan = _scan_with_norms(monkeypatch, tight, tmp_path)
    det = scan.report.detectors[0]
    assert det.info["plain_mad_index"] > 2.0
    # log(100 / 60) / (ln 2 / 2): the floored index, which the score follows
    assert det.anomaly_index == pytest.approx(math.log(100 / 60) / (math.log(2) / 2), rel=1e-3)
    assert det.score < 0.5
    assert det.flagged_labels == []
    assert det.info["not_flagged_by_ratio"] == [8]
    assert det.info["median_mask_l1"] == pytest.approx(100.0, rel=1e-5)
    assert scan.verdict == "suspicious"
    published = _scan_with_norms(monkeypatch, tight, tmp_path, max_median_ratio=None)
    assert published.report.detectors[0].flagged_labels == [8]
    assert published.verdict == "backdoored"
    planted = [*tight[:8], 10.0, 100.0]
    assert _scan_with_norms(monkeypatch, planted, tmp_path).flagged_labels == [8]


# ----------------------------------------------------------------------------- clean reference


def test_clean_reference_compares_a_scan_with_clean_models(tmp_path: Path) -> None:
    import json

    from hardenkit.scan.calibration import load_reference

    ref_file = tmp_path / "ref.json"
    models = [
        {"id": f"m{i}", "indices": {"neural-cleanse": v, "warp": 0.0}}
        for i, v in enumerate([0.5, 1.0, 2.5])
    ]
    ref_file.write_text(
        json.dumps(
            {
                "source": "test",
                "description": "three",
                "threshold": 2.0,
                "num_classes": 10,
                "models": models,
            }
        )
    )
    ref = load_reference(str(ref_file))
    assert ref is not None
    cal = ref.compare({"neural-cleanse": 1.0, "warp": 0.0})
    assert cal is not None
    assert (cal["combined_index"], cal["clean_at_or_above"]) == (1.0, 2)
    assert cal["p_clean"] == pytest.approx(3 / 4)
    assert (cal["clean_max_index"], cal["clean_flagged_at_threshold"]) == (2.5, 1)
    assert ref.compare({"pixel": 3.0}) is None  # no reference model ran pixel
    assert load_reference(str(tmp_path / "missing.json")) is None


def test_the_packaged_clean_reference_has_the_zoo() -> None:
    from hardenkit.scan.calibration import load_reference

    ref = load_reference()
    assert ref is not None
    assert ref.size >= 8
    assert ref.num_classes == 10
    # the threshold held on every clean reference model (FPR 0 at the default threshold)
    cal = ref.compare({"neural-cleanse": 0.0, "warp": 0.0})
    assert cal is not None
    assert cal["clean_flagged_at_threshold"] == 0


def test_calibration_compares_every_detector_that_decides_at_the_reference_threshold() -> None:
    from hardenkit.scan.calibration import load_reference
    from hardenkit.scan.scanner import DetectorReport, _calibration

    ref = load_reference()
    assert ref is not None
    assert {"neural-cleanse", "warp", "prediction-share", "signal"} <= ref.detectors

    def rep(name: str, evidence: float, threshold: float = 2.0) -> DetectorReport:
        return DetectorReport.model_construct(detector=name, evidence=evidence, threshold=threshold)

    # a SIG-like model: the inversions see nothing, the prediction share is off the scale
    cal = _calibration(
        [rep("neural-cleanse", 0.9), rep("warp", 0.0), rep("prediction-share", 30.0)], 10
    )
    assert cal is not None
    assert cal["detectors"] == ["neural-cleanse", "prediction-share", "warp"]
    assert cal["combined_index"] == 30.0
    assert cal["clean_at_or_above"] == 0
    assert cal["clean_flagged_at_threshold"] == 0  # no clean reference model flagged
    # another alpha is another scale: left out; MM-BD (threshold -log10 0.05) is not in it
    cal = _calibration(
        [rep("neural-cleanse", 0.9), rep("prediction-share", 30.0, 3.0), rep("mm-bd", 5.0, 1.301)],
        10,
    )
    assert cal is not None
    assert cal["detectors"] == ["neural-cleanse"]
    assert _calibration([rep("neural-cleanse", 0.9)], 4) is None  # other number of labels


def test_invert_recovers_a_label_as_the_full_scan_does() -> None:
    model = hk.create_model("small-cnn", num_classes=4, normalization=None)
    data = hk.data.make_synthetic_dataset(num_classes=4, train_per_class=20)
    config = {"detector_options": {"neural-cleanse": {"epochs": 3}}}
    scanner = hk.Scanner(model, 4, config=config, runtime={"seed": 3})
    full = scanner.run(data.train.loader())
    alone = scanner.invert(data.train.loader(), [2])
    trig, ref = alone["neural-cleanse"][2], full.inversions["neural-cleanse"][2]
    assert isinstance(trig, hk.MaskPatternTrigger)
    assert isinstance(ref, hk.MaskPatternTrigger)
    # the same images and random start: the label's row of the batched optimisation
    torch.testing.assert_close(trig.mask, ref.mask, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(trig.pattern, ref.pattern, atol=1e-4, rtol=1e-4)
    other = hk.Scanner(model, 4, config=config, runtime={"seed": 4}).invert(
        data.train.loader(), [2]
    )["neural-cleanse"][2]
    assert isinstance(other, hk.MaskPatternTrigger)
    assert not torch.allclose(other.mask, trig.mask)  # another seed: another start
    for bad in ([], [2, 2], [7]):
        with pytest.raises(ConfigError, match="distinct labels"):
            scanner.invert(data.train.loader(), bad)


def test_recheck_scans_again_and_compares_the_labels_with_the_scan_before() -> None:
    model = hk.create_model("small-cnn", num_classes=4, normalization=None)
    data = hk.data.make_synthetic_dataset(num_classes=4, train_per_class=20)
    config = {"detector_options": {"neural-cleanse": {"epochs": 3}}}
    before = hk.Scanner(model, 4, config=config, runtime={"seed": 3}).run(data.train.loader())
    nc = next(d for d in before.report.detectors if d.detector == "neural-cleanse")
    scanner = hk.Scanner(model, 4, config=config, runtime={"seed": 3})
    rows, again = scanner.recheck(data.train.loader(), [2], before.report)
    (row,) = rows
    old = next(c for c in nc.classes if c.label == 2)
    # the same model, images and starts: the scan's own value, index, flag and verdict
    assert row.value_after == pytest.approx(old.value, rel=1e-4)
    assert row.anomaly_after == pytest.approx(old.anomaly_index, rel=1e-3, abs=1e-6)
    assert row.flagged_after == old.flagged
    assert row.verdict_after == nc.verdict
    assert again.verdict == before.verdict
    smallest = min(nc.classes, key=lambda c: c.value).label
    assert row.most_extreme_after == (smallest == 2)
    # a detector run with other settings than the scan before is not compared: no row
    other = {"detector_options": {"neural-cleanse": {"epochs": 4}}}
    assert (
        hk.Scanner(model, 4, config=other).recheck(data.train.loader(), [2], before.report)[0] == []
    )
    for bad in ([], [2, 2], [9]):
        with pytest.raises(ConfigError, match="distinct labels"):
            scanner.recheck(data.train.loader(), bad, before.report)
