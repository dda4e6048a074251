"""Prediction share: labels the model (almost) never predicts on clean images.

A clean-label backdoor whose poison covers the target class's training images — SIG
(Barni et al., ICIP 2019) at BackdoorBench's 10 % poison rate on CIFAR-10 is every image of
the target class — teaches the model that the *trigger* is what the target class looks like.
Without the trigger the model then predicts the target for almost no clean image, not even
the target class's own (measured on the scanner zoo: 0 of 10,000 CIFAR-10 test images for
each of the three SIG models, whose real trigger reaches 97-100 % ASR). No trigger inversion
sees this — the sinusoid is neither a small patch nor a sparse additive signal, and each SIG
target's Neural Cleanse / PixelBackdoor trigger is as large as the other labels' — but the
model's predictions on the scan's clean images show it directly.

For every candidate label ``y`` with ``n_y`` of the ``n`` clean images (the inversion images
and the held-out ones: nothing is optimised on them), the model predicts
``y`` for ``k_y`` images. The null hypothesis is that a working model predicts each label for
at least ``null_share`` of its prior (``k_y ~ Binomial(n, null_share · n_y / n)``); the
label's p-value is the binomial lower tail ``P(K <= k_y)``, Bonferroni-corrected over the
candidate labels. A label is flagged when its corrected p-value is below ``alpha``; the
model-level p-value is the smallest. The statistic reported per label is the share
``k_y / n_y`` (1 = predicted as often as it occurs).

A flag means the model does not recognise a class without something added to the image:
the signature of a clean-label backdoor, or of a class the model never learned — either way
the model should not ship. It recovers no trigger (a repair falls back to a trigger-free
strategy), needs labelled clean images, and costs one forward pass over them. It does *not*
see a clean-label attack that poisons only part of the target class while the rest still
teaches the class's natural features (see docs/scanning.md).

This is hardenkit's own detector, not a published method's reproduction.
"""

from __future__ import annotations

import math
import time
from typing import Annotated

import torch
from pydantic import Field

from .._utils.finite import ensure_finite_logits
from ..logging import get_logger
from .anomaly import binomial_cdf, logistic_score
from .base import DETECTORS, Detector, DetectorConfig, DetectorContext, DetectorOutput, Inversion

__all__ = ["PredictionShareConfig", "PredictionShareDetector"]

_log = get_logger("scan.share")


class PredictionShareConfig(DetectorConfig):
    """Prediction-share settings.

    Attributes:
        null_share: the smallest share of its prior a label of a working model is predicted
            for (the null hypothesis). The weakest clean scanner-zoo models (BA 45 %) predict
            their least-predicted label for 45-84 % of its prior.
        alpha: a label is flagged when its Bonferroni-corrected p-value is below this. At the
            defaults a label needs about 20 clean images per class: with 10 labels and 200
            images, a label predicted for none of its 20 gets p = 0.003; with 100 images the
            smallest possible p-value is 0.17 and the test cannot flag anything
            (``info["smallest_possible_p"]``, ``info["underpowered"]``).
        batch_size: images per forward pass.
    """

    null_share: Annotated[float, Field(gt=0, lt=1)] = 0.4
    alpha: Annotated[float, Field(gt=0, lt=1)] = 0.01
    batch_size: Annotated[int, Field(ge=1)] = 256


