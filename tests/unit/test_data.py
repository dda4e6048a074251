"""Unit tests for hardenkit.data: validation, datasets, sources, sampling, synthetic, poisoning."""

from __future__ import annotations

import io
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from hardenkit.config import Normalization
from hardenkit.data import (
    ImageDataset,
    PoisonedDataset,
    SyntheticSplits,
    TensorLoader,
    balanced_subsample,
    from_arrays,
    iter_batches,
    load_image_archive,
    load_image_folder,
    make_synthetic_dataset,
    materialize,
    stratified_indices,
    stratified_split,
    synthetic_prototypes,
    to_float_pixels,
    validate_batch,
)
from hardenkit.errors import DataError
from tests.conftest import CIFAR_ARCHIVE

HYPO = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def _batch(n: int = 4, c: int = 3, h: int = 8, w: int = 8, k: int = 3):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, c, h, w, generator=g)
    y = torch.arange(n) % k
    return x, y


# --------------------------------------------------------------------------------------
# validate_batch
# --------------------------------------------------------------------------------------


def test_validate_batch_accepts_valid_pixels() -> None:
    x, y = _batch()
    assert validate_batch(x, y, num_classes=3, image_shape=(3, 8, 8)) is None
    # tiny numerical overshoot within the tolerance is fine
    x2 = x.clone()
    x2[0, 0, 0, 0] = 1.0005
    x2[0, 0, 0, 1] = -0.0005
    validate_batch(x2, y)
    validate_batch(x.double(), y.to(torch.int32))


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (torch.rand(3, 8, 8), torch.tensor([0]), r"4-D.*Fix: add a batch axis"),
        (torch.rand(1, 2, 3, 8, 8), torch.tensor([0]), r"4-D"),
        (torch.rand(4, 8, 8, 3), torch.zeros(4, dtype=torch.long), "channels-last"),
        (torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8), torch.zeros(4).long(), "uint8"),
        (torch.randint(0, 2, (4, 3, 8, 8)), torch.zeros(4, dtype=torch.long), "float tensor"),
        (torch.zeros(0, 3, 8, 8), torch.zeros(0, dtype=torch.long), "empty batch"),
    ],
    ids=["3d", "5d", "channels-last", "uint8", "int64", "empty"],
)
def test_validate_batch_layout_errors(x: torch.Tensor, y: torch.Tensor, match: str) -> None:
    with pytest.raises(DataError, match=match):
        validate_batch(x, y)


def test_validate_batch_0_255_floats_mentions_255() -> None:
    x, y = _batch()
    with pytest.raises(DataError) as info:
        validate_batch(x * 255, y, where="train_loader")
    msg = str(info.value)
    assert msg.startswith("train_loader:")
    assert "[0, 1]" in msg
    assert "255" in info.value.hint  # type: ignore[operator]
    assert "divide by 255" in msg


def test_validate_batch_normalized_images() -> None:
    x, y = _batch()
    mean, std = 0.5, 0.25
    with pytest.raises(DataError) as info:
        validate_batch((x - mean) / std, y)
    assert "normalized" in str(info.value)
    assert "input_normalization" in str(info.value)
    assert "255" not in (info.value.hint or "")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_validate_batch_non_finite(bad: float) -> None:
    x, y = _batch()
    x[1, 2, 3, 4] = bad
    with pytest.raises(DataError, match="NaN or infinite"):
        validate_batch(x, y)


@pytest.mark.parametrize(
    ("y", "match"),
    [
        (torch.tensor([0, 1, 2, 3]), r"labels must lie in \[0, 3\), got range \[0, 3\]"),
        (torch.tensor([0, -1, 2, 1]), r"got range \[-1, 2\]"),
        (torch.eye(3)[torch.tensor([0, 1, 2, 1])].long(), "one-hot"),
        (torch.tensor([0.0, 1.0, 2.0, 1.0]), "integer class indices"),
        (torch.tensor([True, False, True, False]), "integer class indices"),
        (torch.tensor([0, 1, 2]), r"got shape \(3,\) for 4 images"),
        (torch.tensor(1), "1-D"),
        (torch.tensor([[0], [1], [2], [1]]), r"squeeze\(1\)"),
        (torch.tensor([0.0, 1.0, 2.0, 1.0]), r"y\.long\(\)"),
        (torch.tensor([0.5, 1.0, 2.0, 1.0]), r"integer tensor"),
    ],
    ids=[
        "too-high",
        "negative",
        "one-hot",
        "float",
        "bool",
        "short",
        "scalar",
        "column",
        "whole-floats",
        "fractional-floats",
    ],
)
def test_validate_batch_label_errors(y: torch.Tensor, match: str) -> None:
    x, _ = _batch()
    with pytest.raises(DataError, match=match):
        validate_batch(x, y, num_classes=3)


def test_validate_batch_image_shape_mismatch() -> None:
    x, y = _batch()
    with pytest.raises(DataError, match=r"expected images of shape \(3, 16, 16\)"):
        validate_batch(x, y, image_shape=(3, 16, 16))


