"""Model factories for tests/unit/test_fleet.py (imported by ``module:function`` specs)."""

from __future__ import annotations

import multiprocessing
import os

from torch import nn


def tiny_net(num_classes: int = 4) -> nn.Module:
    """A 3x16x16 -> logits network small enough to scan in about a second."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, num_classes),
    )


def crashing_net(num_classes: int = 4) -> nn.Module:
    """``tiny_net``, except that in a worker process it kills the process (as a segfault or the
    OS's out-of-memory killer would); in the main process it builds normally."""
    if multiprocessing.parent_process() is not None:
        os._exit(13)
    return tiny_net(num_classes)
