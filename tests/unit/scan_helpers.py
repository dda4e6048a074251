"""Hand-built models and detector contexts shared by the inversion detectors' unit tests."""

from __future__ import annotations

import torch
from torch import nn

from hardenkit.scan.base import DetectorContext


class BrightnessClasses(nn.Module):
    """Classes 1..3 score 10 × the mean of channel c-1: reaching one from another class takes
    raising a whole channel. Class 0 scores the mean of those scores − 3 plus, with
    ``backdoor``, :meth:`backdoor_score` — the one feature a subclass plants."""

    def __init__(self, backdoor: bool = True) -> None:
        super().__init__()
        self.backdoor = backdoor

    def backdoor_score(self, x: torch.Tensor) -> torch.Tensor:
        """Class 0's extra score ``(N,)`` when the backdoor is on."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        means = x.mean(dim=(2, 3)) * 10  # (N, 3)
        s0 = means.mean(1, keepdim=True) - 3.0
        if self.backdoor:
            s0 = s0 + self.backdoor_score(x).unsqueeze(1)
        return torch.cat([s0, means], dim=1)


def detector_ctx(model: nn.Module, x: torch.Tensor, num_classes: int = 4) -> DetectorContext:
    """A CPU context over every label, the images ``x`` labelled by the model's predictions."""
    model = model.eval().requires_grad_(False)
    return DetectorContext(
        model=model,
        num_classes=num_classes,
        image_shape=tuple(x.shape[1:]),  # type: ignore[arg-type]
        device=torch.device("cpu"),
        amp=False,
        seed=0,
        x=x,
        y=model(x).argmax(1),
        labels=list(range(num_classes)),
        progress=lambda *a, **k: None,
    )
