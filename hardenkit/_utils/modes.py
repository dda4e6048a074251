"""Temporarily switch a model to eval mode, restoring every submodule's own flag afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model.eval()`` inside the block; each submodule's ``training`` flag restored after.

    ``model.train(flag)`` would overwrite per-submodule flags (e.g. a frozen BatchNorm inside
    a model in training mode); this restores them exactly.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag
