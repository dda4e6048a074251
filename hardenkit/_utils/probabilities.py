"""Models that return probabilities (a final softmax) instead of logits.

A user's ``nn.Sequential`` often ends in ``nn.Softmax``. Every detector of the Scanner
optimises a cross-entropy or a logit margin; fed probabilities as if they were logits, the
loss saturates (the gap between two "logits" is at most 1) and trigger inversion loses its
signal — on four backdoored CIFAR-10 zoo models the target's Neural Cleanse anomaly index fell
from 3.16–3.40 to 2.25–2.62 (``python -m benchmarks.softmax_probe``). ``log(p)`` is the logits
up to a per-image constant, so cross-entropy, argmax and logit margins on it are exactly those
of the model without its softmax.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from hardenkit._utils.probabilities import (
    ...     log_probabilities_hook, remove_log_probabilities_hook, returns_probabilities)
    >>> net = nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1))
    >>> returns_probabilities(net(torch.randn(5, 4)))
    True
    >>> returns_probabilities(net[0](torch.randn(5, 4)))
    False
    >>> x = torch.randn(5, 4)
    >>> _ = net.register_forward_hook(log_probabilities_hook)
    >>> bool(torch.allclose(net(x), net[0](x).log_softmax(1), atol=1e-5))
    True
    >>> remove_log_probabilities_hook(net)
    >>> returns_probabilities(net(x))
    True
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = [
    "log_probabilities",
    "log_probabilities_hook",
    "remove_log_probabilities_hook",
    "returns_probabilities",
]

_TINY = torch.finfo(torch.float32).tiny


def returns_probabilities(out: Tensor, *, atol: float = 1e-3) -> bool:
    """True when every row of the ``(N, K)`` output ``out`` is a probability vector
    (entries in [0, 1] summing to 1 within ``atol``): the model ends in a softmax."""
    if out.dim() != 2 or out.shape[0] == 0 or out.shape[1] < 2:
        return False
    o = out.detach().float()
    if not bool(torch.isfinite(o).all()):
        return False
    if float(o.min()) < -1e-6 or float(o.max()) > 1 + 1e-6:
        return False
    return bool(((o.sum(1) - 1).abs() <= atol).all())


def log_probabilities(p: Tensor) -> Tensor:
    """``log(p)`` in float32, probabilities that underflowed to 0 clamped to the smallest
    float32 first."""
    return torch.log(p.float().clamp_min(_TINY))


def log_probabilities_hook(module: nn.Module, args: object, output: Tensor) -> Tensor:
    """Forward hook: the module's probabilities become their logarithm. Registered on the top
    module of a working copy, it trains a softmax model through ``log(p)`` without renaming any
    of its layers (a wrapper would prefix every name); copies of the module keep it."""
    return log_probabilities(output)


def remove_log_probabilities_hook(model: nn.Module) -> None:
    """Remove :func:`log_probabilities_hook` from ``model`` (the other hooks stay)."""
    hooks = model._forward_hooks
    for key in [k for k, h in hooks.items() if h is log_probabilities_hook]:
        del hooks[key]
