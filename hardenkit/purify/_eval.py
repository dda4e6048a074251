"""Small in-memory evaluation helpers shared by the Purifier and its strategies."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._utils.modes import eval_mode
from ..triggers import Trigger


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 512) -> Tensor:
    """Predicted labels of ``x`` in eval mode (each submodule's mode restored after)."""
    with eval_mode(model):
        return torch.cat(
            [model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)]
        )


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` (NaN when empty)."""
    if len(x) == 0:
        return float("nan")
    return float((predict(model, x) == y).float().mean())


def trigger_asr(model: nn.Module, trigger: Trigger, x: Tensor, y: Tensor, label: int) -> float:
    """Share of the non-``label`` images that ``trigger`` sends to ``label``."""
    keep = y != label
    if int(keep.sum()) == 0:
        return 0.0
    return float((predict(model, trigger.apply(x[keep])) == label).float().mean())
