"""Property: a corrupted batch anywhere in a loader gives a typed error or the clean answer.

Hypothesis throws random corruptions (NaN / Inf pixels, 0..255 pixels, negative pixels,
float / one-hot / out-of-range / negative labels, and harmless re-encodings such as int32
labels or float64 pixels) at a random batch position, and runs the Validator, the Scanner and
the Purifier on the result. Each must either raise a :class:`HardenkitError` or return exactly
what the clean loader gives — never a different verdict (issue: "Never a silent wrong answer").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor

import hardenkit as hk
from hardenkit.testing import BackdoorFixture

from .conftest import unchanged

Batch = tuple[Tensor, Tensor]
CPU = {"seed": 0, "device": "cpu"}
K = 4


def _nan(x: Tensor, y: Tensor) -> Batch:
    x = x.clone()
    x[0, 0, 0, 0] = float("nan")
    return x, y


def _inf(x: Tensor, y: Tensor) -> Batch:
    x = x.clone()
    x[-1, -1, -1, -1] = float("inf")
    return x, y


def _range255(x: Tensor, y: Tensor) -> Batch:
    return x * 255, y


def _negative_pixels(x: Tensor, y: Tensor) -> Batch:
    return x - 0.5, y


def _uint8(x: Tensor, y: Tensor) -> Batch:
    return (x * 255).to(torch.uint8), y


def _float_labels(x: Tensor, y: Tensor) -> Batch:
    return x, y.float()


def _one_hot(x: Tensor, y: Tensor) -> Batch:
    return x, torch.nn.functional.one_hot(y, K)


def _out_of_range(x: Tensor, y: Tensor) -> Batch:
    y = y.clone()
    y[0] = K
    return x, y


def _negative_label(x: Tensor, y: Tensor) -> Batch:
    y = y.clone()
    y[0] = -1
    return x, y


def _short_labels(x: Tensor, y: Tensor) -> Batch:
    return x, y[:-1]


def _other_shape(x: Tensor, y: Tensor) -> Batch:
    return x[:, :, :-2, :-2], y


# harmless: the same numbers, another encoding -> the result must be identical
def _int32_labels(x: Tensor, y: Tensor) -> Batch:
    return x, y.to(torch.int32)


def _float64_pixels(x: Tensor, y: Tensor) -> Batch:
    return x.to(torch.float64), y


def _identity(x: Tensor, y: Tensor) -> Batch:
    return x, y


HARMFUL: list[Callable[[Tensor, Tensor], Batch]] = [
    _nan,
    _inf,
    _range255,
    _negative_pixels,
    _uint8,
    _float_labels,
    _one_hot,
    _out_of_range,
    _negative_label,
    _short_labels,
    _other_shape,
]
HARMLESS: list[Callable[[Tensor, Tensor], Batch]] = [_int32_labels, _float64_pixels, _identity]
CORRUPTIONS = st.sampled_from(HARMFUL + HARMLESS)


def _batches(x: Tensor, y: Tensor, size: int) -> list[Batch]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(y), size)]


def _corrupt(batches: list[Batch], position: int, fn: Callable[[Tensor, Tensor], Batch]) -> list:
    out = list(batches)
    i = position % len(out)
    out[i] = fn(*out[i])
    return out


def _outcome(run: Callable[[list[Batch]], Any], batches: list[Batch]) -> Any:
    try:
        return run(batches)
    except hk.HardenkitError as exc:
        return exc  # typed: fine
    # anything else propagates and fails the test (an untyped crash)


def _check(
    clean: Any, got: Any, fn: Callable[[Tensor, Tensor], Batch], same: Callable[[Any, Any], bool]
) -> None:
    if isinstance(got, hk.HardenkitError):
        assert fn in HARMFUL, f"{fn.__name__} is harmless but raised {got!r}"
        return
    assert fn in HARMLESS, f"{fn.__name__} was silently accepted"
    assert same(clean, got), f"{fn.__name__} changed the result"


SETTINGS = settings(
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def test_batches(tiny_fx: BackdoorFixture) -> list[Batch]:
    x, y = tiny_fx.data.test.tensors()
    return _batches(x.float() / 255 if not x.is_floating_point() else x, y, 16)


@pytest.fixture(scope="module")
def train_batches(tiny_fx: BackdoorFixture) -> list[Batch]:
    x, y = tiny_fx.data.train.tensors()
    return _batches(x.float() / 255 if not x.is_floating_point() else x, y, 64)


@settings(SETTINGS, max_examples=40)
@given(fn=CORRUPTIONS, position=st.integers(0, 20))
def test_validator_never_gives_a_different_verdict(
    tiny_fx: BackdoorFixture, test_batches: list[Batch], fn: Any, position: int
) -> None:
    bd = tiny_fx.backdoored
    pol = hk.GatePolicy(max_asr=0.05)

    def run(batches: list[Batch]) -> hk.ValidationReport:
        return hk.Validator(bd.model, policy=pol, runtime=CPU).run(
            batches, trigger=bd.trigger, target=bd.target
        )

    clean = run(test_batches)
    with unchanged(bd.model):
        got = _outcome(run, _corrupt(test_batches, position, fn))

    def same(a: hk.ValidationReport, b: hk.ValidationReport) -> bool:
        return (
            a.benign_accuracy == b.benign_accuracy
            and a.attack_success_rate == b.attack_success_rate
            and a.passed == b.passed
        )

    _check(clean, got, fn, same)


@pytest.fixture(scope="module")
def scan_clean(tiny_fx: BackdoorFixture, train_batches: list[Batch]) -> hk.ScanResult:
    return _scan(tiny_fx, train_batches)


def _scan(fx: BackdoorFixture, batches: list[Batch]) -> hk.ScanResult:
    cfg = {
        "detector_options": {"neural-cleanse": {"epochs": 2, "batch_size": 32}},
        "max_images": 64,
        "max_holdout_images": 32,
    }
    return hk.Scanner(fx.backdoored.model, K, config=cfg, runtime=CPU).run(batches)


@settings(SETTINGS, max_examples=8)
@given(fn=CORRUPTIONS, position=st.integers(0, 20))
def test_scanner_never_gives_a_different_verdict(
    tiny_fx: BackdoorFixture,
    train_batches: list[Batch],
    scan_clean: hk.ScanResult,
    fn: Any,
    position: int,
) -> None:
    with unchanged(tiny_fx.backdoored.model):
        got = _outcome(lambda b: _scan(tiny_fx, b), _corrupt(train_batches, position, fn))

    def same(a: hk.ScanResult, b: hk.ScanResult) -> bool:
        return (a.verdict, a.flagged_labels, a.score) == (b.verdict, b.flagged_labels, b.score)

    _check(scan_clean, got, fn, same)


def _purify(fx: BackdoorFixture, batches: list[Batch]) -> hk.PurificationResult:
    return hk.Purifier(fx.backdoored.model, "finetune", config={"epochs": 1}, runtime=CPU).run(
        batches
    )


@pytest.fixture(scope="module")
def purify_clean(tiny_fx: BackdoorFixture, train_batches: list[Batch]) -> hk.PurificationResult:
    return _purify(tiny_fx, train_batches)


@settings(SETTINGS, max_examples=8)
@given(fn=CORRUPTIONS, position=st.integers(0, 20))
def test_purifier_never_gives_a_different_result(
    tiny_fx: BackdoorFixture,
    train_batches: list[Batch],
    purify_clean: hk.PurificationResult,
    fn: Any,
    position: int,
) -> None:
    with unchanged(tiny_fx.backdoored.model):
        got = _outcome(lambda b: _purify(tiny_fx, b), _corrupt(train_batches, position, fn))

    def same(a: hk.PurificationResult, b: hk.PurificationResult) -> bool:
        return (a.status, a.report.output_model.sha256, a.report.ba_after) == (
            b.status,
            b.report.output_model.sha256,
            b.report.ba_after,
        )

    _check(purify_clean, got, fn, same)


@pytest.mark.parametrize("fn", HARMFUL, ids=lambda f: f.__name__)
def test_every_harmful_corruption_in_a_late_batch_names_the_batch(
    test_batches: list[Batch], fn: Any
) -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, K))
    batches = _corrupt(test_batches, 3, fn)
    with unchanged(model), pytest.raises(hk.HardenkitError, match="batch 3"):
        hk.Validator(model, runtime=CPU).run(batches)
