"""MM-BD as in the reference code: plain gradient steps, per-class stop, ML gamma fit."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hardenkit.scan import MaxMarginConfig, MaxMarginDetector
from hardenkit.scan.anomaly import gamma3_fit, gamma3_max_pvalue, gamma_max_pvalue
from hardenkit.scan.base import DetectorContext

# (null margins, largest margin) and scipy.stats.gamma.fit / 1 - cdf(max) ** K on them
# (scipy 1.16; recorded once, scipy is not a dependency)
SCIPY_CASES = [
    (
        [7.988, 5.456, 6.775, 4.993, 11.513, 4.864, 3.661, 7.755, 5.614],
        18.421,
        (1.5796887815891811, 3.453378436703254, 1.9369908913917537),
        0.017195829656702077,
    ),
    (
        [1.576, 3.543, 6.066, 4.455, 5.46, 9.485, 5.861, 4.944, 6.883],
        15.176,
        (167.7179941988852, -21.49210747709479, 0.16012458668815213),
        9.3919921349217e-05,
    ),
]


@pytest.mark.parametrize(("null", "top", "params", "p"), SCIPY_CASES)
def test_ml_gamma_fit_matches_scipy_on_regular_samples(
    null: list[float], top: float, params: tuple[float, float, float], p: float
) -> None:
    a, loc, scale = gamma3_fit(null)
    assert math.isclose(a, params[0], rel_tol=1e-3)
    assert math.isclose(loc, params[1], rel_tol=1e-3, abs_tol=1e-3)
    assert math.isclose(scale, params[2], rel_tol=1e-3)
    got, arg = gamma3_max_pvalue([*null, top])
    assert arg == len(null)
    assert math.isclose(got, p, rel_tol=1e-3)


def test_ml_fit_keeps_the_shape_at_least_one_where_the_likelihood_is_unbounded() -> None:
    # scipy returns shape 0.93 here (a point near the unbounded corner); we hold shape = 1
    null = [11.953, 6.432, 4.44, 2.199, 3.696, 5.939, 4.785, 3.394, 6.603]
    a, loc, _ = gamma3_fit(null)
    assert a == 1.0
    assert loc < min(null)
    p, _ = gamma3_max_pvalue([*null, 19.125])
    assert 0.05 < p < 0.07  # scipy's fit gives 0.048: the bounded fit is more conservative


def test_ml_exponent_is_k_and_moments_exponent_is_k_minus_1() -> None:
    vals = [*SCIPY_CASES[0][0], SCIPY_CASES[0][1]]
    p_k, _ = gamma3_max_pvalue(vals)
    p_k1, _ = gamma3_max_pvalue(vals, exponent=len(vals) - 1)
    assert p_k > p_k1  # one more comparison: a larger p-value
    assert math.isclose(1 - (1 - p_k) ** ((len(vals) - 1) / len(vals)), p_k1, rel_tol=1e-9)
    assert gamma_max_pvalue(vals)[1] == len(vals) - 1


def test_constant_values_do_not_crash() -> None:
    a, loc, scale = gamma3_fit([2.0, 2.0, 2.0])
    assert a > 0
    assert scale > 0
    assert loc < 2.0


class MarginModel(nn.Module):
    """K = 6 classes scoring channel / region means; class 0 also scores one pixel × 40."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.mean(dim=(2, 3))  # (N, 3)
        rows = x[:, 0].mean(dim=2)  # (N, 8)
        s = torch.stack(
            [c[:, 0], c[:, 1], c[:, 2], rows[:, :4].mean(1), rows[:, 4:].mean(1)], dim=1
        )
        s0 = c.mean(1, keepdim=True) + 40 * x[:, 1, 3, 3].unsqueeze(1)
        return 4 * torch.cat([s0, s], dim=1)


def _ctx(model: nn.Module) -> DetectorContext:
    return DetectorContext(
        model=model.eval(),
        num_classes=6,
        image_shape=(3, 8, 8),
        device=torch.device("cpu"),
        amp=False,
        seed=0,
        x=None,
        y=None,
        labels=list(range(6)),
        progress=lambda *a, **k: None,
    )


def test_reference_defaults() -> None:
    cfg = MaxMarginConfig()
    assert (cfg.starts, cfg.steps, cfg.lr, cfg.optimizer, cfg.fit) == (30, 300, 0.01, "sgd", "ml")
    assert cfg.tolerance == 1e-5


@pytest.mark.parametrize(("optimizer", "fit"), [("sgd", "ml"), ("adam", "moments")])
def test_flags_the_class_with_the_one_pixel_shortcut(optimizer: str, fit: str) -> None:
    out = MaxMarginDetector(
        {"starts": 4, "steps": 200, "lr": 0.5, "optimizer": optimizer, "fit": fit}
    ).detect(_ctx(MarginModel()))
    assert out.flagged == [0]
    assert out.p_value is not None
    assert out.p_value < 0.05
    assert out.info["fit"] == fit
    assert out.info["optimizer"] == optimizer


def test_sgd_stops_a_class_once_its_loss_is_flat() -> None:
    # a class whose images all left the [0, 1] box (the model sees them clamped) has a flat
    # loss: it stops; with tolerance 0 every class runs every step
    cfg = {"starts": 2, "steps": 60, "lr": 5.0}
    out = MaxMarginDetector(cfg).detect(_ctx(MarginModel()))
    steps = {y: row["steps"] for y, row in out.per_label.items()}
    assert sum(s < 60 for s in steps.values()) >= 3, steps
    flat = MaxMarginDetector({**cfg, "tolerance": 0}).detect(_ctx(MarginModel()))
    assert {row["steps"] for row in flat.per_label.values()} == {60}


def test_three_labels_fall_back_to_the_moments_fit() -> None:
    ctx = _ctx(MarginModel())
    ctx.labels = [0, 1, 2]
    out = MaxMarginDetector({"starts": 2, "steps": 5}).detect(ctx)
    assert out.info["fit"] == "moments"


def test_report_with_mm_bd_and_pixel_round_trips(tmp_path: object) -> None:
    from pathlib import Path

    import hardenkit as hk

    model = hk.create_model("small-cnn", num_classes=4, normalization=None).eval()
    data = hk.make_synthetic_dataset(num_classes=4, train_per_class=12, test_per_class=1)
    cfg = {
        "detectors": ["pixel", "mm-bd"],
        "detector_options": {"pixel": {"epochs": 2}, "mm-bd": {"steps": 3, "starts": 2}},
    }
    scan = hk.Scanner(model, 4, config=cfg, runtime={"device": "cpu"}).run(data.train.loader())
    again = hk.ScanResult.load(scan.save(Path(str(tmp_path)) / "scan"))
    assert again.report == scan.report
    assert set(again.all_triggers) == set(scan.all_triggers)
