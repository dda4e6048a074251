"""Tensor augmentations and the FixMatch objective used by semi-supervised fine-tuning.

Everything works on float pixel batches in [0, 1] (NCHW) on the batch's device, vectorised,
from a seeded generator; no torchvision. *Weak* = random crop (pad 4) + horizontal flip
(:func:`hardenkit.training.augment_batch`); *strong* = weak + colour jitter (brightness,
contrast, saturation) + Gaussian noise + cutout.

Example:
    >>> import torch
    >>> from hardenkit.robust.semi import strong_augment
    >>> g = torch.Generator().manual_seed(0)
    >>> out = strong_augment(torch.rand(4, 3, 8, 8), g)
    >>> out.shape, bool(out.min() >= 0), bool(out.max() <= 1)
    (torch.Size([4, 3, 8, 8]), True, True)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..training import augment_batch

__all__ = ["cutout", "fixmatch_loss", "strong_augment", "weak_augment"]


def weak_augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """Random crop (pad 4) + horizontal flip."""
    return augment_batch(x, generator)


def cutout(x: Tensor, generator: torch.Generator, size: int | None = None) -> Tensor:
    """Set one random ``size``×``size`` square per image (default: half the side) to grey."""
    n, _, h, w = x.shape
    s = size if size is not None else max(1, min(h, w) // 2)
    dev = x.device
    cy = torch.randint(0, h, (n,), generator=generator, device=dev)
    cx = torch.randint(0, w, (n,), generator=generator, device=dev)
    rows = torch.arange(h, device=dev)[None, :]
    cols = torch.arange(w, device=dev)[None, :]
    in_r = (rows >= (cy[:, None] - s // 2)) & (rows < (cy[:, None] - s // 2 + s))
    in_c = (cols >= (cx[:, None] - s // 2)) & (cols < (cx[:, None] - s // 2 + s))
    mask = (in_r[:, :, None] & in_c[:, None, :])[:, None, :, :]
    return torch.where(mask, torch.full_like(x, 0.5), x)


def strong_augment(x: Tensor, generator: torch.Generator, *, noise: float = 0.03) -> Tensor:
    """Weak augmentation + colour jitter + Gaussian noise + cutout, clamped to [0, 1]."""
    n = x.shape[0]
    dev = x.device
    x = weak_augment(x, generator)

    def factor(lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * torch.rand(n, 1, 1, 1, generator=generator, device=dev)

    x = x * factor(0.6, 1.4)  # brightness
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * factor(0.6, 1.4) + mean  # contrast
    if x.shape[1] == 3:
        grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)
        x = grey + (x - grey) * factor(0.4, 1.6)  # saturation
    if noise > 0:
        x = x + noise * torch.randn(x.shape, generator=generator, device=dev)
    return cutout(x.clamp(0.0, 1.0), generator)


def fixmatch_loss(
    model: nn.Module,
    x_labeled: Tensor,
    y_labeled: Tensor,
    x_weak: Tensor,
    x_strong: Tensor,
    *,
    threshold: float,
    unlabeled_weight: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """FixMatch (Sohn et al., 2020): CE on the labeled batch + ``unlabeled_weight`` × CE of the
    strong view against the weak view's confident pseudo-label (max prob >= ``threshold``).

    One forward pass over the concatenated batch (shared BatchNorm statistics). Returns
    ``(loss, supervised logits, mask rate)``.
    """
    nl, nu = len(x_labeled), len(x_weak)
    logits = model(torch.cat([x_labeled, x_weak, x_strong])).float()
    lg_l = logits[:nl]
    sup = F.cross_entropy(lg_l, y_labeled)
    if nu == 0:
        return sup, lg_l, torch.zeros((), device=logits.device)
    lg_w = logits[nl : nl + nu].detach()
    lg_s = logits[nl + nu :]
    probs = lg_w.softmax(1)
    conf, pseudo = probs.max(1)
    mask = (conf >= threshold).float()
    unsup = (F.cross_entropy(lg_s, pseudo, reduction="none") * mask).mean()
    return sup + unlabeled_weight * unsup, lg_l, mask.mean()
