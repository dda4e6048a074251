"""Scan budgets: named presets (``quick`` / ``standard`` / ``thorough``) or seconds, and an
up-front estimate of how long a scan may take.

The presets run Neural Cleanse, the warp inversion and the prediction share
(:data:`DEFAULT_DETECTORS`) and scale
the Neural Cleanse inversion (images and epochs per label); a budget in seconds uses the
``standard`` preset plus ``ScanConfig.max_seconds``, which stops the detectors when the time
is up and marks the report ``budget_exhausted`` (a ``clean`` verdict is then not
conclusive).

Example:
    >>> from hardenkit.scan.budget import scan_config_for_budget
    >>> cfg = scan_config_for_budget("quick")
    >>> cfg.max_images, cfg.detector_options["neural-cleanse"]["epochs"]
    (200, 15)
    >>> scan_config_for_budget("90").max_seconds
    90.0
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import parse_config
from ..errors import ConfigError
from .neural_cleanse import NeuralCleanseConfig
from .scanner import ScanConfig

__all__ = [
    "DEFAULT_DETECTORS",
    "SCAN_BUDGETS",
    "estimate_scan_seconds",
    "scan_config_for_budget",
]

DEFAULT_DETECTORS = ("neural-cleanse", "warp", "prediction-share", "signal")
"""The detectors every preset runs unless the caller names others: Neural Cleanse (patch and
blend triggers), the warp inversion (WaNet-class triggers, which Neural Cleanse misses), the
prediction share (clean-label targets the model never predicts without the trigger, e.g. SIG;
one forward pass over the clean images) and the smooth-signal inversion (whole-image additive
triggers such as stripes, which the others miss; since stop 50). ``signal`` comes last, so a
label Neural Cleanse or the warp inversion also flags keeps their trigger."""

SCAN_BUDGETS: dict[str, dict[str, Any]] = {
    "quick": {
        "detectors": list(DEFAULT_DETECTORS),
        "max_images": 200,
        "max_holdout_images": 200,
        "detector_options": {"neural-cleanse": {"epochs": 15, "batch_size": 32}},
    },
    "standard": {
        "detectors": list(DEFAULT_DETECTORS),
        "max_images": 300,
        "max_holdout_images": 500,
        "detector_options": {"neural-cleanse": {"epochs": 30, "batch_size": 32}},
    },
    # the published Neural Cleanse settings (1,000 images, 80 epochs) plus the warp inversion
    "thorough": {"detectors": list(DEFAULT_DETECTORS)},
}
"""ScanConfig overrides per preset (``thorough`` = the ``ScanConfig`` defaults and the
:data:`DEFAULT_DETECTORS`). A ``ScanConfig()`` built directly runs Neural Cleanse only."""


def scan_config_for_budget(
    budget: str | float, base: ScanConfig | dict[str, Any] | None = None
) -> ScanConfig:
    """``base`` with the preset's settings; a number (or numeric string) of seconds gives the
    ``standard`` preset with ``max_seconds``. Keys already set in ``base`` win over the preset.
    """
    seconds: float | None = None
    name: str
    if isinstance(budget, (int, float)) and not isinstance(budget, bool):
        seconds, name = float(budget), "standard"
    else:
        text = str(budget).strip().lower()
        try:
            seconds, name = float(text.rstrip("s")), "standard"
        except ValueError:
            name = text
    if name not in SCAN_BUDGETS:
        raise ConfigError(
            f"unknown scan budget {budget!r}.",
            hint=f"use one of {sorted(SCAN_BUDGETS)} or a number of seconds, e.g. 120",
        )
    if seconds is not None and (not math.isfinite(seconds) or seconds <= 0):
        raise ConfigError(f"a scan budget in seconds must be > 0, got {budget!r}.")
    preset = SCAN_BUDGETS[name]
    given = parse_config(ScanConfig, base).model_dump(exclude_unset=True)
    merged: dict[str, Any] = {**preset, **given}
    detectors = merged.get("detectors", ScanConfig().detectors)
    preset_opts: dict[str, dict[str, Any]] = preset.get("detector_options", {})
    given_opts: dict[str, dict[str, Any]] = given.get("detector_options", {})
    opts: dict[str, dict[str, Any]] = {}
    for name in detectors:  # per detector: the preset's options, then the caller's on top
        both = {**preset_opts.get(name, {}), **given_opts.get(name, {})}
        if both:
            opts[name] = both
    opts |= {k: v for k, v in given_opts.items() if k not in opts}  # the Scanner reports these
    merged["detector_options"] = opts
    if seconds is not None and "max_seconds" not in given:
        merged["max_seconds"] = seconds
    return ScanConfig(**merged)


def estimate_scan_seconds(
    model: nn.Module,
    config: ScanConfig,
    *,
    num_classes: int,
    input_shape: tuple[int, int, int],
    clean_images: int | None,
    device: torch.device | str = "cpu",
    per_image_seconds: float | None = None,
) -> float:
    """Upper estimate of a scan's wall time, from one timed forward/backward pass.

    Neural Cleanse's and PixelBackdoor's cost is ``epochs × steps × labels`` passes of
    ``batch_size`` images (early stopping usually ends labels sooner, so the real time is
    often lower); the cost of one image is measured on ``model`` here. MM-BD adds
    ``steps × starts × labels`` images.
    ``config.max_seconds`` caps the result. ``per_image_seconds`` skips the timing (e.g. to
    compare presets on one measurement).
    """
    per_image = (
        per_image_seconds
        if per_image_seconds is not None
        else _per_image_seconds(model, input_shape, device)
    )
    return _estimate(config, per_image, num_classes=num_classes, clean_images=clean_images)


def _per_image_seconds(
    model: nn.Module, input_shape: tuple[int, int, int], device: torch.device | str
) -> float:
    """Seconds of one forward/backward pass per image (the minimum of 5 timed passes)."""
    dev = torch.device(device)
    probe_n = 32
    x = torch.rand(probe_n, *input_shape, device=dev, requires_grad=True)
    was_training = model.training
    model.eval()
    try:
        per_image = math.inf
        for _ in range(5):  # the minimum of 5: the first warms up; load from others inflates some
            t0 = time.perf_counter()
            out = model(x)
            loss = F.cross_entropy(out, torch.zeros(probe_n, dtype=torch.long, device=dev))
            loss.backward()  # type: ignore[no-untyped-call]
            per_image = min(per_image, (time.perf_counter() - t0) / probe_n)
            x.grad = None
            model.zero_grad(set_to_none=True)
    finally:
        model.train(was_training)
    return per_image


def _estimate(
    config: ScanConfig, per_image: float, *, num_classes: int, clean_images: int | None
) -> float:
    labels = len(config.labels) if config.labels is not None else num_classes
    total = 0.0
    n_inv = clean_images if clean_images is not None else 0  # the inversion images
    if config.max_images is not None:
        n_inv = min(n_inv, config.max_images)
    n_inv = max(1, round(n_inv * (1 - config.holdout_fraction)))
    if "neural-cleanse" in config.detectors:
        nc = parse_config(NeuralCleanseConfig, config.detector_options.get("neural-cleanse"))
        bs = min(nc.batch_size, n_inv)
        total += nc.epochs * math.ceil(n_inv / bs) * labels * bs * per_image
    if "pixel" in config.detectors:
        from .pixel import PixelConfig

        px = parse_config(PixelConfig, config.detector_options.get("pixel"))
        n = n_inv if px.max_images is None else min(n_inv, px.max_images)
        bs = min(px.batch_size, n)
        total += px.epochs * max(1, n // bs) * labels * bs * per_image
    if "warp" in config.detectors:
        from .warp import WarpConfig

        wp = parse_config(WarpConfig, config.detector_options.get("warp"))
        n = n_inv if wp.max_images is None else min(n_inv, wp.max_images)
        bs = min(wp.batch_size, n)
        total += wp.epochs * max(1, n // bs) * labels * wp.restarts * bs * per_image
    if "signal" in config.detectors:
        from .smooth import SmoothSignalConfig

        sg = parse_config(SmoothSignalConfig, config.detector_options.get("signal"))
        n = n_inv if sg.max_images is None else min(n_inv, sg.max_images)
        bs = min(sg.batch_size, n)
        total += sg.epochs * max(1, n // bs) * labels * bs * per_image
    if "prediction-share" in config.detectors:
        total += n_inv * per_image  # one forward pass (the timed pass includes a backward)
    if "mm-bd" in config.detectors:
        from .mm_bd import MaxMarginConfig

        mm = parse_config(MaxMarginConfig, config.detector_options.get("mm-bd"))
        total += mm.steps * mm.starts * labels * per_image
    if config.max_seconds is not None:
        total = min(total, config.max_seconds)
    return total
