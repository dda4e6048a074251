"""Example 03: getting data into hardenkit, and drawing a clean budget disjoint from the poison.

What it shows:
    * ``hk.data.from_arrays``: NumPy arrays (uint8 NHWC here; float [0, 1] and NCHW also work)
      become an ``ImageDataset``; floats outside [0, 1] are refused with a hint;
    * ``hk.data.load_image_folder``: an ImageFolder tree ``<split>/<class>/<image>`` that this
      script writes as PNG files into a temporary directory;
    * ``hk.data.load_image_archive``: the same tree packed as ``.tar.gz`` (read in one pass);
    * ``hk.data.stratified_indices``: a class-balanced "clean budget" that never contains a
      poisoned index (``exclude=poisoned.poison_indices``), and ``stratified_split`` to hold
      out validation data from that budget;
    * ``hk.data.iter_batches``: the first-batch check that every hardenkit entry point runs.

No training happens here; the run takes a few seconds.

    python examples/03_data_sources.py
"""

from __future__ import annotations

import argparse
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import hardenkit as hk
from hardenkit.data import (
    from_arrays,
    iter_batches,
    load_image_archive,
    load_image_folder,
    stratified_indices,
    stratified_split,
)


def write_image_folder(root: Path, splits: dict[str, hk.ImageDataset]) -> None:
    """Write ``root/<split>/<class>/<index>.png`` (PNG is lossless, so pixels round-trip)."""
    for split, ds in splits.items():
        for i in range(len(ds)):
            cls = ds.classes[int(ds.labels[i])]
            path = root / split / cls / f"{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            hwc = ds.images[i].permute(1, 2, 0).numpy()  # uint8 (H, W, C)
            Image.fromarray(hwc).save(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="small images counts (default); --no-quick writes 10 classes x 100 images",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    k, per_train, per_test = (4, 40, 10) if args.quick else (10, 100, 20)

    # 1. Arrays: uint8 NHWC, as most image libraries produce them.
    rng = np.random.default_rng(args.seed)
    arr = rng.integers(0, 256, size=(12, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(12) % 3
    ds = from_arrays(arr, labels, classes=["cat", "dog", "fox"])
    print(f"from_arrays (uint8 NHWC): {ds!r}, per-class counts {ds.class_counts()}")
    x0, y0 = ds[0]
    print(
        f"  ds[0] -> image {tuple(x0.shape)} {x0.dtype} in [{x0.min():.2f}, {x0.max():.2f}], "
        f"label {y0} ({ds.classes[y0]})"
    )
    floats = from_arrays(arr.astype(np.float32) / 255.0, labels)  # float [0, 1] works too
    assert torch.equal((floats.images * 255).round().to(torch.uint8), ds.images)
    try:
        from_arrays(arr.astype(np.float32), labels)  # floats in [0, 255]: refused
    except hk.DataError as exc:
        print(f"  float pixels in [0, 255] -> DataError: {exc}")

    # 2. ImageFolder on disk, and 3. the same tree as a .tar.gz archive.
    source = hk.make_synthetic_dataset(
        num_classes=k, train_per_class=per_train, test_per_class=per_test, seed=args.seed
    )
    with tempfile.TemporaryDirectory(prefix="hardenkit-example-03-") as tmp:
        root = Path(tmp) / "images"
        write_image_folder(root, {"train": source.train, "test": source.test})
        train = load_image_folder(root / "train")
        test = load_image_folder(root / "test")
        print(f"\nImageFolder {root}/train: {train!r}, classes {list(train.classes)}")
        assert torch.equal(train.images, source.train.images), "PNG round trip is lossless"
        assert torch.equal(test.labels, source.test.labels)

        archive = Path(tmp) / "images.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(root / "train", arcname="train")
            tar.add(root / "test", arcname="test")
        splits = load_image_archive(archive)  # {"train": ..., "test": ...}
        print(f"archive {archive.name}: " + ", ".join(f"{s}={d!r}" for s, d in splits.items()))
        assert torch.equal(splits["train"].images, train.images)
        few = load_image_archive(archive, splits=("train",), limit_per_class=5)["train"]
        print(f"  limit_per_class=5 -> {len(few)} images, counts {few.class_counts()}")

    # 4. Poison the training set, then draw a clean budget that avoids every poisoned index.
    attack = hk.build_attack("badnets", target=0, poison_rate=0.1, seed=args.seed)
    poisoned = attack.poison(train)
    poison_idx = poisoned.poison_indices
    clean_idx = stratified_indices(train.labels, fraction=0.25, seed=args.seed, exclude=poison_idx)
    overlap = set(clean_idx.tolist()) & set(poison_idx.tolist())
    assert not overlap, "stratified_indices never returns an excluded index"
    budget = train.subset(clean_idx)
    print(
        f"\nbadnets poisoned {len(poison_idx)} images (labels -> {attack.config.target}); "
        f"clean budget {len(clean_idx)} images, per class {budget.class_counts()}, "
        f"overlap with poison: {len(overlap)}"
    )
    per_class = stratified_indices(train.labels, per_class=3, seed=1, exclude=poison_idx)
    print(f"  per_class=3 -> {len(per_class)} indices")
    keep, hold = stratified_split(budget.labels, holdout_fraction=0.2, seed=args.seed)
    print(
        f"  stratified_split of the budget: {len(keep)} to use, {len(hold)} held out for validation"
    )

    # 5. The loader contract: (x float [0, 1] NCHW, y int64); the first batch is checked.
    x, y = next(iter_batches(budget.loader(batch_size=16, shuffle=True, seed=args.seed)))
    print(f"\nfirst batch: x {tuple(x.shape)} {x.dtype}, y {tuple(y.shape)} {y.dtype}")
    try:
        next(iter_batches([(budget.images[:4], budget.labels[:4])]))  # raw uint8 images
    except hk.DataError as exc:
        print(f"  uint8 batch -> DataError: {exc}")

    print(f"\ndone in {time.perf_counter() - t_start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