# --------------------------------------------------------------------------------------
# iter_batches / materialize
# --------------------------------------------------------------------------------------


def test_iter_batches_yields_float32_int64() -> None:
    x, y = _batch(n=6)
    batches = [(x[:3].double(), y[:3].to(torch.int32)), [x[3:], y[3:].tolist()]]
    out = list(iter_batches(batches, num_classes=3))
    assert len(out) == 2
    for (xb, yb), (xe, ye) in zip(out, [(x[:3], y[:3]), (x[3:], y[3:])], strict=True):
        assert xb.dtype == torch.float32
        assert yb.dtype == torch.int64
        assert torch.allclose(xb, xe)
        assert torch.equal(yb, ye)


def test_iter_batches_empty_loader() -> None:
    with pytest.raises(DataError, match="yielded no batches"):
        list(iter_batches([]))
    with pytest.raises(DataError, match="yielded no batches"):
        materialize(iter([]))


@pytest.mark.parametrize("source", [5, None, torch.rand(2, 3, 4, 4)], ids=["int", "none", "tensor"])
def test_iter_batches_non_iterable_source(source: object) -> None:
    with pytest.raises(DataError, match="expected an iterable") as info:
        next(iter_batches(source))  # type: ignore[arg-type]
    assert type(source).__name__ in str(info.value)


@pytest.mark.parametrize(
    ("batch", "match"),
    [
        (torch.rand(2, 3, 4, 4), r"\(images, labels\) pair"),
        ((torch.rand(2, 3, 4, 4),), r"\(images, labels\) pair"),
        ((np.random.rand(2, 3, 4, 4), np.zeros(2)), "must be a torch.Tensor"),
    ],
    ids=["bare-tensor", "1-tuple", "numpy-images"],
)
def test_iter_batches_bad_batch_structure(batch: object, match: str) -> None:
    with pytest.raises(DataError, match=match):
        next(iter_batches([batch]))


@pytest.mark.parametrize(
    ("xk", "yk"),
    [("image", "label"), ("pixel_values", "labels"), ("img", "target"), ("x", "y")],
)
def test_iter_batches_dict_batches(xk: str, yk: str) -> None:
    x, y = _batch()
    xb, yb = next(iter_batches([{xk: x, yk: y, "meta": "ignored"}], num_classes=3))
    assert torch.equal(xb, x)
    assert torch.equal(yb, y)


def test_iter_batches_dict_with_unknown_keys() -> None:
    x, y = _batch()
    with pytest.raises(DataError) as info:
        next(iter_batches([{"picture": x, "cls": y}]))
    msg = str(info.value)
    assert "['cls', 'picture']" in msg
    assert "no image/label key" in msg
    with pytest.raises(DataError, match="no image/label key"):
        next(iter_batches([{"image": x}]))


def test_iter_batches_later_batch_checks() -> None:
    x, y = _batch()
    bad_shape = [(x, y), (torch.rand(4, 3, 16, 16), y)]
    with pytest.raises(DataError, match=r"batch 1: expected images of shape \(3, 8, 8\)"):
        list(iter_batches(bad_shape))
    misaligned = [(x, y), (x, y[:2])]
    with pytest.raises(DataError, match="batch 1"):
        list(iter_batches(misaligned))
    bad_labels = [(x, y), (x, torch.tensor([0, 1, 2, 5]))]
    with pytest.raises(DataError, match=r"batch 1: labels must lie in \[0, 3\)"):
        list(iter_batches(bad_labels, num_classes=3))
    assert len(list(iter_batches(bad_labels, num_classes=3, check_all_labels=False))) == 2


def test_iter_batches_accepts_image_dataset(tiny_synthetic: SyntheticSplits) -> None:
    batches = list(iter_batches(tiny_synthetic.test, num_classes=4))
    x = torch.cat([b[0] for b in batches])
    assert torch.equal(x, tiny_synthetic.test.pixels())


def test_input_normalization_converts_back_to_pixels() -> None:
    x, y = _batch()
    norm = Normalization(mean=(0.4914, 0.4822, 0.4465), std=(0.247, 0.243, 0.261))
    mean = torch.tensor(norm.mean).view(1, 3, 1, 1)
    std = torch.tensor(norm.std).view(1, 3, 1, 1)
    xn = (x - mean) / std
    with pytest.raises(DataError, match="normalized"):
        next(iter_batches([(xn, y)]))
    xb, yb = next(iter_batches([(xn, y)], input_normalization=norm, num_classes=3))
    assert torch.allclose(xb, x, atol=1e-5)
    assert torch.equal(yb, y)
    xm, _ = materialize([(xn, y), (xn, y)], input_normalization=norm)
    assert torch.allclose(xm, torch.cat([x, x]), atol=1e-5)
    # a channel-count mismatch is a DataError too
    with pytest.raises(DataError, match="3 channels but images have 1"):
        next(iter_batches([(torch.rand(2, 1, 4, 4), y[:2])], input_normalization=norm))


