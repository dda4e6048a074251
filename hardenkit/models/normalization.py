"""Input normalization that lives inside the model.

hardenkit's contract is that every model takes [0, 1] pixels. Networks trained on normalized
inputs are wrapped with :func:`with_normalization`, which prepends a :class:`Normalize` layer,
so every algorithm (and the exported ONNX graph) sees raw pixels. ``mean`` and ``std`` are
persistent buffers, so they travel in the state dict.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from hardenkit.models.normalization import with_normalization
    >>> wrapped = with_normalization(nn.Identity(), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    >>> wrapped(torch.ones(1, 3, 1, 1)).flatten().tolist()
    [1.0, 1.0, 1.0]
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from ..errors import ConfigError, ModelCompatibilityError

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "Normalize",
    "NormalizedModel",
    "validate_stats",
    "with_normalization",
]

CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
"""Per-channel mean of the CIFAR-10 training set (RGB, [0, 1] pixels)."""

CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
"""Per-channel standard deviation of the CIFAR-10 training set (RGB, [0, 1] pixels)."""


def _as_floats(name: str, values: Sequence[float]) -> list[float]:
    # tuples, lists, 1-D tensors and numpy arrays are fine; strings and scalars are not
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise ConfigError(
            f"{name} must be a sequence of floats (one per channel), got {values!r}.",
            hint=f"pass {name}=(0.5, 0.5, 0.5) or similar",
        )
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(
            f"{name} must contain only numbers, got {values!r}.",
            hint=f"pass {name} as a list or tuple of floats",
        ) from exc
    if not out:
        raise ConfigError(
            f"{name} must have one value per channel, got an empty sequence.",
            hint=f"pass {name}=(0.5, 0.5, 0.5) for a 3-channel model",
        )
    if not all(math.isfinite(v) for v in out):
        raise ConfigError(f"{name} must be finite, got {out}.", hint=f"fix the {name} values")
    return out


def validate_stats(mean: Sequence[float], std: Sequence[float]) -> tuple[list[float], list[float]]:
    """Check per-channel ``mean``/``std`` and return them as float lists.

    Raises:
        ConfigError: If the lengths differ, a value is not finite or a std is not positive.
    """
    m = _as_floats("mean", mean)
    s = _as_floats("std", std)
    if len(m) != len(s):
        raise ConfigError(
            f"mean and std must have the same length (one value per channel), "
            f"got {len(m)} and {len(s)}.",
            hint="give mean and std one entry per input channel",
        )
    if any(v <= 0 for v in s):
        raise ConfigError(
            f"std must be strictly positive, got {s}.",
            hint="use the per-channel standard deviation of the training pixels in [0, 1]",
        )
    return m, s


def _is_tracing() -> bool:
    """True inside ``torch.jit.trace`` (public API, but untyped in torch's stubs)."""
    return bool(torch.jit.is_tracing())  # type: ignore[attr-defined,no-untyped-call]


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel on an NCHW batch.

    Args:
        mean: One value per channel.
        std: One strictly positive value per channel.

    Raises:
        ConfigError: If the lengths differ, a value is not finite or a std is not positive.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        m, s = validate_stats(mean, std)
        self.register_buffer("mean", torch.tensor(m, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(s, dtype=torch.float32).view(1, -1, 1, 1))

    @property
    def num_channels(self) -> int:
        """Number of channels this layer normalizes."""
        return int(self.mean.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize ``x`` (shape ``(N, C, H, W)``)."""
        # the check is skipped while tracing (legacy ONNX export): shapes are symbolic there
        if not _is_tracing() and (x.dim() != 4 or x.shape[1] != self.mean.shape[1]):
            raise ModelCompatibilityError(
                f"expected an NCHW batch with {self.num_channels} channels, "
                f"got shape {tuple(x.shape)}.",
                hint="pass images as a float tensor (N, C, H, W) with pixels in [0, 1]",
            )
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        """Show the statistics in ``repr``."""
        mean = [round(v, 4) for v in self.mean.flatten().tolist()]
        std = [round(v, 4) for v in self.std.flatten().tolist()]
        return f"mean={mean}, std={std}"


class NormalizedModel(nn.Module):
    """A model preceded by :class:`Normalize`, so it takes [0, 1] pixels.

    Attributes:
        normalize: The :class:`Normalize` layer.
        model: The wrapped network (not copied).
    """

    def __init__(self, normalize: Normalize, model: nn.Module) -> None:
        super().__init__()
        self.normalize = normalize
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize ``x`` and run the wrapped model."""
        out: torch.Tensor = self.model(self.normalize(x))
        return out


def with_normalization(
    model: nn.Module, mean: Sequence[float], std: Sequence[float]
) -> NormalizedModel:
    """Wrap ``model`` so it takes [0, 1] pixels and normalizes them itself.

    The model is *not* copied: the wrapper shares its parameters. The statistics are placed
    on the model's device (the first parameter or buffer; CPU for a stateless model).

    Args:
        model: Any module that expects normalized NCHW input.
        mean: Per-channel mean of [0, 1] training pixels.
        std: Per-channel standard deviation (strictly positive).

    Returns:
        A :class:`NormalizedModel` with attributes ``normalize`` and ``model``.

    Raises:
        ConfigError: If ``mean`` and ``std`` differ in length or a std is not positive.
        ModelCompatibilityError: If ``model`` is not an ``nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise ModelCompatibilityError(
            f"expected a torch.nn.Module, got {type(model).__name__}.",
            hint="pass the network itself, not its state dict",
        )
    normalize = Normalize(mean, std)
    tensors = itertools.chain(model.parameters(), model.buffers())
    device = next((t.device for t in tensors), torch.device("cpu"))
    return NormalizedModel(normalize.to(device), model)
