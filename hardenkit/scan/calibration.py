"""How often *clean* models score as high as this one: the scanner's clean-model reference.

Every MAD-based detector (``neural-cleanse``, ``pixel``, ``warp``) reports an anomaly index
on the same scale (a robust z-score of log trigger sizes, floored by ``max_median_ratio``),
and ``combine="any"`` decides on the largest of them against one threshold (2); the
``prediction-share`` detector decides on ``-log10`` of its corrected p-value against the same
2 (``alpha`` 0.01). That threshold was checked against a population of clean models that no
threshold was tuned on: ``clean_reference.json`` (next to this module) holds each clean
model's evidence per detector,
written by ``python -m benchmarks.scanner_zoo --from-json ... --write-reference`` from the
committed zoo of CIFAR-10 models (``benchmarks/fixtures/scanner_zoo``). Each scan's report
then says, per detector and for the combination, how many of those clean models reached its
index — an empirical false-positive rate for this model's evidence, measured rather than
assumed.

The reference is CIFAR-10-sized (10 classes, 32×32, short-trained models of three
architectures, ``quick`` budget): for other data it is indicative, not a guarantee.

Example:
    >>> from hardenkit.scan.calibration import load_reference
    >>> ref = load_reference()
    >>> ref is None or ref.compare({"neural-cleanse": 0.0})["clean_at_or_above"] == ref.size
    True
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["REFERENCE_PATH", "CleanReference", "load_reference"]

REFERENCE_PATH = Path(__file__).with_name("clean_reference.json")


@dataclass(frozen=True)
class CleanReference:
    """Per clean reference model, each detector's evidence (anomaly index; ``-log10 p`` for
    the prediction share).

    Attributes:
        source: where the numbers come from (benchmark and command).
        description: the models (dataset, architectures, budget).
        threshold: the anomaly-index threshold the detectors decide with.
        num_classes: the reference models' number of classes (scans of models with another
            number of candidate labels are not compared: the largest index grows with it).
        models: ``[{"id": ..., "indices": {detector: index}}]``.
    """

    source: str
    description: str
    threshold: float
    num_classes: int
    models: tuple[dict[str, Any], ...]

    @property
    def size(self) -> int:
        return len(self.models)

    @property
    def detectors(self) -> frozenset[str]:
        """The detectors any reference model has evidence for."""
        return frozenset(d for m in self.models for d in m["indices"])

    def compare(self, indices: dict[str, float]) -> dict[str, Any] | None:
        """Where a scan's per-detector evidence (``indices``) falls among the clean models.

        Only reference models that have every detector in ``indices`` count; their combined
        index is the largest of those detectors' (``combine="any"``). Returns ``None`` when
        no reference model has them all.
        """
        dets = sorted(indices)
        usable = [m for m in self.models if all(d in m["indices"] for d in dets)]
        if not usable or not dets:
            return None
        combined = max(float(indices[d]) for d in dets)
        clean = [max(float(m["indices"][d]) for d in dets) for m in usable]
        at = sum(v >= combined for v in clean)
        flagged = sum(v >= self.threshold for v in clean)
        return {
            "detectors": dets,
            "combined_index": combined,
            "clean_models": len(usable),
            "clean_at_or_above": at,
            "p_clean": (at + 1) / (len(usable) + 1),
            "clean_max_index": max(clean),
            "clean_flagged_at_threshold": flagged,
            "threshold": self.threshold,
            "reference": self.source,
        }


@lru_cache(maxsize=1)
def load_reference(path: str | None = None) -> CleanReference | None:
    """The packaged clean reference (``None`` when the file is missing or unreadable)."""
    p = Path(path) if path is not None else REFERENCE_PATH
    try:
        raw = json.loads(p.read_text())
        return CleanReference(
            source=str(raw["source"]),
            description=str(raw["description"]),
            threshold=float(raw["threshold"]),
            num_classes=int(raw["num_classes"]),
            models=tuple(raw["models"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