def test_materialize_concatenates_and_truncates() -> None:
    x, y = _batch(n=10)
    batches = [(x[i : i + 4], y[i : i + 4]) for i in range(0, 10, 4)]
    xa, ya = materialize(batches, num_classes=3)
    assert torch.equal(xa, x)
    assert torch.equal(ya, y)
    xs, ys = materialize(batches, max_samples=5)
    assert torch.equal(xs, x[:5])
    assert torch.equal(ys, y[:5])


def test_materialize_validates(tiny_synthetic: SyntheticSplits) -> None:
    x, y = _batch()
    with pytest.raises(DataError, match="255"):
        materialize([(x * 255, y)])
    with pytest.raises(DataError, match="one-hot"):
        materialize([(x, torch.eye(3)[y])])
    xd, yd = materialize(tiny_synthetic.test, num_classes=4)
    assert xd.dtype == torch.float32
    assert torch.equal(yd, tiny_synthetic.test.labels)
    with pytest.raises(DataError, match=r"\[0, 3\)"):
        materialize(tiny_synthetic.test, num_classes=3)
    with pytest.raises(DataError, match=r"\[0, 3\)"):
        materialize(tiny_synthetic.test, num_classes=3, max_samples=40)
    xs, _ = materialize(tiny_synthetic.test, max_samples=7)
    assert xs.shape == (7, 3, 32, 32)


# --------------------------------------------------------------------------------------
# from_arrays / ImageDataset
# --------------------------------------------------------------------------------------


def test_from_arrays_nhwc_uint8() -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(5, 8, 6, 3), dtype=np.uint8)
    ds = from_arrays(arr, np.array([0, 1, 2, 1, 0]))
    assert ds.images.shape == (5, 3, 8, 6)
    assert ds.images.dtype == torch.uint8
    assert ds.images.is_contiguous()
    assert np.array_equal(ds.images.permute(0, 2, 3, 1).numpy(), arr)
    assert ds.num_classes == 3
    assert ds.classes == ("0", "1", "2")
    x0, y0 = ds[1]
    assert y0 == 1
    assert x0.dtype == torch.float32
    assert torch.allclose(x0, torch.from_numpy(arr[1]).permute(2, 0, 1).float() / 255)


def test_from_arrays_nchw_float_and_tensor() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 8, 8, generator=g, dtype=torch.float64)
    ds = from_arrays(x.numpy(), [0, 1, 0, 1], classes=["cat", "dog"])
    assert ds.images.dtype == torch.float32
    assert torch.allclose(ds.images, x.float())
    assert ds.classes == ("cat", "dog")
    ds_t = from_arrays(x.float(), torch.tensor([0, 1, 0, 1]))
    assert torch.equal(ds_t.images, ds.images)
    assert ds_t.pixels().shape == (4, 3, 8, 8)


def test_from_arrays_grey_and_explicit_layout() -> None:
    grey = np.zeros((3, 5, 5), dtype=np.uint8)
    assert from_arrays(grey, [0, 0, 0]).images.shape == (3, 1, 5, 5)
    ambiguous = np.arange(2 * 3 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3, 3)
    nchw = from_arrays(ambiguous, [0, 1])  # auto: a channel axis of 3 in front means NCHW
    assert np.array_equal(nchw.images.numpy(), ambiguous)
    nhwc = from_arrays(ambiguous, [0, 1], layout="NHWC")
    assert np.array_equal(nhwc.images.numpy(), ambiguous.transpose(0, 3, 1, 2))
    with pytest.raises(DataError, match="layout"):
        from_arrays(ambiguous, [0, 1], layout="HWC")


@pytest.mark.parametrize(("lo", "hi"), [(0.0, 1.5), (-0.5, 0.5), (0.0, 255.0)])
def test_from_arrays_rejects_out_of_range_floats(lo: float, hi: float) -> None:
    x = np.full((2, 3, 4, 4), lo, dtype=np.float32)
    x[1] = hi
    with pytest.raises(DataError, match=r"float images must be pixels in \[0, 1\]") as info:
        from_arrays(x, [0, 1])
    assert info.value.hint is not None
    assert "255" in info.value.hint


def test_from_arrays_empty_float_array() -> None:
    # An empty float array must not crash in the pixel-range check.
    try:
        ds = from_arrays(np.zeros((0, 8, 8, 3), dtype=np.float32), np.zeros(0, dtype=np.int64))
    except DataError:
        return
    assert len(ds) == 0
    assert ds.images.shape == (0, 3, 8, 8)


@pytest.mark.parametrize(
    ("images", "labels", "match"),
    [
        (np.zeros((2, 3, 4, 4), dtype=np.int32), [0, 1], "uint8 or float"),
        (np.zeros((4, 4), dtype=np.uint8), [0], "4-D"),
        (np.zeros((1, 2, 3, 4, 4), dtype=np.uint8), [0], "4-D"),
        ([[[[0.0]]]], [0], "numpy array or tensor"),
        (np.zeros((2, 3, 4, 4), dtype=np.uint8), [0, 1, 1], "one entry per image"),
        (np.zeros((2, 3, 4, 4), dtype=np.uint8), [-1, 0], "labels must lie"),
    ],
    ids=["int32", "2d", "5d", "list", "label-count", "negative-label"],
)
def test_from_arrays_errors(images: object, labels: object, match: str) -> None:
    with pytest.raises(DataError, match=match):
        from_arrays(images, labels)  # type: ignore[arg-type]


