"""Example 02: your own model, your own trigger function, your own DataLoader.

hardenkit does not need its zoo, its attacks or its loaders. This script:
    * builds a plain ``nn.Sequential`` and wraps it with ``hk.with_normalization`` so that it
      takes [0, 1] pixels (normalization lives inside the model);
    * poisons 15% of the training set with a *plain Python function* as the trigger
      (``hk.data.PoisonedDataset``) and trains the model in place with
      ``hk.training.train_model``;
    * validates it through an ordinary ``torch.utils.data.DataLoader`` over an
      ``hk.ImageDataset``, passing the function (or an ``hk.CallableTrigger``) as trigger;
    * validates again through a loader that yields *normalized* tensors, declared once with
      ``RuntimeConfig(input_normalization=...)``: hardenkit converts them back to pixels at
      the boundary, stamps the trigger in pixel space, and gets the same numbers;
    * shows the error you get when a normalized loader is not declared.

The default run is tiny (4 classes, 400 training images, 5 epochs).

    python examples/02_custom_model_and_loader.py
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

import hardenkit as hk
from hardenkit.data import PoisonedDataset
from hardenkit.training import TrainConfig, train_model

# Per-channel statistics of the user's training pipeline (any values work; these are CIFAR-10's).
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
TARGET = 0


def red_cross(x: Tensor) -> Tensor:
    """The trigger: a 7-pixel red '+' near the top-left corner of [0, 1] NCHW pixels."""
    x = x.clone()
    for rows, cols in ((slice(2, 9), slice(5, 6)), (slice(5, 6), slice(2, 9))):
        x[:, 0, rows, cols] = 1.0
        x[:, 1:, rows, cols] = 0.0
    return x


def make_net(num_classes: int) -> nn.Module:
    """A user's own network: nothing hardenkit-specific in it."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, num_classes),
    )


class NormalizedView(Dataset[tuple[Tensor, int]]):
    """What many training pipelines hand out: ``(x - mean) / std`` instead of pixels."""

    def __init__(self, base: hk.ImageDataset) -> None:
        self.base = base
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        x, y = self.base[i]  # (C, H, W) float in [0, 1], int label
        return (x - self.mean) / self.std, y


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="tiny data and few epochs (default); --no-quick trains on 10 classes x 500 images",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    t_start = time.perf_counter()

    k, per_train, per_test, epochs = (4, 100, 25, 5) if args.quick else (10, 500, 100, 10)
    data = hk.make_synthetic_dataset(
        num_classes=k, train_per_class=per_train, test_per_class=per_test, seed=args.seed
    )
    runtime = hk.RuntimeConfig(device=args.device, seed=args.seed)

    # 1. Poison 15% of the non-target training images with the plain function.
    g = torch.Generator().manual_seed(args.seed)
    candidates = torch.nonzero(data.train.labels != TARGET).flatten()
    n_poison = round(0.15 * len(data.train))
    idx = candidates[torch.randperm(len(candidates), generator=g)[:n_poison]]
    poisoned = PoisonedDataset(data.train, red_cross, idx, torch.full_like(idx, TARGET))
    print(f"poisoned {len(poisoned.poison_indices)} of {len(poisoned)} training images")

    # 2. The user's model, made to take [0, 1] pixels, trained *in place* by train_model.
    torch.manual_seed(args.seed)
    model = hk.with_normalization(make_net(k), mean=MEAN, std=STD)
    history = train_model(
        model,
        poisoned.images,  # uint8 NCHW; train_model converts to [0, 1] floats per batch
        poisoned.labels,
        TrainConfig(epochs=epochs, batch_size=32, lr=0.05, augment=False),
        runtime=runtime,
        progress=lambda phase, step, total, **info: print(
            f"  {phase} epoch {step}/{total} loss={info['loss']:.3f} acc={info['acc']:.3f}"
        ),
    )
    print(f"trained in {history.seconds:.1f}s ({history.steps} steps)")

    # 3. Validate with a plain torch DataLoader over an ImageDataset (pixels in [0, 1]).
    pixel_loader = DataLoader(data.test, batch_size=64, shuffle=False)
    trigger = hk.CallableTrigger(red_cross, name="red-cross")  # or pass red_cross itself
    report = hk.Validator(model, num_classes=k, runtime=runtime).run(
        pixel_loader, trigger=trigger, target=TARGET
    )
    print("\npixel loader:")
    print(report.summary())

    # 4. A loader that yields normalized tensors: declare it once, get the same numbers.
    norm_loader = DataLoader(NormalizedView(data.test), batch_size=64, shuffle=False)
    declared = hk.RuntimeConfig(
        device=args.device,
        seed=args.seed,
        input_normalization=hk.Normalization(mean=MEAN, std=STD),  # or a {"mean", "std"} dict
    )
    report_norm = hk.Validator(model, num_classes=k, runtime=declared).run(
        norm_loader, trigger=red_cross, target=TARGET
    )
    print("\nnormalized loader + RuntimeConfig(input_normalization=...):")
    print(report_norm.summary())
    n = report.benign_accuracy.total
    assert abs(report.ba - report_norm.ba) <= 1 / n, "the two loaders should agree"
    assert abs((report.asr or 0) - (report_norm.asr or 0)) <= 1 / max(1, report.triggered_samples)

    # 5. Forgetting the declaration is caught on the first batch, with a hint.
    try:
        hk.Validator(model, runtime=runtime).run(norm_loader)
    except hk.DataError as exc:  # also a ValueError
        print(f"\nundeclared normalized loader -> DataError (exit code {exc.exit_code}):")
        print(f"  {exc}")
    else:  # pragma: no cover - the check above always fires for normalized data
        raise SystemExit("expected a DataError for an undeclared normalized loader")

    print(f"\ndone in {time.perf_counter() - t_start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
