"""Which Neural Cleanse decision statistic survives models we did not build?

    python -m benchmarks.scan_statistic [--clean 4] [--backdoored 4] [--epochs 6]
    python -m benchmarks.scan_statistic --from-json benchmarks/results/scan_statistic.json

Trains short CIFAR-10 models the way a user would (a plain ``nn.Sequential`` with the
normalization inside, a small residual net, and the zoo's ``small-cnn``): clean ones, and
BadNets ones with a randomised patch (size 3-5, one of five positions, random / white / black /
checkerboard pattern, random target). Each model is scanned once by Neural Cleanse (the
``quick`` budget: 200 inversion images, 15 epochs, 20 % of the clean images held out); the
per-label mask L1 norms and the held-out attack rate of every recovered trigger are kept, so
every decision rule below is evaluated on the *same* inversions:

* ``mad-l1`` — the published rule: MAD anomaly index of the raw L1 norms >= 2;
* ``mad-log-l1`` — the same index on log L1 norms;
* ``ratio`` — the smallest norm is at most ``median / 3`` *and* its trigger flips >= 90 % of
  held-out clean images;
* ``mad-log-l1+asr`` — ``mad-log-l1`` and the flagged trigger flips >= 90 % of held-out images.

A rule "detects" a backdoored model only when it flags the true target; a BadNets model whose
real trigger stayed under 80 % ASR (not planted by the short training) is not scored. The rules
and their thresholds were fixed before any of these models was scanned (nothing is tuned on
them); rows per architecture and for all models. Writes
``benchmarks/results/scan_statistic.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import hardenkit as hk
from hardenkit.data import stratified_indices
from hardenkit.models.normalization import CIFAR10_MEAN, CIFAR10_STD, Normalize
from hardenkit.scan.anomaly import log_values, mad_anomaly

from .common import RESULTS, load_cifar10, write_results

LOCATIONS = ["bottom-right", "bottom-left", "top-left", "top-right", "center"]
PATTERNS = ["random", "white", "black", "checkerboard"]


def user_sequential() -> nn.Module:
    """What a user writes: normalization as the first layer, no hardenkit base class."""
    return nn.Sequential(
        Normalize(CIFAR10_MEAN, CIFAR10_STD),
        nn.Conv2d(3, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.b1(self.c1(x)))
        return torch.relu(self.b2(self.c2(out)) + self.skip(x))


class TinyResNet(nn.Module):
    """A small residual net (three stages), normalization inside."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = Normalize(CIFAR10_MEAN, CIFAR10_STD)
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32))
        self.layers = nn.Sequential(_Block(32, 32, 1), _Block(32, 64, 2), _Block(64, 64, 2))
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layers(torch.relu(self.stem(self.norm(x))))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))


ARCHS: dict[str, Any] = {
    "user-sequential": user_sequential,
    "tiny-resnet": TinyResNet,
    "small-cnn": "small-cnn",
}


# --- decision rules on one model's per-label statistics ---------------------------------------


