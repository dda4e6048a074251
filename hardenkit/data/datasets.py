"""In-memory image datasets and the sources that fill them (arrays, ImageFolder, archives).

Images are kept as ``uint8`` NCHW tensors (4× smaller than float) or float32 in [0, 1];
:meth:`ImageDataset.pixels` hands out float32 [0, 1] pixels, optionally on a device.

Example:
    >>> import numpy as np
    >>> from hardenkit.data import from_arrays
    >>> ds = from_arrays(np.zeros((4, 32, 32, 3), dtype=np.uint8), np.array([0, 1, 0, 1]))
    >>> ds.images.shape, ds.num_classes
    (torch.Size([4, 3, 32, 32]), 2)
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "TensorLoader",
    "from_arrays",
    "load_image_archive",
    "load_image_folder",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class TensorLoader:
    """A minimal, seeded batch iterator over ``(x, y)`` tensors (an alternative to DataLoader).

    Yields float32 pixel batches in [0, 1] (uint8 storage is converted per batch).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int = 256,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}.")
        self.images = images
        self.labels = labels
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.device = torch.device(device) if device is not None else None
        self._epoch = 0

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.labels)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self._epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        self._epoch += 1
        stop = (n // self.batch_size) * self.batch_size if self.drop_last else n
        for start in range(0, stop, self.batch_size):
            idx = order[start : start + self.batch_size]
            x = to_float_pixels(self.images[idx])
            y = self.labels[idx]
            if self.device is not None:
                x, y = x.to(self.device), y.to(self.device)
            yield x, y


def to_float_pixels(images: Tensor) -> Tensor:
    """uint8 [0, 255] → float32 [0, 1]; float tensors are returned as float32."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)
    return images.to(torch.float32)


class ImageDataset(Dataset[tuple[Tensor, int]]):
    """Images (NCHW, uint8 or float32 in [0, 1]) with int64 labels, held in memory.

    Indexing returns ``(image CHW float32 in [0, 1], label int)``, so it also works with
    ``torch.utils.data.DataLoader``.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        classes: Sequence[str] | None = None,
        *,
        num_classes: int | None = None,
    ) -> None:
        if images.ndim != 4:
            raise DataError(
                f"ImageDataset expects images shaped (N, C, H, W), got {tuple(images.shape)}."
            )
        if images.dtype not in (torch.uint8, torch.float32):
            raise DataError(f"images must be uint8 or float32, got {images.dtype}.")
        if labels.ndim != 1 or len(labels) != len(images):
            raise DataError(
                f"labels must be 1-D with one entry per image: got {tuple(labels.shape)} "
                f"for {len(images)} images."
            )
        self.images = images
        self.labels = labels.to(torch.int64)
        k = (
            num_classes
            if num_classes is not None
            else (
                len(classes)
                if classes is not None
                else int(self.labels.max().item()) + 1
                if len(self.labels)
                else 0
            )
        )
        self.classes: tuple[str, ...] = (
            tuple(classes) if classes is not None else tuple(str(i) for i in range(k))
        )
        if len(self.labels) and (int(self.labels.min()) < 0 or int(self.labels.max()) >= k):
            raise DataError(
                f"labels must lie in [0, {k}), got range "
                f"[{int(self.labels.min())}, {int(self.labels.max())}]."
            )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return to_float_pixels(self.images[index]), int(self.labels[index])

    def __repr__(self) -> str:
        return (
            f"ImageDataset(n={len(self)}, shape={self.image_shape}, "
            f"classes={self.num_classes}, dtype={self.images.dtype})"
        )

    def subset(self, indices: Tensor | Sequence[int]) -> ImageDataset:
        """A new dataset holding only ``indices`` (tensors are indexed, i.e. copied)."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return ImageDataset(self.images[idx], self.labels[idx], self.classes)

    def pixels(self, device: torch.device | str | None = None) -> Tensor:
        """All images as float32 [0, 1] on ``device``."""
        imgs = self.images if device is None else self.images.to(device)
        return to_float_pixels(imgs)

    def tensors(self, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        """``(pixels, labels)`` on ``device``."""
        y = self.labels if device is None else self.labels.to(device)
        return self.pixels(device), y

    def loader(
        self,
        batch_size: int = 256,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        device: torch.device | str | None = None,
    ) -> TensorLoader:
        """A seeded batch iterator yielding ``(x, y)`` float pixel batches."""
        return TensorLoader(
            self.images,
            self.labels,
            batch_size,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
            device=device,
        )

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()


def from_arrays(
    images: np.ndarray | Tensor,
    labels: np.ndarray | Tensor | Sequence[int],
    *,
    classes: Sequence[str] | None = None,
    layout: str = "auto",
) -> ImageDataset:
    """Build an :class:`ImageDataset` from NumPy arrays or tensors.

    ``images`` may be uint8 in [0, 255] or float in [0, 1], NCHW or NHWC (``layout="auto"``
    treats a last axis of size 1, 3 or 4 with a larger second axis as NHWC).
    """
    x = torch.as_tensor(np.asarray(images)) if isinstance(images, np.ndarray) else images
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    if not isinstance(x, Tensor):
        raise DataError(f"images must be a numpy array or tensor, got {type(images).__name__}.")
    if x.ndim == 3:  # N,H,W grey
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise DataError(
            f"images must be 4-D (N, C, H, W) or (N, H, W, C), got shape {tuple(x.shape)}.",
            hint="stack your images into one array with a leading batch axis",
        )
    if layout not in {"auto", "NCHW", "NHWC"}:
        raise DataError(f"layout must be 'auto', 'NCHW' or 'NHWC', got {layout!r}.")
    nhwc = layout == "NHWC" or (
        layout == "auto" and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4)
    )
    if nhwc:
        x = x.permute(0, 3, 1, 2)
    x = x.contiguous()
    if x.dtype == torch.uint8:
        pass
    elif x.is_floating_point():
        x = x.to(torch.float32)
        lo, hi = (float(x.min()), float(x.max())) if x.numel() else (0.0, 0.0)
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise DataError(
                f"float images must be pixels in [0, 1], got values in [{lo:.3g}, {hi:.3g}].",
                hint="pass uint8 [0, 255] arrays, or divide by 255 / undo the normalization",
            )
    else:
        raise DataError(f"images must be uint8 or float, got {x.dtype}.")
    return ImageDataset(x, y, classes)


def _decode(data: bytes, size: tuple[int, int] | None, mode: str) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as opened:
        im: Image.Image = opened.convert(mode)
    if size is not None and im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def _stack(items: list[tuple[str, str, np.ndarray]], where: str) -> ImageDataset:
    if not items:
        raise DataError(f"No images found in {where}.", hint="expect <split>/<class>/<image> files")
    items.sort(key=lambda t: (t[0], t[1]))
    classes = sorted({c for c, _, _ in items})
    shapes = {a.shape for _, _, a in items}
    if len(shapes) != 1:
        raise DataError(
            f"Images in {where} have different sizes {sorted(shapes)[:4]}.",
            hint="pass image_size=(H, W) to resize them on load",
        )
    arr = np.stack([a for _, _, a in items]).transpose(0, 3, 1, 2)
    cidx = {c: i for i, c in enumerate(classes)}
    labels = torch.tensor([cidx[c] for c, _, _ in items], dtype=torch.int64)
    return ImageDataset(torch.from_numpy(np.ascontiguousarray(arr)), labels, classes)


def load_image_folder(
    root: str | Path, *, image_size: tuple[int, int] | None = None, mode: str = "RGB"
) -> ImageDataset:
    """Read an ImageFolder directory ``root/<class>/<image>`` into memory.

    Classes are the sorted sub-directory names (label = index), like torchvision's ImageFolder.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"ImageFolder root {str(root)!r} is not a directory.")
    items: list[tuple[str, str, np.ndarray]] = []
    for cdir in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(cdir.iterdir()):
            if f.suffix.lower() in IMAGE_EXTENSIONS:
                try:
                    arr = _decode(f.read_bytes(), image_size, mode)
                except (OSError, ValueError) as exc:
                    raise DataError(
                        f"cannot decode image {str(f)!r}: {exc}",
                        hint="remove or replace the corrupt file",
                    ) from exc
                items.append((cdir.name, f.name, arr))
    return _stack(items, str(root))


