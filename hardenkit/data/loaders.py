"""Loader adapter: any iterable of ``(x, y)`` (or dict) batches, validated on the first batch.

hardenkit's contract is pixel space: float images in [0, 1], NCHW, int64 labels. Loaders
that yield *normalized* tensors are accepted when ``RuntimeConfig.input_normalization`` is
declared; they are converted back to pixels here, once, at the boundary.

Example:
    >>> import torch
    >>> from hardenkit.data import iter_batches
    >>> batches = [(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 1]))]
    >>> x, y = next(iter_batches(batches, num_classes=3))
    >>> x.shape
    torch.Size([4, 3, 8, 8])
    >>> next(iter_batches([(torch.rand(4, 3, 8, 8) * 255, torch.zeros(4, dtype=torch.long))]))
    Traceback (most recent call last):
    ...
    hardenkit.errors.DataError: loader: images must be float pixels in [0, 1], got values in ...
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from ..config import Normalization
from ..errors import DataError
from .datasets import ImageDataset

__all__ = ["BatchSource", "iter_batches", "materialize", "validate_batch"]

BatchSource = Iterable[Any]
"""Anything iterable yielding ``(x, y)`` tuples/lists or dicts with image and label keys."""

_IMAGE_KEYS = ("image", "images", "img", "pixel_values", "x", "input", "inputs")
_LABEL_KEYS = ("label", "labels", "target", "targets", "y")
_TOL = 1e-3


def _unpack(batch: Any, where: str) -> tuple[Tensor, Tensor]:
    if isinstance(batch, Mapping):
        xk = next((k for k in _IMAGE_KEYS if k in batch), None)
        yk = next((k for k in _LABEL_KEYS if k in batch), None)
        if xk is None or yk is None:
            raise DataError(
                f"{where}: dict batch with keys {sorted(batch)} has no image/label key.",
                hint=f"use keys from {_IMAGE_KEYS} and {_LABEL_KEYS}, or yield (x, y) tuples",
            )
        x, y = batch[xk], batch[yk]
    elif isinstance(batch, (tuple, list)) and len(batch) >= 2:
        x, y = batch[0], batch[1]
    else:
        raise DataError(
            f"{where}: expected each batch to be an (images, labels) pair, got "
            f"{type(batch).__name__}.",
            hint="yield (x, y) tuples from your loader, e.g. a torch DataLoader over "
            "an (image, label) dataset",
        )
    if not isinstance(x, Tensor):
        raise DataError(f"{where}: images must be a torch.Tensor, got {type(x).__name__}.")
    if not isinstance(y, Tensor):
        y = torch.as_tensor(y)
    return x, y


def validate_batch(
    x: Tensor,
    y: Tensor,
    *,
    num_classes: int | None = None,
    image_shape: tuple[int, ...] | None = None,
    where: str = "loader",
) -> None:
    """Check one batch against the pixel-space contract; raise :class:`DataError` if violated."""
    if x.dtype == torch.uint8:
        raise DataError(
            f"{where}: images are uint8 (0..255); hardenkit expects float pixels in [0, 1].",
            hint="convert with x.float() / 255 (e.g. torchvision's ToTensor does this)",
        )
    if not x.is_floating_point():
        raise DataError(f"{where}: images must be a float tensor, got {x.dtype}.")
    if x.ndim != 4:
        hint = "add a batch axis" if x.ndim == 3 else "images must be (N, C, H, W)"
        raise DataError(
            f"{where}: images must be 4-D (N, C, H, W), got shape {tuple(x.shape)}.", hint=hint
        )
    if x.shape[1] not in (1, 3, 4) and x.shape[-1] in (1, 3, 4):
        raise DataError(
            f"{where}: images look channels-last {tuple(x.shape)}; expected (N, C, H, W).",
            hint="permute with x.permute(0, 3, 1, 2)",
        )
    if image_shape is not None and tuple(x.shape[1:]) != tuple(image_shape):
        raise DataError(
            f"{where}: expected images of shape {tuple(image_shape)}, got {tuple(x.shape[1:])}."
        )
    if x.shape[0] == 0:
        raise DataError(f"{where}: got an empty batch.")
    if not bool(torch.isfinite(x).all()):
        raise DataError(f"{where}: images contain NaN or infinite values.")
    lo, hi = float(x.min()), float(x.max())
    if lo < -_TOL or hi > 1 + _TOL:
        if hi > 1.5 and lo >= -_TOL:
            hint = "the values look like [0, 255]: divide by 255"
        else:
            hint = (
                "the values look normalized: pass unnormalized pixels, or declare "
                "RuntimeConfig(input_normalization={'mean': ..., 'std': ...})"
            )
        raise DataError(
            f"{where}: images must be float pixels in [0, 1], got values in [{lo:.3g}, {hi:.3g}].",
            hint=hint,
        )
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        if y.ndim == 2 and y.shape[1] == 1:
            fix = "labels of shape (N, 1): pass y.squeeze(1)"
        elif y.ndim == 2 and y.shape[0] == x.shape[0]:
            fix = "pass class indices, not one-hot vectors or scores: y.argmax(1)"
        else:
            fix = "pass one class index per image, in the order of the images"
        raise DataError(
            f"{where}: labels must be 1-D with one int per image, got shape {tuple(y.shape)} "
            f"for {x.shape[0]} images.",
            hint=fix,
        )
    if y.is_floating_point() or y.dtype == torch.bool:
        integral = y.is_floating_point() and bool(torch.all(y == y.round()))
        raise DataError(
            f"{where}: labels must be integer class indices, got {y.dtype}.",
            hint="the values are whole numbers: pass y.long()"
            if integral
            else "pass class indices (0..K-1) as an integer tensor",
        )
    if num_classes is None and y.numel() and int(y.min()) < 0:
        raise DataError(
            f"{where}: labels must be non-negative class indices, got {int(y.min())}.",
            hint="map your labels to 0..K-1 (e.g. -1 'ignore' labels must be removed)",
        )
    if num_classes is not None and y.numel():
        ymin, ymax = int(y.min()), int(y.max())
        if ymin < 0 or ymax >= num_classes:
            raise DataError(
                f"{where}: labels must lie in [0, {num_classes}), got range [{ymin}, {ymax}].",
                hint="check num_classes and the label encoding of your dataset",
            )


def _denormalize(x: Tensor, norm: Normalization) -> Tensor:
    mean = torch.tensor(norm.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(norm.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    if mean.shape[1] != x.shape[1]:
        raise DataError(
            f"input_normalization has {mean.shape[1]} channels but images have {x.shape[1]}."
        )
    return (x * std + mean).clamp_(0.0, 1.0)


def iter_batches(
    source: BatchSource | ImageDataset,
    *,
    num_classes: int | None = None,
    input_normalization: Normalization | None = None,
    device: torch.device | str | None = None,
    where: str = "loader",
    check_all_labels: bool = True,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield validated ``(x float32 [0,1] NCHW, y int64)`` batches from any loader.

    Every batch is validated (dtype, shape consistent with the first batch, finite pixels in
    [0, 1], 1-D integer labels, and — unless ``check_all_labels=False`` — labels in
    ``[0, num_classes)``); a bad batch raises :class:`DataError` naming its index. An empty
    loader raises :class:`DataError`.
    """
    if isinstance(source, ImageDataset):
        source = source.loader()
    if isinstance(source, Tensor) or not isinstance(source, Iterable):
        raise DataError(
            f"{where}: expected an iterable of (images, labels) batches, got "
            f"{type(source).__name__}.",
            hint="pass a torch DataLoader, a list of (x, y) batches, or a hardenkit ImageDataset",
        )
    first_shape: tuple[int, ...] | None = None
    n = 0
    for batch in source:
        x, y = _unpack(batch, where)
        if input_normalization is not None and x.is_floating_point():
            x = _denormalize(x.to(torch.float32), input_normalization)
        # Every batch gets the full check (dtype, shape, finiteness, pixel range, label dtype,
        # shape and range): a NaN pixel or a 0..255 batch late in the loader must not be
        # silently miscounted. The check is a few reductions, cheap next to a forward pass.
        validate_batch(
            x,
            y,
            num_classes=num_classes if (check_all_labels or first_shape is None) else None,
            image_shape=first_shape,
            where=where if first_shape is None else f"{where}: batch {n}",
        )
        if first_shape is None:
            first_shape = tuple(x.shape[1:])
        x = x.to(torch.float32)
        y = y.to(torch.int64)
        if device is not None:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        n += 1
        yield x, y
    if n == 0:
        raise DataError(f"{where}: the loader yielded no batches.", hint="check the dataset")


def materialize(
    source: BatchSource | ImageDataset,
    *,
    num_classes: int | None = None,
    input_normalization: Normalization | None = None,
    device: torch.device | str | None = None,
    max_samples: int | None = None,
    where: str = "loader",
) -> tuple[Tensor, Tensor]:
    """Collect a (small) loader into ``(x, y)`` tensors on ``device`` (validated)."""
    if isinstance(source, ImageDataset) and max_samples is None:
        x, y = source.tensors(device)
        validate_batch(x[:1], y[:1], num_classes=num_classes, where=where)
        if num_classes is not None and len(y) and int(y.max()) >= num_classes:
            raise DataError(f"{where}: labels must lie in [0, {num_classes}).")
        return x, y
    xs: list[Tensor] = []
    ys: list[Tensor] = []
    count = 0
    for x, y in iter_batches(
        source,
        num_classes=num_classes,
        input_normalization=input_normalization,
        device=device,
        where=where,
    ):
        xs.append(x)
        ys.append(y)
        count += len(y)
        if max_samples is not None and count >= max_samples:
            break
    x_all, y_all = torch.cat(xs), torch.cat(ys)
    if max_samples is not None:
        x_all, y_all = x_all[:max_samples], y_all[:max_samples]
    return x_all, y_all
