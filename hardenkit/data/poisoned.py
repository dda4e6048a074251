"""A poisoned view of a dataset with exact poison indices.

Example:
    >>> import torch
    >>> from hardenkit.data import ImageDataset, PoisonedDataset
    >>> base = ImageDataset(torch.zeros(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]))
    >>> stamp = lambda x: x.clamp(min=0.5)
    >>> p = PoisonedDataset(base, stamp, torch.tensor([1, 3]), torch.tensor([0, 0]))
    >>> p.labels.tolist(), p.poison_indices.tolist()
    ([0, 0, 2, 0], [1, 3])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import DataError
from .datasets import ImageDataset, to_float_pixels

__all__ = ["PoisonedDataset"]

PixelTransform = Callable[[Tensor], Tensor]


class PoisonedDataset(ImageDataset):
    """``base`` with ``trigger`` stamped on ``poison_indices`` and their labels replaced.

    The poisoned images are materialised once (in batches) so training reads plain tensors.
    ``noise_indices`` optionally get ``noise_transform`` while keeping their true label
    (WaNet's noise mode). The clean source, the exact indices and the original labels stay
    available: ``base``, ``poison_indices``, ``noise_indices``, ``original_labels``.
    """

    def __init__(
        self,
        base: ImageDataset,
        trigger: PixelTransform,
        poison_indices: Tensor,
        poisoned_labels: Tensor,
        *,
        noise_indices: Tensor | None = None,
        noise_transform: PixelTransform | None = None,
        batch_size: int = 1024,
    ) -> None:
        poison_indices = torch.as_tensor(poison_indices, dtype=torch.int64)
        poisoned_labels = torch.as_tensor(poisoned_labels, dtype=torch.int64)
        if poison_indices.shape != poisoned_labels.shape:
            raise DataError("poison_indices and poisoned_labels must have the same length.")
        if len(torch.unique(poison_indices)) != len(poison_indices):
            raise DataError("poison_indices contains duplicates.")
        if len(poison_indices) and (
            int(poison_indices.min()) < 0 or int(poison_indices.max()) >= len(base)
        ):
            raise DataError("poison_indices out of range of the base dataset.")
        noise = (
            torch.as_tensor(noise_indices, dtype=torch.int64)
            if noise_indices is not None
            else torch.empty(0, dtype=torch.int64)
        )
        if len(noise) and (int(noise.min()) < 0 or int(noise.max()) >= len(base)):
            raise DataError("noise_indices out of range of the base dataset.")
        if len(torch.unique(noise)) != len(noise):
            raise DataError("noise_indices contains duplicates.")
        if len(noise) and noise_transform is None:
            raise DataError("noise_indices given without a noise_transform.")
        if len(noise) and bool(torch.isin(noise, poison_indices).any()):
            raise DataError("noise_indices and poison_indices must be disjoint.")
        images = base.images.clone()
        labels = base.labels.clone()
        self._stamp(images, poison_indices, trigger, batch_size)
        if len(noise) and noise_transform is not None:
            self._stamp(images, noise, noise_transform, batch_size)
        labels[poison_indices] = poisoned_labels
        super().__init__(images, labels, base.classes)
        self.base = base
        self.trigger = trigger
        self.poison_indices = torch.sort(poison_indices).values
        self.noise_indices = torch.sort(noise).values
        self.original_labels = base.labels.clone()

    @staticmethod
    def _stamp(images: Tensor, idx: Tensor, fn: PixelTransform, batch_size: int) -> None:
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            out = fn(to_float_pixels(images[chunk]))
            if images.dtype == torch.uint8:
                images[chunk] = (out.clamp(0, 1) * 255).round().to(torch.uint8)
            else:
                images[chunk] = out.clamp(0, 1).to(images.dtype)

    @property
    def poison_mask(self) -> Tensor:
        """Boolean mask over samples: True where the sample was poisoned."""
        m = torch.zeros(len(self), dtype=torch.bool)
        m[self.poison_indices] = True
        return m

    @property
    def clean_indices(self) -> Tensor:
        """Indices that were neither poisoned nor noise-transformed."""
        m = self.poison_mask
        m[self.noise_indices] = True
        return torch.nonzero(~m).flatten()
