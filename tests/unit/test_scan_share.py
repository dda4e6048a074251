"""The prediction-share detector: labels the model (almost) never predicts on clean images."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import hardenkit as hk
from hardenkit.errors import NonFiniteError
from hardenkit.scan import DetectorContext, PredictionShareDetector
from hardenkit.scan.anomaly import binomial_cdf


class _Fixed(nn.Module):
    """Predicts ``table[label]`` for an image whose first pixel is ``label / 10``."""

    def __init__(self, table: list[int], k: int) -> None:
        super().__init__()
        self.table = torch.tensor(table)
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lab = (x[:, 0, 0, 0] * 10).round().long()
        return nn.functional.one_hot(self.table[lab], self.k).float() * 5


def _ctx(
    model: nn.Module, y: torch.Tensor, k: int, *, holdout: torch.Tensor | None = None
) -> DetectorContext:
    def images(lab: torch.Tensor) -> torch.Tensor:
        x = torch.zeros(len(lab), 1, 2, 2)
        x[:, 0, 0, 0] = lab.float() / 10
        return x

    return DetectorContext(
        model=model,
        num_classes=k,
        image_shape=(1, 2, 2),
        device=torch.device("cpu"),
        amp=False,
        seed=0,
        x=images(y),
        y=y,
        labels=list(range(k)),
        progress=lambda *a, **kw: None,
        x_holdout=None if holdout is None else images(holdout),
        y_holdout=holdout,
    )


def test_binomial_cdf_matches_the_exact_sum() -> None:
    for n, p in [(10, 0.5), (37, 0.04), (200, 0.3)]:
        for k in (0, 1, 3, n // 2, n):
            exact = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))
            assert binomial_cdf(k, n, p) == pytest.approx(exact, rel=1e-9, abs=1e-300)
    assert binomial_cdf(-1, 5, 0.5) == 0.0
    assert binomial_cdf(3, 5, 0.0) == 1.0
    assert binomial_cdf(3, 5, 1.0) == 0.0


def test_a_never_predicted_label_is_flagged_with_its_share_and_p_value() -> None:
    # 10 labels x 25 images; label 7 is always predicted as 3 (a dead class)
    table = list(range(10))
    table[7] = 3
    y = torch.arange(10).repeat(25)
    out = PredictionShareDetector().detect(_ctx(_Fixed(table, 10), y, 10))
    assert out.flagged == [7]
    assert out.values[7] == 0.0
    assert out.values[3] == 2.0
    assert out.values[0] == 1.0
    # Bonferroni over 10 labels: 10 * (1 - 0.4 * 25 / 250) ** 250
    assert out.p_value == pytest.approx(10 * 0.96**250, rel=1e-9)
    assert out.per_label[7]["predicted"] == 0
    assert out.per_label[7]["recall"] == 0.0
    assert out.score > 0.5
    assert out.evidence > out.threshold
    assert out.info["underpowered"] is False
    assert "label 7 is predicted for 0 clean images, though 25 of them" in out.info["finding"]


def test_a_working_model_is_not_flagged() -> None:
    y = torch.arange(10).repeat(25)
    out = PredictionShareDetector().detect(_ctx(_Fixed(list(range(10)), 10), y, 10))
    assert out.flagged == []
    assert out.p_value == 1.0
    assert out.score < 0.5
    assert out.info["finding"] is None


def test_a_weak_label_at_the_null_share_is_not_flagged() -> None:
    # label 2 predicted for 10 of its 25 images (share 0.4 = null_share): a weak, not dead, class
    y = torch.arange(10).repeat(25)
    model = _Fixed(list(range(10)), 10)
    x_lab = y.clone()
    x_lab[(y == 2).nonzero().flatten()[10:]] = 5  # 15 of the 25 "2" images look like a 5
    ctx = _ctx(model, x_lab, 10)
    ctx.y = y
    out = PredictionShareDetector().detect(ctx)
    assert out.values[2] == pytest.approx(0.4)
    assert out.flagged == []


def test_too_few_images_cannot_flag_and_says_so() -> None:
    table = list(range(10))
    table[7] = 3
    y = torch.arange(10).repeat(5)  # 50 images: even zero predictions are not significant
    out = PredictionShareDetector().detect(_ctx(_Fixed(table, 10), y, 10))
    assert out.flagged == []
    assert out.info["underpowered"] is True
    assert out.info["smallest_possible_p"] >= 0.01


def test_held_out_images_count_too() -> None:
    table = list(range(10))
    table[7] = 3
    y = torch.arange(10).repeat(10)  # 100 inversion images alone: underpowered
    out = PredictionShareDetector().detect(_ctx(_Fixed(table, 10), y, 10, holdout=y.clone()))
    assert out.info["images"] == 200
    assert out.flagged == [7]


def test_non_finite_logits_fail_closed() -> None:
    class _NaN(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((len(x), 4), float("nan"))

    y = torch.arange(4).repeat(10)
    with pytest.raises(NonFiniteError):
        PredictionShareDetector().detect(_ctx(_NaN(), y, 4))


def test_the_scanner_reports_it_and_a_flag_alone_offers_no_trigger() -> None:
    table = list(range(10))
    table[4] = 0
    model = _Fixed(table, 10)
    y = torch.arange(10).repeat(30)
    x = torch.zeros(len(y), 1, 2, 2)
    x[:, 0, 0, 0] = y.float() / 10
    data = hk.ImageDataset(x, y)
    scan = hk.Scanner(
        model,
        10,
        config={"detectors": ["prediction-share"]},
        runtime={"device": "cpu", "progress": "off"},
    ).run(data.loader(batch_size=100))
    assert scan.verdict == "backdoored"
    assert scan.flagged_labels == [4]
    assert scan.triggers == {}  # nothing to unlearn: a repair runs its trigger-free fallback
    det = scan.report.detectors[0]
    assert det.detector == "prediction-share"
    assert det.p_value is not None
    assert "prediction-share: backdoored" in scan.report.summary()
    assert "label 4 is predicted for 0 clean images, though 30 of them" in scan.report.summary()
    assert scan.report.clean_images["holdout"] > 0


def test_scan_summary_says_when_the_test_is_underpowered() -> None:
    model = _Fixed(list(range(10)), 10)
    y = torch.arange(10).repeat(5)
    x = torch.zeros(len(y), 1, 2, 2)
    x[:, 0, 0, 0] = y.float() / 10
    scan = hk.Scanner(
        model,
        10,
        config={"detectors": ["prediction-share"]},
        runtime={"device": "cpu", "progress": "off"},
    ).run(hk.ImageDataset(x, y).loader(batch_size=100))
    assert "could not flag any label" in scan.report.summary()
