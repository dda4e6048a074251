"""Give a repaired model back the input model's class frequencies on clean images.

A trigger-based repair pushes the features of triggered images away from the target label's;
on models we did not build it also shrinks the target label on *clean* images (a CIFAR-10
user model's MCL repair: its target class 64.6 → 42.0 % at −0.9 BA points). Refitting the
output layer's bias alone — so the repaired model's predicted probabilities on the clean
training images match the input model's (minimum KL divergence, a convex problem in K
numbers) — restores the class prior. A bias is the same for every input, so it cannot learn
a trigger; but raising the target label's share lets a trigger the repair only weakened win
again (the demo model: real ASR 1.22 → 12.67 %), which an inverted trigger need not show —
so MCL's ``recalibrate_prior`` is opt-in, and checks the inverted trigger's ASR.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import RuntimeConfig
from ..data.store import ImageStore
from ..errors import ModelCompatibilityError
from ..models.features import find_last_linear
from ..training import evaluate_accuracy, predict, trigger_asr
from ..triggers import Trigger
from .base import PurifyContext

__all__ = ["BiasCalibration", "calibrate_output_bias", "recalibrate_prior", "undo_calibration"]


@dataclass
class BiasCalibration:
    """What :func:`calibrate_output_bias` did (``applied`` False: the model is unchanged and
    ``reason`` says why).

    Attributes:
        applied: whether the bias was changed.
        layer: the output layer's name.
        shift: the change added to each class's bias.
        kl_before: mean KL divergence from the reference's predicted probabilities to the
            model's on the images, before the change.
        kl_after: the same after it.
        reason: why nothing was changed.
    """

    applied: bool
    layer: str | None = None
    shift: list[float] = field(default_factory=list)
    kl_before: float | None = None
    kl_after: float | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _kl(ref_p: Tensor, ref_logp: Tensor, logits: Tensor) -> Tensor:
    return (ref_p * (ref_logp - F.log_softmax(logits, dim=1))).sum(1).mean()


def calibrate_output_bias(
    model: nn.Module,
    reference: nn.Module,
    images: Tensor | ImageStore,
    *,
    runtime: RuntimeConfig | dict[str, Any] | None = None,
    max_iter: int = 100,
) -> BiasCalibration:
    """Shift the bias of ``model``'s last ``nn.Linear`` (in place) so its predicted
    probabilities on ``images`` are as close as possible to ``reference``'s (mean KL).

    Nothing changes when the model has no last ``nn.Linear`` with a bias, or when adding to
    that bias does not add to the model's logits (a layer after it); ``reason`` says so.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> torch.manual_seed(0) and None
        >>> ref = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
        >>> shifted = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
        >>> _ = shifted.load_state_dict(ref.state_dict())
        >>> with torch.no_grad():
        ...     shifted[1].bias += torch.tensor([2.0, 0.0, -2.0])
        >>> cal = calibrate_output_bias(shifted, ref, torch.rand(64, 3, 2, 2))
        >>> cal.applied, cal.kl_after < 1e-4 < cal.kl_before
        (True, True)
        >>> [round(s - cal.shift[1], 2) for s in cal.shift]
        [-2.0, 0.0, 2.0]
    """
    try:
        name, lin = find_last_linear(model)
    except ModelCompatibilityError:
        return BiasCalibration(applied=False, reason="the model has no nn.Linear layer")
    bias: Tensor | None = getattr(lin, "bias", None)  # nn.Linear(bias=False): None
    if bias is None:
        return BiasCalibration(
            applied=False, layer=name, reason=f"its last nn.Linear ({name}) has no bias"
        )
    if len(images) == 0:
        return BiasCalibration(applied=False, layer=name, reason="no clean images")
    logits = predict(model, images, runtime=runtime, where="calibration")
    ref = predict(reference, images, runtime=runtime, where="calibration")
    k = logits.shape[1]
    if bias.numel() != k or ref.shape != logits.shape:
        return BiasCalibration(
            applied=False,
            layer=name,
            reason=f"its last nn.Linear ({name}) does not produce the {k} logits",
        )
    # adding v to the bias must add v to the logits (nothing after the layer)
    probe_v = torch.linspace(-1.0, 1.0, k)
    n_probe = min(8, len(images))
    kept = bias.detach().clone()
    with torch.no_grad():
        bias.add_(probe_v.to(bias.device, bias.dtype))
        try:
            moved = predict(model, images[:n_probe], runtime=runtime, where="calibration")
        finally:
            bias.copy_(kept)
    scale = 1e-3 * (1.0 + float(logits[:n_probe].abs().max()))
    if not torch.allclose(moved - logits[:n_probe], probe_v.expand(n_probe, k), atol=scale):
        return BiasCalibration(
            applied=False,
            layer=name,
            reason=f"the model's logits are not its last nn.Linear's ({name}) output",
        )
    ref_logp = F.log_softmax(ref, dim=1)
    ref_p = ref_logp.exp()
    delta = torch.zeros(k, requires_grad=True)
    opt = torch.optim.LBFGS([delta], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = _kl(ref_p, ref_logp, logits + delta)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    with torch.enable_grad():
        opt.step(closure)  # type: ignore[no-untyped-call]
    shift = (delta.detach() - delta.detach().mean()).float()
    with torch.no_grad():
        before = float(_kl(ref_p, ref_logp, logits))
        after = float(_kl(ref_p, ref_logp, logits + shift))
        if not after < before or not torch.isfinite(shift).all():
            return BiasCalibration(
                applied=False,
                layer=name,
                kl_before=before,
                reason="the model's predictions already match the input model's",
            )
        bias.add_(shift.to(bias.device, bias.dtype))
    return BiasCalibration(
        applied=True,
        layer=name,
        shift=[float(s) for s in shift],
        kl_before=before,
        kl_after=after,
    )


def undo_calibration(model: nn.Module, cal: BiasCalibration) -> None:
    """Take a calibration back (subtract its shift; equal to the weights before up to float
    rounding)."""
    if not cal.applied:
        return
    _, lin = find_last_linear(model)
    with torch.no_grad():
        lin.bias.sub_(torch.tensor(cal.shift, device=lin.bias.device, dtype=lin.bias.dtype))


def recalibrate_prior(
    ctx: PurifyContext,
    model: nn.Module,
    triggers: Sequence[tuple[int, Trigger]],
    *,
    max_asr: float,
) -> dict[str, Any]:
    """:func:`calibrate_output_bias` of a repaired ``model`` toward ``ctx.original`` on the
    training images, undone when it lifts an inverted trigger's validation ASR above
    ``max(max_asr, the ASR before)``; returns the record for the report's details."""
    rt = ctx.runtime
    has_val = len(ctx.y_val) > 0

    def val_asr() -> float | None:
        if not has_val or not triggers:
            return None
        return max(trigger_asr(model, t, ctx.val_images, ctx.y_val, lab, rt) for lab, t in triggers)

    def val_ba() -> float | None:
        return evaluate_accuracy(model, ctx.val_images, ctx.y_val, runtime=rt) if has_val else None

    asr_before, ba_before = val_asr(), val_ba()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    cal = calibrate_output_bias(model, ctx.original, ctx.images, runtime=rt)
    out = cal.as_dict()
    if not cal.applied:
        if cal.kl_before is None:  # a model it cannot calibrate, not one that needs nothing
            ctx.notes.append(f"class-prior recalibration skipped: {cal.reason}")
        return out
    asr_after, ba_after = val_asr(), val_ba()
    out.update(
        val_ba_before=ba_before,
        val_ba_after=ba_after,
        val_trigger_asr_before=asr_before,
        val_trigger_asr_after=asr_after,
    )
    if asr_before is not None and asr_after is not None and asr_after > max(max_asr, asr_before):
        model.load_state_dict(before)  # exactly the repair's weights
        out["applied"] = False
        out["reason"] = (
            f"it raised the inverted trigger's validation ASR from {100 * asr_before:.1f}% to "
            f"{100 * asr_after:.1f}% (over {100 * max_asr:.0f}%): undone"
        )
        ctx.notes.append(f"class-prior recalibration {out['reason']}")
    return out