def test_image_dataset_contract() -> None:
    imgs = torch.arange(4 * 3 * 2 * 2, dtype=torch.uint8).reshape(4, 3, 2, 2)
    ds = ImageDataset(imgs, torch.tensor([2, 0, 1, 2]), num_classes=4)
    assert ds.num_classes == 4
    assert ds.class_counts() == [1, 1, 2, 0]
    assert ds.image_shape == (3, 2, 2)
    assert len(ds) == 4
    assert "n=4" in repr(ds)
    sub = ds.subset([3, 1])
    assert torch.equal(sub.labels, torch.tensor([2, 0]))
    assert torch.equal(sub.images, imgs[[3, 1]])
    assert sub.classes == ds.classes
    x, y = ds.tensors()
    assert torch.allclose(x, imgs.float() / 255)
    assert torch.equal(y, ds.labels)
    with pytest.raises(DataError, match="uint8 or float32"):
        ImageDataset(imgs.double(), torch.zeros(4, dtype=torch.long))
    with pytest.raises(DataError, match=r"\(N, C, H, W\)"):
        ImageDataset(imgs[0], torch.zeros(3, dtype=torch.long))
    with pytest.raises(DataError, match=r"labels must lie in \[0, 2\)"):
        ImageDataset(imgs, torch.tensor([0, 1, 2, 0]), classes=["a", "b"])


def test_to_float_pixels() -> None:
    u = torch.tensor([0, 128, 255], dtype=torch.uint8)
    assert torch.allclose(to_float_pixels(u), torch.tensor([0.0, 128 / 255, 1.0]))
    assert u.dtype == torch.uint8
    assert u.tolist() == [0, 128, 255]
    assert to_float_pixels(torch.zeros(2, dtype=torch.float64)).dtype == torch.float32


# --------------------------------------------------------------------------------------
# load_image_folder / load_image_archive
# --------------------------------------------------------------------------------------

COLORS = {"cat": (200, 30, 30), "ant": (30, 200, 30), "bee": (30, 30, 200)}


def _png_bytes(color: tuple[int, int, int], size: tuple[int, int] = (6, 5), fmt: str = "PNG"):
    im = Image.new("RGB", (size[1], size[0]), color)  # PIL takes (W, H)
    buf = io.BytesIO()
    im.save(buf, format=fmt, quality=95) if fmt == "JPEG" else im.save(buf, format=fmt)
    return buf.getvalue()


def _make_folder(root: Path, sizes: dict[str, tuple[int, int]] | None = None) -> Path:
    for cls in ("cat", "ant", "bee"):  # deliberately not in sorted order
        d = root / cls
        d.mkdir(parents=True)
        for i in range(2):
            size = (sizes or {}).get(f"{cls}{i}", (6, 5))
            (d / f"img{i}.png").write_bytes(_png_bytes(COLORS[cls], size))
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "README.md").write_text("a file at the top level is ignored")
    return root


def test_load_image_folder(tmp_path: Path) -> None:
    ds = load_image_folder(_make_folder(tmp_path / "imgs"))
    assert ds.classes == ("ant", "bee", "cat")
    assert ds.images.shape == (6, 3, 6, 5)
    assert ds.images.dtype == torch.uint8
    assert ds.labels.tolist() == [0, 0, 1, 1, 2, 2]
    for i, label in enumerate(ds.labels.tolist()):
        color = COLORS[ds.classes[label]]
        assert ds.images[i, :, 0, 0].tolist() == list(color)


def test_load_image_folder_sizes_and_mode(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "mixed", sizes={"bee1": (9, 7)})
    with pytest.raises(DataError, match="different sizes") as info:
        load_image_folder(root)
    assert "image_size" in str(info.value)
    ds = load_image_folder(root, image_size=(4, 3))
    assert ds.images.shape == (6, 3, 4, 3)
    grey = load_image_folder(root, image_size=(4, 4), mode="L")
    assert grey.images.shape == (6, 1, 4, 4)


def test_load_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is not a directory"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="No images found"):
        load_image_folder(tmp_path / "empty")


def test_load_image_folder_corrupt_image(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "corrupt")
    (root / "ant" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"broken\.png"):
        load_image_folder(root)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _make_archive(path: Path, *, per_class: int = 3, test_classes=("ant", "cat")) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        d = tarfile.TarInfo("data/train")
        d.type = tarfile.DIRTYPE
        tar.addfile(d)
        for cls in ("cat", "ant"):
            for i in reversed(range(per_class)):
                _add(tar, f"data/train/{cls}/x{i}.jpg", _png_bytes(COLORS[cls], fmt="JPEG"))
        for cls in test_classes:
            _add(tar, f"data/test/{cls}/y0.png", _png_bytes(COLORS[cls]))
        _add(tar, "data/train/cat/notes.txt", b"ignored")
        _add(tar, "data/README.md", b"ignored")
    return path