class PredictionShareDetector(Detector):
    """Labels the model predicts far less often than they occur in the clean images.

    Example:
        >>> import torch
        >>> from hardenkit.scan import DetectorContext, PredictionShareDetector
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> with torch.no_grad():  # never predicts label 2
        ...     _ = model[1].weight.copy_(torch.tensor([[1., 0, 0, 0], [0, 1, 0, 0], [0] * 4]))
        ...     _ = model[1].bias.copy_(torch.tensor([0., 0, -10]))
        >>> x = torch.rand(90, 1, 2, 2); y = torch.arange(3).repeat(30)
        >>> ctx = DetectorContext(model=model, num_classes=3, image_shape=(1, 2, 2),
        ...     device=torch.device("cpu"), amp=False, seed=0, x=x, y=y, labels=[0, 1, 2],
        ...     progress=lambda *a, **k: None)
        >>> out = PredictionShareDetector().detect(ctx)
        >>> out.flagged, out.values[2]
        ([2], 0.0)
    """

    name = "prediction-share"
    config_cls = PredictionShareConfig
    needs_data = True
    shardable = True
    config: PredictionShareConfig

    def invert(self, ctx: DetectorContext) -> Inversion:
        if ctx.x is None or ctx.y is None:  # the Scanner checks this first
            raise ValueError("prediction-share needs labelled clean images")
        t0 = time.perf_counter()
        bs = self.config.batch_size
        preds, ys = [], []
        parts = [(ctx.x, ctx.y)]
        if ctx.x_holdout is not None and ctx.y_holdout is not None:
            parts.append((ctx.x_holdout, ctx.y_holdout))
        with torch.no_grad():
            for xs, y_part in parts:
                for i in range(0, len(xs), bs):
                    with torch.autocast(
                        device_type=ctx.device.type, dtype=torch.bfloat16, enabled=ctx.amp
                    ):
                        logits = ctx.model(xs[i : i + bs])
                    ensure_finite_logits(logits, where="scan: prediction-share")
                    preds.append(logits.float().argmax(1).cpu())
                ys.append(y_part.cpu())
        pred, y = torch.cat(preds), torch.cat(ys)
        n = len(y)
        labels = list(ctx.labels)
        values: dict[int, float] = {}
        per_label: dict[int, dict[str, float | int | None]] = {}
        for lab in labels:
            occurs = int((y == lab).sum())
            predicted = int((pred == lab).sum())
            recall = int(((pred == lab) & (y == lab)).sum())
            # a label without clean images cannot be tested: share 1 (neutral), p-value 1
            values[lab] = predicted / occurs if occurs else 1.0
            per_label[lab] = {
                "images": occurs,
                "predicted": predicted,
                "recall": recall / occurs if occurs else None,
            }
        ctx.progress("scan[prediction-share]", 1, 1)
        return Inversion(
            detector=self.name,
            statistic="prediction_share",
            suspicious_side="low",
            labels=labels,
            values=values,
            seconds=time.perf_counter() - t0,
            per_label=per_label,
            info={"images": n, "budget_exhausted": False},
        )

    def decide(self, inversion: Inversion) -> DetectorOutput:
        cfg = self.config
        t0 = time.perf_counter()
        labels = list(inversion.labels)
        n = int(inversion.info.get("images", 0))
        n_labels = len(labels)
        corrected: dict[int, float] = {}
        floor = 1.0  # the smallest corrected p-value any label could reach (none predicted)
        for lab in labels:
            row = inversion.per_label[lab]
            occurs, predicted = int(row["images"] or 0), int(row["predicted"] or 0)
            if not occurs or not n:
                corrected[lab] = 1.0
                continue
            q = cfg.null_share * occurs / n
            corrected[lab] = min(1.0, binomial_cdf(predicted, n, q) * n_labels)
            floor = min(floor, binomial_cdf(0, n, q) * n_labels)
        p_model = min(corrected.values(), default=1.0)
        flagged = sorted(
            (lab for lab in labels if corrected[lab] < cfg.alpha), key=lambda lab: corrected[lab]
        )
        evidence = max(0.0, -math.log10(max(p_model, 1e-300)))  # max: no "-0.0" at p = 1
        threshold = -math.log10(cfg.alpha)
        per_index = {lab: max(0.0, -math.log10(max(corrected[lab], 1e-300))) for lab in labels}
        per_label = {lab: {**inversion.per_label[lab], "p_value": corrected[lab]} for lab in labels}
        finding = None
        if flagged:
            parts = [
                f"label {lab} is predicted for {per_label[lab]['predicted']} clean images, though "
                f"{per_label[lab]['images']} of them belong to it"
                for lab in flagged
            ]
            finding = (
                "; ".join(parts) + ": the model does not recognise the class without something "
                "added to the image — a clean-label backdoor target (SIG-style) or a class it "
                "never learned; no trigger is recovered, so a repair runs trigger-free"
            )
        _log.debug("scan.detector_done", detector=self.name, p_value=p_model, flagged=flagged)
        info = dict(inversion.info)
        return DetectorOutput(
            detector=self.name,
            statistic=inversion.statistic,
            suspicious_side="low",
            values={lab: inversion.values[lab] for lab in labels},
            anomaly_per_label=per_index,
            anomaly_index=max(per_index.values(), default=0.0),
            evidence=evidence,
            threshold=threshold,
            flagged=flagged,
            score=logistic_score(evidence, threshold, cfg.score_slope),
            seconds=inversion.seconds + time.perf_counter() - t0,
            p_value=p_model,
            per_label=per_label,
            info={
                "null_share": cfg.null_share,
                "alpha": cfg.alpha,
                "images": n,
                "smallest_possible_p": floor,
                "underpowered": floor >= cfg.alpha,
                "finding": finding,
                "budget_exhausted": bool(info.get("budget_exhausted", False)),
            },
        )


DETECTORS.register(PredictionShareDetector.name, PredictionShareDetector)
