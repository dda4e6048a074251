"""Image stores: a clean set kept compact (uint8 when exact) in memory or spilled to disk.

The Purifier used to hold its whole clean set as one float32 tensor. An :class:`ImageStore`
holds the images as they came and hands out float32 [0, 1] pixels per mini-batch:

* **uint8 when exact** — a loader batch whose every pixel is exactly ``k / 255`` (images
  decoded from JPEG/PNG and divided by 255, as ``ToTensor`` does) is stored as the uint8
  ``k`` and converted back with ``k.float() / 255`` per mini-batch. The check is bitwise
  (the reconverted float must have the same bits as the loader's), so a run on the store is
  bit-identical to a run on the float tensor; anything else (normalised, resized, blended
  pixels) stays float32. One non-exact batch turns the whole store float32.
* **memory or disk** — ``storage="memory"`` keeps one tensor (moved to the run's device:
  uint8 on the GPU takes a quarter of the memory); ``storage="disk"`` streams the loader
  once into an unlinked temporary file under ``spill_dir`` and reads mini-batches back with
  positioned reads (``os.pread``; ``numpy.memmap`` where that is missing), so a clean set
  larger than RAM purifies. Reads go through the page cache, not the process's memory.

Indexing a store (``store[idx]``, ``store[a:b]``) returns float32 pixels on ``store.device``;
:meth:`ImageStore.take` makes a subset (a copy in memory, an index view on disk).

Example:
    >>> import torch
    >>> from hardenkit.data.store import collect
    >>> x = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8).float() / 255
    >>> store, y = collect([(x, torch.arange(6) % 2)])
    >>> store.storage_dtype, store.location, torch.equal(store[:], x)
    (torch.uint8, 'memory', True)
    >>> half, _ = collect([(x * 0.5, torch.arange(6) % 2)], storage="disk")
    >>> half.storage_dtype, half.location, torch.equal(half[torch.tensor([4, 1])], x[[4, 1]] * 0.5)
    (torch.float32, 'disk', True)
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import weakref
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ..config import Normalization
from ..errors import DataError
from ..logging import get_logger
from .datasets import ImageDataset, to_float_pixels
from .loaders import BatchSource, iter_batches, validate_batch

__all__ = ["DiskStore", "ImageStore", "MemoryStore", "Storage", "as_store", "collect", "quantize"]

_log = get_logger("data.store")

Storage = Literal["memory", "disk"]
Index = int | slice | Tensor | Sequence[int]

_NP_DTYPES: dict[torch.dtype, Any] = {torch.uint8: np.uint8, torch.float32: np.float32}


def quantize(x: Tensor) -> Tensor | None:
    """``x`` as uint8 when every pixel is exactly ``k / 255`` (bitwise, after the conversion
    ``k.float() / 255`` hardenkit applies per mini-batch), else ``None``.

    Example:
        >>> import torch
        >>> quantize(torch.tensor([0.0, 1.0, 128 / 255])).tolist()
        [0, 255, 128]
        >>> quantize(torch.tensor([0.5])) is None
        True
    """
    if x.dtype != torch.float32:
        return None
    q = torch.round(x * 255.0).clamp_(0, 255).to(torch.uint8)
    back = to_float_pixels(q)
    if torch.equal(back.view(torch.int32), x.contiguous().view(torch.int32)):
        return q
    return None


class ImageStore(ABC):
    """``N × C × H × W`` images; indexing returns float32 [0, 1] pixels on :attr:`device`."""

    @property
    @abstractmethod
    def shape(self) -> tuple[int, int, int, int]:
        """``(N, C, H, W)``."""

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Where indexing puts the pixels."""

    @property
    @abstractmethod
    def storage_dtype(self) -> torch.dtype:
        """``torch.uint8`` or ``torch.float32``."""

    @property
    @abstractmethod
    def location(self) -> Storage:
        """``memory`` or ``disk``."""

    @abstractmethod
    def __getitem__(self, index: Index) -> Tensor:
        """Float32 [0, 1] pixels of ``index`` (an int gives one ``C × H × W`` image)."""

    @abstractmethod
    def take(self, index: Tensor | Sequence[int]) -> ImageStore:
        """The subset ``index`` as a store (same location)."""

    @abstractmethod
    def to(self, device: torch.device | str) -> ImageStore:
        """The same images handed out on ``device``."""

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes the images take in their storage."""
        n, c, h, w = self.shape
        return n * c * h * w * (1 if self.storage_dtype == torch.uint8 else 4)

    def to_tensor(self) -> Tensor:
        """All images as one float32 tensor on :attr:`device` (the full copy the store
        avoids; for code that needs it)."""
        if len(self) == 0:
            return torch.zeros(self.shape, device=self.device)
        return self[:]

    def batches(self, size: int = 512) -> Iterator[Tensor]:
        """Consecutive float32 batches of ``size`` images."""
        for i in range(0, len(self), size):
            yield self[i : i + size]

    def info(self) -> dict[str, Any]:
        """A JSON-able description (for reports)."""
        return {
            "location": self.location,
            "dtype": "uint8" if self.storage_dtype == torch.uint8 else "float32",
            "images": len(self),
            "bytes": self.nbytes,
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(shape={self.shape}, dtype={self.storage_dtype}, "
            f"device={self.device})"
        )


class MemoryStore(ImageStore):
    """Images in one uint8 or float32 tensor (on any device)."""

    def __init__(self, data: Tensor) -> None:
        if data.dtype not in (torch.uint8, torch.float32) or data.ndim != 4:
            raise DataError(
                f"an image store holds (N, C, H, W) uint8 or float32 images, got "
                f"{data.dtype} {tuple(data.shape)}."
            )
        self.data = data

    @property
    def shape(self) -> tuple[int, int, int, int]:
        n, c, h, w = self.data.shape
        return int(n), int(c), int(h), int(w)

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def storage_dtype(self) -> torch.dtype:
        return self.data.dtype

    @property
    def location(self) -> Storage:
        return "memory"

    def __getitem__(self, index: Index) -> Tensor:
        if isinstance(index, Tensor) and index.device != self.data.device:
            index = index.to(self.data.device)
        return to_float_pixels(self.data[index])

    def take(self, index: Tensor | Sequence[int]) -> MemoryStore:
        idx = torch.as_tensor(index, dtype=torch.int64) if not isinstance(index, Tensor) else index
        if idx.dtype == torch.bool:
            idx = torch.nonzero(idx).flatten()
        return MemoryStore(self.data[idx.to(self.data.device)])

    def to(self, device: torch.device | str) -> MemoryStore:
        return MemoryStore(self.data.to(device))


class _SpillFile:
    """An (already unlinked where the OS allows it) temporary file of fixed-size rows."""

    def __init__(
        self, directory: str | Path | None, dtype: torch.dtype, item_shape: tuple[int, ...]
    ):
        d = Path(directory) if directory is not None else None
        if d is not None:
            d.mkdir(parents=True, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix="hardenkit-clean-", suffix=".bin", dir=d)
        self.fd = fd
        self.path = path
        self.dtype = dtype
        self.item_shape = item_shape
        self.item_bytes = int(np.prod(item_shape)) * (1 if dtype == torch.uint8 else 4)
        self.rows = 0
        try:  # POSIX: the data lives as long as the descriptor; nothing is left behind
            os.unlink(path)
            self.unlinked = True
        except OSError:  # pragma: no cover - Windows
            self.unlinked = False
        self._memmap: np.memmap[Any, Any] | None = None
        self._finalizer = weakref.finalize(self, _close_spill, fd, path, self.unlinked)

    def append(self, x: Tensor) -> None:
        arr = np.ascontiguousarray(x.detach().cpu().numpy())
        view = arr.reshape(-1).view(np.uint8).data
        offset = self.rows * self.item_bytes
        while len(view):
            written = (
                os.pwrite(self.fd, view, offset)
                if hasattr(os, "pwrite")
                else _seek_write(self.fd, view, offset)
            )
            view = view[written:]
            offset += written
        self.rows += len(arr)

    def read_run(self, start: int, count: int, out: np.ndarray) -> None:
        """Rows ``[start, start + count)`` into ``out`` (a C-contiguous array of them)."""
        nbytes = count * self.item_bytes
        offset = start * self.item_bytes
        if not hasattr(os, "pread"):  # pragma: no cover - Windows
            if self._memmap is None:
                self._memmap = np.memmap(
                    self.path,
                    dtype=_NP_DTYPES[self.dtype],
                    mode="r",
                    shape=(self.rows, *self.item_shape),
                )
            out[...] = self._memmap[start : start + count]
            return
        if not out.flags.c_contiguous:
            raise DataError("internal: spill reads need a C-contiguous buffer.")
        buf = out.reshape(-1).view(np.uint8).data
        done = 0
        while done < nbytes:
            chunk = os.pread(self.fd, min(nbytes - done, 1 << 30), offset + done)
            if not chunk:
                raise DataError("the clean-set spill file ended early (was it truncated?).")
            buf[done : done + len(chunk)] = chunk
            done += len(chunk)


def _seek_write(fd: int, view: memoryview, offset: int) -> int:  # pragma: no cover - Windows
    os.lseek(fd, offset, os.SEEK_SET)
    return os.write(fd, view)


def _close_spill(fd: int, path: str, unlinked: bool) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
    if not unlinked:  # pragma: no cover - Windows
        with contextlib.suppress(OSError):
            os.unlink(path)


class DiskStore(ImageStore):
    """Images in a temporary spill file, read back per mini-batch (see the module docstring)."""

    def __init__(
        self,
        spill: _SpillFile,
        *,
        rows: Tensor | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self._spill = spill
        self._rows = rows  # None = every row of the file, in order
        self._device = torch.device(device)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        n = self._spill.rows if self._rows is None else len(self._rows)
        c, h, w = self._spill.item_shape
        return n, int(c), int(h), int(w)

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def storage_dtype(self) -> torch.dtype:
        return self._spill.dtype

    @property
    def location(self) -> Storage:
        return "disk"

    def _file_rows(self, index: Index) -> tuple[np.ndarray | None, slice | None, bool]:
        """File rows of ``index``: an array, or a contiguous slice; and whether it was an int."""
        n = len(self)
        if isinstance(index, int):
            if not -n <= index < n:
                raise IndexError(f"index {index} out of range for {n} images")
            index = index % n if n else index
            rows_arr = np.array([index], dtype=np.int64)
            scalar = True
        elif isinstance(index, slice):
            start, stop, step = index.indices(n)
            if step == 1 and self._rows is None:
                return None, slice(start, max(start, stop)), False
            rows_arr = np.arange(start, stop, step, dtype=np.int64)
            scalar = False
        else:
            t = torch.as_tensor(index) if not isinstance(index, Tensor) else index
            t = t.detach().cpu()
            if t.dtype == torch.bool:
                if len(t) != n:
                    raise IndexError(f"a boolean mask of {len(t)} for {n} images")
                t = torch.nonzero(t).flatten()
            rows_arr = t.to(torch.int64).numpy().reshape(-1)
            if len(rows_arr) and (rows_arr.min() < -n or rows_arr.max() >= n):
                raise IndexError(f"index out of range for {n} images")
            rows_arr = np.where(rows_arr < 0, rows_arr + n, rows_arr)
            scalar = False
        if self._rows is not None:
            rows_arr = self._rows.numpy()[rows_arr]
        return rows_arr, None, scalar

    def _read(self, rows: np.ndarray | None, span: slice | None) -> np.ndarray:
        spill = self._spill
        np_dtype = _NP_DTYPES[spill.dtype]
        if span is not None:
            out = np.empty((span.stop - span.start, *spill.item_shape), dtype=np_dtype)
            if len(out):
                spill.read_run(span.start, len(out), out)
            return out
        assert rows is not None
        out = np.empty((len(rows), *spill.item_shape), dtype=np_dtype)
        if not len(rows):
            return out
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        breaks = np.nonzero(np.diff(srt) != 1)[0] + 1
        starts = np.concatenate([[0], breaks])
        ends = np.concatenate([breaks, [len(srt)]])
        sorted_out = np.empty_like(out)
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            spill.read_run(int(srt[s]), e - s, sorted_out[s:e])
        out[order] = sorted_out
        return out

    def __getitem__(self, index: Index) -> Tensor:
        rows, span, scalar = self._file_rows(index)
        arr = self._read(rows, span)
        t = to_float_pixels(torch.from_numpy(arr).to(self._device))
        return t[0] if scalar else t

    def take(self, index: Tensor | Sequence[int]) -> DiskStore:
        rows, span, _ = self._file_rows(
            index if isinstance(index, Tensor) else torch.as_tensor(index, dtype=torch.int64)
        )
        if rows is None:
            assert span is not None
            rows = np.arange(span.start, span.stop, dtype=np.int64)
        return DiskStore(self._spill, rows=torch.from_numpy(rows.copy()), device=self._device)

    def to(self, device: torch.device | str) -> DiskStore:
        return DiskStore(self._spill, rows=self._rows, device=device)


def as_store(x: Tensor | ImageStore, device: torch.device | str | None = None) -> ImageStore:
    """``x`` as a store (a tensor is wrapped, not copied), handing out pixels on ``device``."""
    store = (
        x
        if isinstance(x, ImageStore)
        else MemoryStore(x if x.dtype == torch.uint8 else x.to(torch.float32))
    )
    if device is not None and store.device != torch.device(device):
        store = store.to(device)
    return store


class _Collector:
    """Fills a store batch by batch: uint8 while every batch is exact, float32 after."""

    def __init__(self, storage: Storage, spill_dir: str | Path | None) -> None:
        self.storage = storage
        self.spill_dir = spill_dir
        self.uint8 = True
        self.parts: list[Tensor] = []
        self.spill: _SpillFile | None = None

    def add(self, x: Tensor) -> None:
        """A float32 pixel batch (stored as uint8 while every batch so far was exact)."""
        q = quantize(x) if self.uint8 else None
        if self.uint8 and q is None:
            self._to_float()
        self._write(q if q is not None else to_float_pixels(x))

    def add_uint8(self, q: Tensor) -> None:
        """A uint8 batch (exact by construction)."""
        self._write(q if self.uint8 else to_float_pixels(q))

    def _write(self, data: Tensor) -> None:
        if self.storage == "memory":
            self.parts.append(data)
            return
        if self.spill is None:
            self.spill = _SpillFile(
                self.spill_dir, data.dtype, tuple(int(d) for d in data.shape[1:])
            )
        self.spill.append(data)

    def _to_float(self) -> None:
        self.uint8 = False
        if self.storage == "memory":
            self.parts = [to_float_pixels(p) for p in self.parts]
            return
        old = self.spill
        if old is None:
            return
        new = _SpillFile(self.spill_dir, torch.float32, old.item_shape)
        chunk = 4096
        for start in range(0, old.rows, chunk):
            count = min(chunk, old.rows - start)
            buf = np.empty((count, *old.item_shape), dtype=np.uint8)
            old.read_run(start, count, buf)
            new.append(to_float_pixels(torch.from_numpy(buf)))
        self.spill = new

    def finish(self, item_shape: tuple[int, ...]) -> ImageStore:
        if self.storage == "memory":
            if not self.parts:
                return MemoryStore(torch.zeros(0, *item_shape))
            return MemoryStore(torch.cat(self.parts))
        if self.spill is None:
            self.spill = _SpillFile(self.spill_dir, torch.uint8, item_shape)
        return DiskStore(self.spill)


def collect(
    source: BatchSource | ImageDataset,
    *,
    num_classes: int | None = None,
    input_normalization: Normalization | None = None,
    storage: Storage = "memory",
    spill_dir: str | Path | None = None,
    where: str = "loader",
) -> tuple[ImageStore, Tensor]:
    """Read ``source`` once into an :class:`ImageStore` and a label tensor (CPU int64).

    Every batch is validated as :func:`~hardenkit.data.iter_batches` does. Pixels that are
    all exact multiples of 1/255 are stored as uint8 (see :func:`quantize`); ``storage="disk"``
    writes them to a temporary file under ``spill_dir`` (default: the system temp directory)
    instead of memory. An :class:`~hardenkit.data.ImageDataset` is used without a copy in
    memory (its uint8 or float32 tensor).
    """
    if storage not in ("memory", "disk"):
        raise DataError(f"storage must be 'memory' or 'disk', got {storage!r}.")
    if isinstance(source, ImageDataset):
        return _collect_dataset(source, num_classes, storage, spill_dir, where)
    col = _Collector(storage, spill_dir)
    labels: list[Tensor] = []
    item_shape: tuple[int, ...] = ()
    for x, y in iter_batches(
        source,
        num_classes=num_classes,
        input_normalization=input_normalization,
        device="cpu",
        where=where,
    ):
        item_shape = tuple(int(d) for d in x.shape[1:])
        col.add(x)
        labels.append(y)
    store = col.finish(item_shape)
    _log.debug("data.collect", where=where, **store.info())
    return store, torch.cat(labels)


def _collect_dataset(
    ds: ImageDataset,
    num_classes: int | None,
    storage: Storage,
    spill_dir: str | Path | None,
    where: str,
) -> tuple[ImageStore, Tensor]:
    x, y = ds.images, ds.labels.to(torch.int64)
    if len(y):
        validate_batch(ds.pixels()[:1] if x.dtype == torch.uint8 else x[:1], y[:1], where=where)
    if num_classes is not None and len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataError(f"{where}: labels must lie in [0, {num_classes}).")
    if storage == "memory":
        return MemoryStore(x if x.dtype == torch.uint8 else x.to(torch.float32)), y
    col = _Collector(storage, spill_dir)
    for i in range(0, len(y), 4096):
        part = x[i : i + 4096]
        if part.dtype == torch.uint8:
            col.add_uint8(part)
        else:
            col.add(part.to(torch.float32))
    return col.finish(tuple(int(d) for d in x.shape[1:])), y
