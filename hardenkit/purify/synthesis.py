"""Data-free class images synthesised from a model itself (BatchNorm-statistics inversion).

DeepInversion-style: start from noise and optimise pixel images so that the model assigns
them to a chosen class while the batch statistics at every BatchNorm layer match that
layer's running mean and variance (the training data's statistics stored in the model),
with a total-variation and an L2 image prior and random jitter/flips. Pixels are
parametrised through a sigmoid, so images stay in [0, 1] — the space every hardenkit
model takes. Models without BatchNorm get only the class, TV and L2 terms (recorded).

Example:
    >>> import torch
    >>> from hardenkit.models import SmallCNN
    >>> from hardenkit.purify.synthesis import SynthesisConfig, synthesize_class_images
    >>> net = SmallCNN(num_classes=3, width=4).eval()
    >>> x, y, info = synthesize_class_images(
    ...     net, 3, (3, 16, 16), SynthesisConfig(images_per_class=2, steps=5))
    >>> x.shape, y.tolist(), 0.0 <= float(x.min()) <= float(x.max()) <= 1.0
    (torch.Size([6, 3, 16, 16]), [0, 0, 1, 1, 2, 2], True)
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .._utils.modes import eval_mode, frozen_parameters
from .._utils.progress import NullProgress, ProgressCallback
from ..config import HardenkitConfig

__all__ = ["SynthesisConfig", "synthesize_class_images"]

_BN = nn.modules.batchnorm._BatchNorm


class SynthesisConfig(HardenkitConfig):
    """BatchNorm-statistics inversion settings (DeepInversion-style; not from ShapPruning).

    Attributes:
        images_per_class: images synthesised per class.
        steps: Adam steps on the whole synthetic batch.
        lr: Adam learning rate on the pre-sigmoid pixel logits.
        bn_weight: weight of the BatchNorm statistics loss (sum over layers of
            ``‖μ − running_mean‖₂ + ‖σ² − running_var‖₂``).
        tv_weight: weight of the total-variation prior (mean absolute difference of
            neighbouring pixels).
        l2_weight: weight of the L2 prior (mean squared distance of pixels from 0.5).
        jitter: random shift of up to this many pixels each step (0 = off).
        flip: random horizontal flips each step.
    """

    images_per_class: Annotated[int, Field(ge=1)] = 4
    steps: Annotated[int, Field(ge=1)] = 400
    lr: Annotated[float, Field(gt=0)] = 0.1
    bn_weight: Annotated[float, Field(ge=0)] = 1.0
    tv_weight: Annotated[float, Field(ge=0)] = 0.5
    l2_weight: Annotated[float, Field(ge=0)] = 0.01
    jitter: Annotated[int, Field(ge=0)] = 2
    flip: bool = True


class _BNStat:
    def __init__(self) -> None:
        self.loss: list[Tensor] = []

    def __call__(self, module: nn.Module, args: tuple[object, ...], out: object) -> None:
        x = args[0]
        assert isinstance(x, Tensor)
        assert isinstance(module, _BN)
        dims = [0, *range(2, x.dim())]
        mean = x.mean(dim=dims)
        var = x.var(dim=dims, unbiased=False)
        rm, rv = module.running_mean, module.running_var
        assert isinstance(rm, Tensor)
        assert isinstance(rv, Tensor)
        self.loss.append(torch.norm(mean - rm, 2) + torch.norm(var - rv, 2))


def _tv(x: Tensor) -> Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (
        x[..., :, 1:] - x[..., :, :-1]
    ).abs().mean()


def synthesize_class_images(
    model: nn.Module,
    num_classes: int,
    input_shape: tuple[int, int, int],
    config: SynthesisConfig | None = None,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: ProgressCallback | None = None,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Synthesise ``images_per_class`` images per class from ``model`` (kept in eval mode).

    Returns ``(x, y, info)``: [0, 1] pixel images, their intended labels, and ``info`` with
    the number of BatchNorm layers matched, the final losses and the share of images the
    model classifies as intended (``class_accuracy``). The model's weights, buffers and
    mode are restored.
    """
    cfg = config or SynthesisConfig()
    prog = progress or NullProgress()
    with eval_mode(model), frozen_parameters(model):
        return _synthesize(model, num_classes, input_shape, cfg, seed, device, prog)


def _synthesize(
    model: nn.Module,
    num_classes: int,
    input_shape: tuple[int, int, int],
    cfg: SynthesisConfig,
    seed: int,
    device: torch.device | str,
    prog: ProgressCallback,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(num_classes).repeat_interleave(cfg.images_per_class).to(device)
    z = (torch.randn(len(y), *input_shape, generator=g) * 0.5).to(device).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=cfg.lr)
    stat = _BNStat()
    handles: list[RemovableHandle] = []
    bns = [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]
    if cfg.bn_weight > 0:
        handles = [m.register_forward_hook(stat) for m in bns]
    ce = bn = torch.zeros(())
    try:
        for step in range(cfg.steps):
            x = torch.sigmoid(z)
            xa = x
            if cfg.jitter:
                dx, dy = (
                    int(v) for v in torch.randint(-cfg.jitter, cfg.jitter + 1, (2,), generator=g)
                )
                xa = torch.roll(xa, shifts=(dy, dx), dims=(2, 3))
            if cfg.flip and bool(torch.rand((), generator=g) < 0.5):
                xa = xa.flip(3)
            stat.loss.clear()
            logits = model(xa)
            ce = F.cross_entropy(logits, y)
            bn = torch.stack(stat.loss).sum() if stat.loss else torch.zeros((), device=x.device)
            loss = (
                ce
                + cfg.bn_weight * bn
                + cfg.tv_weight * _tv(x)
                + cfg.l2_weight * ((x - 0.5) ** 2).mean()
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            if (step + 1) % 50 == 0 or step + 1 == cfg.steps:
                prog("synthesize", step + 1, cfg.steps, loss=float(loss.detach()))
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        x = torch.sigmoid(z.detach())
        pred = model(x).argmax(1)
    info: dict[str, Any] = {
        "images": len(y),
        "batchnorm_layers_matched": len(bns) if cfg.bn_weight > 0 else 0,
        "final_ce": float(ce.detach()),
        "final_bn_loss": float(bn.detach()),
        "class_accuracy": float((pred == y).float().mean()),
    }
    return x, y, info