def test_load_image_archive(tmp_path: Path) -> None:
    out = load_image_archive(_make_archive(tmp_path / "ds.tar.gz"))
    assert set(out) == {"train", "test"}
    train, test = out["train"], out["test"]
    assert train.classes == test.classes == ("ant", "cat")
    assert train.images.shape == (6, 3, 6, 5)
    assert test.images.shape == (2, 3, 6, 5)
    assert train.class_counts() == [3, 3]
    assert test.labels.tolist() == [0, 1]
    for ds in (train, test):
        for i, label in enumerate(ds.labels.tolist()):
            expected = torch.tensor(COLORS[ds.classes[label]], dtype=torch.float32)
            got = ds.images[i, :, 2, 2].float()
            assert torch.allclose(got, expected, atol=6), (got, expected)  # JPEG is lossy


def test_load_image_archive_limit_and_splits(tmp_path: Path) -> None:
    path = _make_archive(tmp_path / "ds.tar.gz", per_class=4)
    out = load_image_archive(path, limit_per_class=2)
    assert out["train"].class_counts() == [2, 2]
    assert out["test"].class_counts() == [1, 1]
    only_test = load_image_archive(path, splits=("test",), image_size=(3, 3))
    assert set(only_test) == {"test"}
    assert only_test["test"].images.shape == (2, 3, 3, 3)


def test_load_image_archive_errors(tmp_path: Path) -> None:
    path = _make_archive(tmp_path / "ds.tar.gz")
    with pytest.raises(DataError, match=r"no images under a 'val/<class>/' folder"):
        load_image_archive(path, splits=("train", "val"))
    with pytest.raises(DataError, match="does not exist"):
        load_image_archive(tmp_path / "missing.tar.gz")
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"\x1f\x8b\x08 this is not really gzip")
    with pytest.raises(DataError, match="Cannot read archive"):
        load_image_archive(garbage)
    mismatched = _make_archive(tmp_path / "mismatch.tar.gz", test_classes=("ant",))
    with pytest.raises(DataError, match="different class folders"):
        load_image_archive(mismatched)


@pytest.mark.cifar
def test_load_real_cifar_archive() -> None:
    out = load_image_archive(CIFAR_ARCHIVE, limit_per_class=5)
    expected = (
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    )
    for split in ("train", "test"):
        ds = out[split]
        assert ds.classes == expected
        assert ds.num_classes == 10
        assert ds.images.shape == (50, 3, 32, 32)
        assert ds.images.dtype == torch.uint8
        assert ds.class_counts() == [5] * 10
        assert ds.images.float().std() > 10  # real, varied images


# --------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------


def test_stratified_indices_fraction_and_per_class() -> None:
    labels = torch.arange(100) % 10
    idx = stratified_indices(labels, fraction=0.2, seed=3)
    assert len(idx) == 20
    assert torch.equal(idx, torch.sort(idx).values)
    assert len(torch.unique(idx)) == 20
    assert torch.bincount(labels[idx], minlength=10).tolist() == [2] * 10
    idx3 = stratified_indices(labels, per_class=3, seed=3)
    assert torch.bincount(labels[idx3], minlength=10).tolist() == [3] * 10
    assert torch.equal(idx, stratified_indices(labels, fraction=0.2, seed=3))
    assert not torch.equal(idx, stratified_indices(labels, fraction=0.2, seed=4))
    assert len(stratified_indices(labels, fraction=1.0)) == 100


def test_stratified_indices_fraction_is_proportional() -> None:
    labels = torch.cat([torch.zeros(50), torch.ones(10)]).long()
    idx = stratified_indices(labels, fraction=0.2)
    assert Counter(labels[idx].tolist()) == {0: 10, 1: 2}


def test_balanced_subsample_ignores_the_data_order() -> None:
    labels = torch.arange(1000) // 100  # class-sorted, as an ImageFolder or per-class shots
    idx = balanced_subsample(labels, 50, seed=1)
    assert len(idx) == 50
    assert len(set(idx.tolist())) == 50
    assert Counter(labels[idx].tolist()) == dict.fromkeys(range(10), 5)
    assert torch.equal(idx, torch.sort(idx).values)
    assert torch.equal(idx, balanced_subsample(labels, 50, seed=1))
    assert not torch.equal(idx, balanced_subsample(labels, 50, seed=2))
    # a small class gives all it has; the rest comes from the others
    skewed = torch.cat([torch.zeros(2), torch.ones(100), torch.full((100,), 2.0)]).long()
    counts = Counter(skewed[balanced_subsample(skewed, 30)].tolist())
    assert counts[0] == 2
    assert counts[1] + counts[2] == 28
    assert abs(counts[1] - counts[2]) <= 1
    assert torch.equal(balanced_subsample(labels[:7], 50), torch.arange(7))
    with pytest.raises(DataError, match="n must be"):
        balanced_subsample(labels, 0)