def load_image_archive(
    path: str | Path,
    *,
    splits: Sequence[str] = ("train", "test"),
    image_size: tuple[int, int] | None = None,
    mode: str = "RGB",
    limit_per_class: int | None = None,
) -> dict[str, ImageDataset]:
    """Read a ``.tar.gz`` archive in ImageFolder layout (``<split>/<class>/<image>``).

    The archive is streamed once, in member order (gzip cannot seek backwards), e.g.
    ``load_image_archive("../shared/datasets/cifar10-jpeg.tar.gz")`` gives
    ``{"train": 50,000 images, "test": 10,000 images}`` in about 15 s on 2 cores.
    ``limit_per_class`` keeps only the first N images of each class in archive order.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"Dataset archive {str(path)!r} does not exist.",
            hint="pass the path of a .tar.gz in ImageFolder layout",
        )
    wanted = set(splits)
    per_split: dict[str, list[tuple[str, str, np.ndarray]]] = {s: [] for s in splits}
    counts: dict[tuple[str, str], int] = {}
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                parts = Path(member.name).parts
                if len(parts) < 3 or Path(parts[-1]).suffix.lower() not in IMAGE_EXTENSIONS:
                    continue
                split, cls = parts[-3], parts[-2]
                if split not in wanted:
                    continue
                if limit_per_class is not None:
                    key = (split, cls)
                    if counts.get(key, 0) >= limit_per_class:
                        continue
                    counts[key] = counts.get(key, 0) + 1
                fh = tar.extractfile(member)
                if fh is None:
                    continue
                try:
                    arr = _decode(fh.read(), image_size, mode)
                except (OSError, ValueError) as exc:
                    raise DataError(
                        f"cannot decode {member.name!r} in {str(path)!r}: {exc}"
                    ) from exc
                per_split[split].append((cls, parts[-1], arr))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"Cannot read archive {str(path)!r}: {exc}") from exc
    out: dict[str, ImageDataset] = {}
    for s in splits:
        if not per_split[s]:
            raise DataError(
                f"Archive {str(path)!r} has no images under a '{s}/<class>/' folder.",
                hint=f"expected members like '{s}/<class>/0001.jpg'",
            )
        out[s] = _stack(per_split[s], f"{path}:{s}")
    classes = {s: out[s].classes for s in out}
    if len(set(classes.values())) > 1:
        raise DataError(f"Splits of {str(path)!r} have different class folders: {classes}.")
    return out
