"""Temporarily switch a model to eval mode or freeze its parameters, restoring the exact
per-submodule / per-parameter flags afterwards."""

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


@contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[nn.Module]:
    """``requires_grad=False`` on every parameter inside the block; each one's flag restored
    after (optimise inputs or masks through a fixed model)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