def test_stratified_indices_exclude() -> None:
    labels = torch.arange(100) % 10
    exclude = torch.arange(50)
    idx = stratified_indices(labels, per_class=5, exclude=exclude)
    assert bool((idx >= 50).all())
    assert len(idx) == 50
    with pytest.raises(DataError, match="class 0 has 5 eligible samples, 6 were requested"):
        stratified_indices(labels, per_class=6, exclude=exclude)
    idx_list = stratified_indices(labels, per_class=1, exclude=[0, 10, 20])
    assert not set(idx_list.tolist()) & {0, 10, 20}


def test_stratified_indices_errors() -> None:
    labels = torch.arange(20) % 2
    with pytest.raises(DataError, match="exactly one"):
        stratified_indices(labels)
    with pytest.raises(DataError, match="exactly one"):
        stratified_indices(labels, fraction=0.5, per_class=2)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(DataError, match="fraction"):
            stratified_indices(labels, fraction=bad)
    with pytest.raises(DataError, match="per_class"):
        stratified_indices(labels, per_class=0)
    with pytest.raises(DataError, match="class 0 has 10 eligible samples, 11 were requested"):
        stratified_indices(labels, per_class=11)
    with pytest.raises(DataError, match="class 2 has 0 eligible"):
        stratified_indices(labels, per_class=1, num_classes=3)
    with pytest.raises(DataError, match="empty"):
        stratified_indices(labels, fraction=0.01)