def rule_flags(l1: list[float], asr: list[float], rule: str) -> list[int]:
    """Labels flagged by ``rule`` from per-label mask L1 norms and held-out trigger ASRs."""
    if rule == "mad-l1":
        return mad_anomaly(l1, side="low", threshold=2.0).flagged
    if rule == "mad-log-l1":
        return mad_anomaly(log_values(l1), side="low").flagged
    if rule == "mad-log-l1+asr":
        return [y for y in rule_flags(l1, asr, "mad-log-l1") if asr[y] >= 0.9]
    if rule == "ratio":
        med = sorted(l1)[len(l1) // 2]
        y = min(range(len(l1)), key=lambda i: l1[i])
        return [y] if l1[y] <= med / 3 and asr[y] >= 0.9 else []
    raise ValueError(rule)


RULES = ["mad-l1", "mad-log-l1", "ratio", "mad-log-l1+asr"]

MIN_PLANTED_ASR = 0.8
"""A BadNets model counts as backdoored only when its real trigger reached this ASR (short
training does not always plant it); the others are listed, not scored."""


def evaluate(models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    archs = sorted({m["arch"] for m in models})
    for split in [*archs, "all"]:
        part = [m for m in models if split in ("all", m["arch"])]
        bd = [m for m in part if m["target"] is not None and m["true_asr"] >= MIN_PLANTED_ASR]
        clean = [m for m in part if m["target"] is None]
        for rule in RULES:
            tp = sum(m["target"] in rule_flags(m["l1"], m["trigger_asr"], rule) for m in bd)
            fp = sum(bool(rule_flags(m["l1"], m["trigger_asr"], rule)) for m in clean)
            rows.append(
                {
                    "models": split,
                    "rule": rule,
                    "backdoored": len(bd),
                    "detected (right target)": tp,
                    "TPR %": 100 * tp / len(bd) if bd else None,
                    "clean": len(clean),
                    "flagged clean": fp,
                    "FPR %": 100 * fp / len(clean) if clean else None,
                }
            )
    return rows


# --- training and scanning -------------------------------------------------------------------


def _one(
    arch: str,
    seed: int,
    backdoored: bool,
    data: dict[str, hk.ImageDataset],
    args: argparse.Namespace,
) -> dict[str, Any]:
    rng = random.Random(1000 * seed + (1 if backdoored else 0) + 7 * list(ARCHS).index(arch))
    train_idx = stratified_indices(data["train"].labels, per_class=args.train_per_class, seed=seed)
    train = data["train"].subset(train_idx)
    test = data["test"].subset(stratified_indices(data["test"].labels, per_class=100, seed=0))
    attack: dict[str, Any] | None = None
    target: int | None = None
    if backdoored:
        target = rng.randrange(10)
        attack = {
            "target": target,
            "poison_rate": 0.1,
            "patch_size": rng.choice([3, 4, 5]),
            "location": rng.choice(LOCATIONS),
            "pattern": rng.choice(PATTERNS),
            "margin": rng.choice([0, 1, 2]),
            "seed": seed,
        }
    factory = ARCHS[arch]
    tc = hk.TrainConfig(epochs=args.epochs, batch_size=128, lr=0.05, augment=True)
    rt = {"seed": seed, "device": "cpu", "progress": "off"}
    t0 = time.perf_counter()
    if attack is not None:
        bd = hk.make_backdoored_model(
            "badnets",
            train,
            test=test,
            arch=factory,
            attack_config=attack,
            train_config=tc,
            runtime=rt,
        )
        model, ba, true_asr = bd.model, bd.metrics["ba"], bd.metrics["asr"]
    else:
        torch.manual_seed(seed)
        model = hk.create_model(factory, 10) if isinstance(factory, str) else factory()
        hk.train_model(model, *train.tensors(), tc, runtime=rt)
        ba = hk.Validator(model, runtime=rt).run(test.loader()).ba
        true_asr = None
    train_s = time.perf_counter() - t0
    # clean images for the scan: training images the model never saw in this subset
    used = set(train_idx.tolist())
    pool = [i for i in range(len(data["train"])) if i not in used]
    pool_labels = data["train"].labels[pool]
    pick = stratified_indices(pool_labels, per_class=args.scan_per_class, seed=seed)
    clean = data["train"].subset([pool[int(i)] for i in pick])
    t0 = time.perf_counter()
    cfg = hk.scan.scan_config_for_budget(args.budget, {"detectors": ["neural-cleanse"]})
    scan = hk.Scanner(model.eval(), 10, config=cfg, runtime=rt).run(clean.loader())
    scan_s = time.perf_counter() - t0
    rows = sorted(scan.report.classes, key=lambda r: r.label)
    return {
        "arch": arch,
        "seed": seed,
        "target": target,
        "attack": attack,
        "ba": ba,
        "true_asr": true_asr,
        "l1": [float(r.mask_l1 or 0.0) for r in rows],
        "trigger_asr": [float(r.trigger_asr or 0.0) for r in rows],
        "published_flags": scan.flagged_labels,
        "train_s": train_s,
        "scan_s": scan_s,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--clean", type=int, default=2, help="clean models per architecture")
    p.add_argument("--backdoored", type=int, default=2, help="BadNets models per architecture")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--train-per-class", type=int, default=600)
    p.add_argument("--scan-per-class", type=int, default=30)
    p.add_argument("--budget", default="quick")
    p.add_argument("--from-json", type=Path, default=None, help="re-evaluate saved inversions")
    p.add_argument("--name", default="scan_statistic")
    args = p.parse_args(argv)
    if argv is None:
        import sys

        argv = sys.argv[1:]
    if args.from_json is not None:
        models = json.loads(args.from_json.read_text())["models"]
    else:
        data = load_cifar10()
        partial = RESULTS / f"{args.name}.partial.json"
        done = json.loads(partial.read_text()) if partial.is_file() else []
        models = []
        for arch in args.archs.split(","):
            for backdoored, count in ((False, args.clean), (True, args.backdoored)):
                for seed in range(count):
                    key = (arch, seed, backdoored)
                    old = [
                        d for d in done if (d["arch"], d["seed"], d["target"] is not None) == key
                    ]
                    if old:  # resumed from an interrupted run with the same settings
                        models.append(old[0])
                        continue
                    m = _one(arch, seed, backdoored, data, args)
                    models.append(m)
                    kind = f"target {m['target']}" if backdoored else "clean"
                    print(
                        f"{arch:16s} seed {seed} {kind:9s} BA {100 * m['ba']:.1f}% "
                        f"ASR {m['true_asr']} flags {m['published_flags']} "
                        f"l1 {[round(v) for v in m['l1']]} "
                        f"({m['train_s']:.0f}+{m['scan_s']:.0f}s)",
                        flush=True,
                    )
                    (RESULTS / f"{args.name}.partial.json").write_text(json.dumps(models))
    rows = evaluate(models)
    partial = RESULTS / f"{args.name}.partial.json"
    if partial.is_file():
        partial.unlink()
    cmd = "python -m benchmarks.scan_statistic " + " ".join(argv if argv is not None else [])
    write_results(args.name, rows, list(rows[0]), {"command": cmd.strip(), "models": models})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
