"""Detector plug-in interface: one detector = one class + one pydantic config + a registry entry."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from .._utils.progress import ProgressCallback
from ..config import HardenkitConfig, parse_config
from ..registry import Registry
from ..triggers import Trigger

__all__ = [
    "DETECTORS",
    "Detector",
    "DetectorConfig",
    "DetectorContext",
    "DetectorOutput",
    "images_per_pass",
]


class DetectorConfig(HardenkitConfig):
    """Fields shared by every detector's config.

    Attributes:
        score_slope: slope of the logistic map from the detector's evidence to its score
            (``score = sigmoid(slope * (evidence - decision threshold))``).
    """

    score_slope: Annotated[float, Field(gt=0)] = 2.0


@dataclass
class DetectorContext:
    """What a detector gets from the Scanner (the model is a frozen eval-mode copy)."""

    model: nn.Module
    num_classes: int
    image_shape: tuple[int, int, int]
    device: torch.device
    amp: bool
    seed: int
    x: Tensor | None
    """Clean inversion images (float [0, 1], on ``device``); ``None`` in data-free mode."""
    y: Tensor | None
    labels: list[int]
    """Candidate target labels to examine (all classes unless the user restricted them)."""
    progress: ProgressCallback
    deadline: float | None = None
    """``time.perf_counter()`` value after which a detector stops optimising (the scan's
    ``max_seconds``); it then sets ``info["budget_exhausted"] = True`` in its output."""

    def out_of_time(self) -> bool:
        """True once the scan's wall-time budget is used up."""
        return self.deadline is not None and time.perf_counter() > self.deadline


@dataclass
class DetectorOutput:
    """The per-label evidence of one detector plus its model-level decision inputs."""

    detector: str
    statistic: str
    """Name of the per-label statistic (``mask_l1``, ``max_margin``)."""
    suspicious_side: Literal["low", "high"]
    values: dict[int, float]
    """Per candidate label: the statistic."""
    anomaly_per_label: dict[int, float]
    anomaly_index: float
    evidence: float
    """The model-level evidence compared with ``threshold`` (e.g. the MAD anomaly index)."""
    threshold: float
    flagged: list[int]
    score: float
    seconds: float
    p_value: float | None = None
    triggers: dict[int, Trigger] = field(default_factory=dict)
    per_label: dict[int, dict[str, Any]] = field(default_factory=dict)
    """Extra per-label columns (e.g. ``reached_threshold``, ``epochs``)."""
    info: dict[str, Any] = field(default_factory=dict)


class Detector(ABC):
    """A model-level backdoor detector.

    Subclasses set ``name``, ``config_cls`` and ``needs_data`` (``False`` for data-free
    detectors) and implement :meth:`detect`. Register with ``DETECTORS.register(name, cls)``
    or through the ``hardenkit.detectors`` entry-point group.
    """

    name: ClassVar[str]
    config_cls: ClassVar[type[DetectorConfig]] = DetectorConfig
    needs_data: ClassVar[bool] = True

    def __init__(self, config: DetectorConfig | dict[str, Any] | None = None) -> None:
        self.config = parse_config(self.config_cls, config)

    @abstractmethod
    def detect(self, ctx: DetectorContext) -> DetectorOutput:
        """Examine ``ctx.model`` and return the evidence (never modifies the model)."""


def images_per_pass(setting: int | Literal["auto"], device: torch.device) -> int:
    """A detector's ``max_images_per_step``: ``"auto"`` is 4,096 on CUDA and 128 on CPU, where
    convolution throughput falls for larger batches (benchmarks/results/scanner_cpu_*.md).

    >>> images_per_pass("auto", torch.device("cpu")), images_per_pass(64, torch.device("cpu"))
    (128, 64)
    """
    if setting == "auto":
        return 4096 if device.type == "cuda" else 128
    return int(setting)


DETECTORS: Registry[type[Detector]] = Registry("detector", entry_point_group="hardenkit.detectors")