@st.composite
def _labels_and_exclude(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    labels = draw(st.lists(st.integers(0, 3), min_size=1, max_size=60))
    exclude = draw(st.lists(st.integers(0, len(labels) + 5), max_size=len(labels)))
    return labels, exclude


@HYPO
@given(
    data=_labels_and_exclude(),
    per_class=st.one_of(st.none(), st.integers(1, 6)),
    fraction=st.floats(0.01, 1.0),
    seed=st.integers(0, 1000),
)
def test_stratified_indices_properties(
    data: tuple[list[int], list[int]], per_class: int | None, fraction: float, seed: int
) -> None:
    labels_l, exclude = data
    labels = torch.tensor(labels_l)
    k = max(labels_l) + 1
    ex = set(exclude)
    eligible = [
        sum(1 for i, c in enumerate(labels_l) if c == cls and i not in ex) for cls in range(k)
    ]
    totals = [labels_l.count(cls) for cls in range(k)]
    want = [per_class if per_class is not None else round(fraction * t) for t in totals]
    kwargs = {"per_class": per_class} if per_class is not None else {"fraction": fraction}
    should_fail = any(e < w for e, w in zip(eligible, want, strict=True)) or sum(want) == 0
    if should_fail:
        with pytest.raises(DataError):
            stratified_indices(labels, seed=seed, exclude=exclude, **kwargs)  # type: ignore[arg-type]
        return
    idx = stratified_indices(labels, seed=seed, exclude=exclude, **kwargs)  # type: ignore[arg-type]
    got = idx.tolist()
    assert got == sorted(set(got)), "sorted and unique"
    assert not set(got) & ex, "never intersects exclude"
    counts = Counter(labels_l[i] for i in got)
    assert [counts.get(cls, 0) for cls in range(k)] == want, "balanced as requested"


@HYPO
@given(
    labels_l=st.lists(st.integers(0, 4), min_size=1, max_size=80),
    frac=st.floats(0.05, 0.95),
    seed=st.integers(0, 100),
)
def test_stratified_split_properties(labels_l: list[int], frac: float, seed: int) -> None:
    labels = torch.tensor(labels_l)
    keep, hold = stratified_split(labels, holdout_fraction=frac, seed=seed)
    k_set, h_set = set(keep.tolist()), set(hold.tolist())
    assert not k_set & h_set
    assert k_set | h_set == set(range(len(labels_l)))
    assert len(keep) + len(hold) == len(labels_l)
    assert keep.tolist() == sorted(k_set)
    assert hold.tolist() == sorted(h_set)
    for cls in set(labels_l):
        n = labels_l.count(cls)
        expected = min(max(round(frac * n), 1), n - 1) if n >= 2 else 0
        assert sum(1 for i in h_set if labels_l[i] == cls) == expected
        if n >= 2:
            assert any(labels_l[i] == cls for i in k_set), "every class keeps a sample"


def test_stratified_split_deterministic_and_validated() -> None:
    labels = torch.arange(40) % 4
    a = stratified_split(labels, holdout_fraction=0.3, seed=1)
    b = stratified_split(labels, holdout_fraction=0.3, seed=1)
    c = stratified_split(labels, holdout_fraction=0.3, seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[1], c[1])
    assert len(a[1]) == 12  # 3 of the 10 samples of each of the 4 classes
    assert torch.bincount(labels[a[1]]).tolist() == [3, 3, 3, 3]
    # min_per_class lifts tiny holdouts
    _, hold = stratified_split(labels, holdout_fraction=0.01, min_per_class=2)
    assert torch.bincount(labels[hold]).tolist() == [2, 2, 2, 2]
    for bad in (0.0, 1.0, -0.5, 2.0):
        with pytest.raises(DataError, match="holdout_fraction"):
            stratified_split(labels, holdout_fraction=bad)


def test_stratified_split_empty_labels() -> None:
    try:
        keep, hold = stratified_split(torch.empty(0, dtype=torch.long), holdout_fraction=0.5)
    except DataError:
        return
    assert len(keep) == 0
    assert len(hold) == 0


# --------------------------------------------------------------------------------------
# synthetic data
# --------------------------------------------------------------------------------------


def test_synthetic_dataset_shapes_and_balance(tiny_synthetic: SyntheticSplits) -> None:
    train, test = tiny_synthetic.train, tiny_synthetic.test
    assert train.images.shape == (160, 3, 32, 32)
    assert test.images.shape == (40, 3, 32, 32)
    assert train.images.dtype == test.images.dtype == torch.uint8
    assert train.class_counts() == [40] * 4
    assert test.class_counts() == [10] * 4
    assert train.classes == ("class_0", "class_1", "class_2", "class_3")
    assert torch.equal(train.labels, torch.sort(train.labels).values)
    pix = train.pixels()
    assert float(pix.min()) >= 0.0
    assert float(pix.max()) <= 1.0
    assert float(pix.std()) > 0.05  # not constant images
    # train and test share no image
    same = (train.images.flatten(1)[:, None] == test.images.flatten(1)[None]).all(-1)
    assert not bool(same.any())


def test_synthetic_dataset_determinism() -> None:
    kw = {"num_classes": 3, "train_per_class": 4, "test_per_class": 2, "image_size": 8}
    a = make_synthetic_dataset(**kw, seed=0)
    b = make_synthetic_dataset(**kw, seed=0)
    c = make_synthetic_dataset(**kw, seed=1)
    for split in ("train", "test"):
        assert torch.equal(getattr(a, split).images, getattr(b, split).images)
        assert torch.equal(getattr(a, split).labels, getattr(b, split).labels)
        assert not torch.equal(getattr(a, split).images, getattr(c, split).images)
    assert a.train.images.shape == (12, 3, 8, 8)
    grey = make_synthetic_dataset(**kw, channels=1)
    assert grey.train.images.shape == (12, 1, 8, 8)


def test_synthetic_prototypes_and_errors() -> None:
    p = synthetic_prototypes(5, image_size=16, seed=2)
    assert p.shape == (5, 3, 16, 16)
    assert float(p.min()) >= 0.1 - 1e-6
    assert float(p.max()) <= 0.9 + 1e-6
    assert torch.equal(p, synthetic_prototypes(5, image_size=16, seed=2))
    # prototypes are distinct per class
    flat = p.flatten(1)
    assert float(torch.cdist(flat, flat).add(torch.eye(5) * 1e9).min()) > 1.0
    with pytest.raises(DataError, match="num_classes"):
        make_synthetic_dataset(num_classes=1)
    with pytest.raises(DataError, match="per_class"):
        make_synthetic_dataset(num_classes=2, train_per_class=0)
    with pytest.raises(DataError, match="image_size"):
        make_synthetic_dataset(num_classes=2, image_size=4)


# --------------------------------------------------------------------------------------
# TensorLoader
# --------------------------------------------------------------------------------------


def _loader_data(n: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone()
    return images, torch.arange(n)


def test_tensor_loader_batches_and_len() -> None:
    images, labels = _loader_data()
    loader = TensorLoader(images, labels, batch_size=4)
    assert len(loader) == 3
    batches = list(loader)
    assert [len(y) for _, y in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([y for _, y in batches]), labels)
    x0 = batches[0][0]
    assert x0.dtype == torch.float32
    assert torch.allclose(x0[:, 0, 0, 0], torch.arange(4) / 255)
    dropped = TensorLoader(images, labels, batch_size=4, drop_last=True)
    assert len(dropped) == 2
    assert [len(y) for _, y in dropped] == [4, 4]
    assert len(TensorLoader(images, labels, batch_size=5, drop_last=True)) == 2
    assert len(TensorLoader(images, labels, batch_size=20)) == 1
    with pytest.raises(DataError, match="batch_size"):
        TensorLoader(images, labels, batch_size=0)


def test_tensor_loader_shuffle_is_seeded() -> None:
    images, labels = _loader_data(32)

    def epochs(seed: int) -> list[list[int]]:
        loader = TensorLoader(images, labels, batch_size=8, shuffle=True, seed=seed)
        return [torch.cat([y for _, y in loader]).tolist() for _ in range(2)]

    a, b, c = epochs(0), epochs(0), epochs(1)
    assert a == b
    assert a != c
    assert a[0] != a[1], "each epoch reshuffles"
    for order in a + c:
        assert sorted(order) == list(range(32)), "each epoch is a permutation"
    assert a[0] != list(range(32))
    # images stay paired with their labels
    loader = TensorLoader(images, labels, batch_size=8, shuffle=True, seed=5)
    for x, y in loader:
        assert torch.allclose(x[:, 0, 0, 0] * 255, y.float())


def test_image_dataset_loader(tiny_synthetic: SyntheticSplits) -> None:
    loader = tiny_synthetic.test.loader(batch_size=16, device="cpu")
    assert len(loader) == 3
    x, y = next(iter(loader))
    assert x.shape == (16, 3, 32, 32)
    assert x.device.type == "cpu"
    assert torch.equal(y, tiny_synthetic.test.labels[:16])


# --------------------------------------------------------------------------------------
# PoisonedDataset
# --------------------------------------------------------------------------------------


def _base(n: int = 10, dtype: torch.dtype = torch.uint8) -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 200, (n, 3, 4, 4), generator=g, dtype=torch.uint8)
    if dtype == torch.float32:
        imgs = imgs.float() / 255
    return ImageDataset(imgs, torch.arange(n) % 3, classes=["a", "b", "c"])


def _white(x: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(x)


def _plus(x: torch.Tensor) -> torch.Tensor:
    return x + 0.2


def test_poisoned_dataset_exact_indices() -> None:
    base = _base()
    before_images, before_labels = base.images.clone(), base.labels.clone()
    p = PoisonedDataset(base, _white, torch.tensor([7, 1, 4]), torch.tensor([0, 0, 2]))
    assert p.poison_indices.tolist() == [1, 4, 7]
    poisoned = {1: 0, 4: 2, 7: 0}
    for i in range(len(base)):
        if i in poisoned:
            assert int(p.labels[i]) == poisoned[i]
            assert bool((p.images[i] == 255).all())
        else:
            assert int(p.labels[i]) == int(before_labels[i])
            assert torch.equal(p.images[i], before_images[i])
    assert torch.equal(base.images, before_images), "base images untouched"
    assert torch.equal(base.labels, before_labels), "base labels untouched"
    assert torch.equal(p.original_labels, before_labels)
    assert p.base is base
    assert p.classes == base.classes
    assert p.poison_mask.tolist() == [i in poisoned for i in range(10)]
    assert p.clean_indices.tolist() == [0, 2, 3, 5, 6, 8, 9]
    assert len(p.noise_indices) == 0


def test_poisoned_dataset_float_base_and_batching() -> None:
    base = _base(dtype=torch.float32)
    p = PoisonedDataset(base, _plus, list(range(10)), [1] * 10, batch_size=3)
    assert p.images.dtype == torch.float32
    assert torch.allclose(p.images, (base.images + 0.2).clamp(0, 1))
    assert p.labels.tolist() == [1] * 10


def test_poisoned_dataset_noise_indices_keep_labels() -> None:
    base = _base()
    p = PoisonedDataset(
        base,
        _white,
        torch.tensor([0, 3]),
        torch.tensor([1, 1]),
        noise_indices=torch.tensor([5, 2]),
        noise_transform=_plus,
    )
    assert p.noise_indices.tolist() == [2, 5]
    for i in (2, 5):
        assert int(p.labels[i]) == int(base.labels[i])
        expected = ((base.images[i].float() / 255 + 0.2).clamp(0, 1) * 255).round()
        assert torch.equal(p.images[i].float(), expected)
    assert p.clean_indices.tolist() == [1, 4, 6, 7, 8, 9]
    assert not set(p.clean_indices.tolist()) & {0, 2, 3, 5}


@pytest.mark.parametrize(
    ("idx", "labels", "kwargs", "match"),
    [
        ([1, 1], [0, 0], {}, "duplicates"),
        ([10], [0], {}, "out of range"),
        ([-1], [0], {}, "out of range"),
        ([1, 2], [0], {}, "same length"),
        ([1], [5], {}, r"labels must lie in \[0, 3\)"),
        ([1], [0], {"noise_indices": [2]}, "without a noise_transform"),
        ([1], [0], {"noise_indices": [1], "noise_transform": _plus}, "disjoint"),
    ],
    ids=["dup", "too-big", "negative", "length", "bad-label", "no-transform", "overlap"],
)
def test_poisoned_dataset_rejects(
    idx: list[int], labels: list[int], kwargs: dict[str, object], match: str
) -> None:
    base = _base()
    before = base.images.clone()
    with pytest.raises(DataError, match=match):
        PoisonedDataset(base, _white, torch.tensor(idx), torch.tensor(labels), **kwargs)  # type: ignore[arg-type]
    assert torch.equal(base.images, before)


@pytest.mark.parametrize("bad", [10, -1], ids=["too-big", "negative"])
def test_poisoned_dataset_rejects_out_of_range_noise_indices(bad: int) -> None:
    with pytest.raises(DataError, match="out of range"):
        PoisonedDataset(
            _base(),
            _white,
            torch.tensor([0]),
            torch.tensor([1]),
            noise_indices=torch.tensor([bad]),
            noise_transform=_plus,
        )
