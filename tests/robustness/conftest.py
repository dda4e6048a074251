"""Shared fixtures of the robustness probes: one tiny backdoored model, trained once."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import nn

from hardenkit.testing import BackdoorFixture, tiny_backdoored_model


@pytest.fixture(scope="session")
def tiny_fx() -> BackdoorFixture:
    """4-class synthetic BadNets model (small-cnn), 400 train / 100 test images."""
    return tiny_backdoored_model(epochs=4)


def model_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[bool], list[bool]]:
    """Everything a call must leave unchanged: tensors, train flags, requires_grad flags."""
    return (
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
    )


def assert_unchanged(
    model: nn.Module, before: tuple[dict[str, torch.Tensor], list[bool], list[bool]]
) -> None:
    state, training, grads = before
    now = model.state_dict()
    assert set(now) == set(state)
    assert all(torch.equal(now[k], v) for k, v in state.items()), "weights changed"
    assert [m.training for m in model.modules()] == training, ".training flags changed"
    assert [p.requires_grad for p in model.parameters()] == grads, "requires_grad changed"


@contextmanager
def unchanged(model: nn.Module) -> Iterator[None]:
    """Assert the block leaves ``model`` exactly as it found it (also when it raises)."""
    before = model_state(model)
    try:
        yield
    finally:
        assert_unchanged(model, before)
