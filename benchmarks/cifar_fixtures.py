"""Protocol `cifar10-cpu`: build (and cache) the backdoored CIFAR-10 fixtures and report them.

    python -m benchmarks.cifar_fixtures                     # all fixtures of the protocol
    python -m benchmarks.cifar_fixtures --only badnets-0.1  # one fixture

Each fixture = one attack at one poison rate, trained from scratch on the poisoned CIFAR-10
train set with the zoo's ``cifar-cnn`` (chosen to fit the ~15 min / 2-core budget). The fixture
directory (keyed by a hash of its config) holds the model, the trigger, the poison indices and
the disjoint 5% clean budget (2,500 non-poisoned training images) that defences may use.
Results: ``benchmarks/results/cifar10_cpu_undefended.{json,md}``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

import hardenkit as hk
from hardenkit.data import stratified_indices
from hardenkit.io import load_model_weights, save_state_dict
from hardenkit.triggers import Trigger

from .common import CACHE, DEFAULT_ARCHIVE, config_hash, load_cifar10, peak_rss_mb, write_results

ARCH = "cifar-cnn"
ARCH_KW: dict[str, Any] = {"width": 16}
TRAIN = {
    "epochs": 25,
    "batch_size": 256,
    "optimizer": "sgd",
    "lr": 0.1,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "schedule": "onecycle",
    "augment": True,
}
ATTACKS_10 = ("badnets", "blended", "wanet", "sig")
FIXTURES: dict[str, dict[str, Any]] = {
    "badnets-0.1": {"attack": "badnets", "poison_rate": 0.1},
    "blended-0.1": {"attack": "blended", "poison_rate": 0.1},
    "wanet-0.1": {"attack": "wanet", "poison_rate": 0.1},
    "sig-0.1": {"attack": "sig", "poison_rate": 0.1},
    "badnets-0.01": {"attack": "badnets", "poison_rate": 0.01},
    "blended-0.01": {"attack": "blended", "poison_rate": 0.01},
}
# Second seeds of the 10 % attacks and clean models trained the same way (no poisoning):
# the Scanner protocol needs >= 2 seeds per attack and as many clean models.
FIXTURES.update({f"{a}-0.1-s1": {"attack": a, "poison_rate": 0.1, "seed": 1} for a in ATTACKS_10})
FIXTURES.update({f"clean-s{s}": {"attack": "clean", "seed": s} for s in range(8)})
# The residual family (issue 16): PreAct-ResNet-18 at width 8 (1/64 of the BackdoorBench
# network's compute; ~1.3x cifar-cnn's per epoch on this CPU), same recipe and attacks.
RESNET: dict[str, Any] = {"arch": "preact-resnet18", "arch_kwargs": {"width": 8}}
FIXTURES.update(
    {f"preact-{a}-0.1": {"attack": a, "poison_rate": 0.1, **RESNET} for a in ATTACKS_10}
)
FIXTURES.update(
    {
        f"preact-{a}-0.1-s1": {"attack": a, "poison_rate": 0.1, "seed": 1, **RESNET}
        for a in ATTACKS_10
    }
)
# A second seed of the 1 % Blended fixture (stop 48: the low-poison-rate check of the default)
FIXTURES["blended-0.01-s1"] = {"attack": "blended", "poison_rate": 0.01, "seed": 1}
CLEAN_FRACTION = 0.05
SEED = 0


def fixture_config(name: str) -> dict[str, Any]:
    spec = FIXTURES[name]
    seed = int(spec.get("seed", SEED))
    attack_config: dict[str, Any] | None = (
        None
        if spec["attack"] == "clean"
        else {"poison_rate": spec["poison_rate"], "target": 0, "seed": seed}
    )
    return {
        "protocol": "cifar10-cpu/v1",
        "attack": spec["attack"],
        "attack_config": attack_config,
        "arch": spec.get("arch", ARCH),
        "arch_kwargs": spec.get("arch_kwargs", ARCH_KW),
        "train": TRAIN,
        "seed": seed,
        "clean_fraction": CLEAN_FRACTION,
    }


def new_model(name: str) -> torch.nn.Module:
    """An untrained network of fixture ``name``'s architecture."""
    cfg = fixture_config(name)
    return hk.create_model(cfg["arch"], 10, **cfg["arch_kwargs"])


def is_clean(name: str) -> bool:
    """True for the clean (never poisoned) reference models of the Scanner protocol."""
    return bool(FIXTURES[name]["attack"] == "clean")


COMMITTED = Path(__file__).resolve().parent / "fixtures" / "cifar10_cpu"
"""Fixtures committed to the repository (model, trigger, poison and clean-budget indices,
``fixture.json`` with the command's measurements): no later run retrains them."""


def fixture_dir(name: str) -> Path:
    """The fixture's directory: the committed copy when there is one, else the local cache
    (where :func:`build_fixture` trains it; move it under :data:`COMMITTED` to commit it)."""
    leaf = f"{name}-{config_hash(fixture_config(name))}"
    return COMMITTED / leaf if (COMMITTED / leaf).is_dir() else CACHE / "fixtures" / leaf


def fixture_key(name: str) -> str:
    """A cache key for results computed on fixture ``name``: its directory name and a digest of
    its weights — a rebuilt fixture (same config, new weights) never re-uses old results."""
    d = fixture_dir(name)
    digest = hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()[:12]
    return f"{d.name}@{digest}"


def _print_progress(phase: str, step: int, total: int, **info: Any) -> None:
    extra = " ".join(
        f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items()
    )
    print(f"  [{time.strftime('%H:%M:%S')}] {phase} {step}/{total} {extra}", flush=True)


def clean_budget(
    bd: hk.BackdooredModel, labels: torch.Tensor, *, seed: int, fraction: float = CLEAN_FRACTION
) -> tuple[torch.Tensor, bool]:
    """The defender's clean budget: ``fraction`` of the training set, stratified by class.

    Returns ``(indices, excludes_poisoned)``. The budget holds *clean* copies of training
    images. It excludes every poisoned index, except for clean-label attacks (SIG at 10%
    poisons the whole target class, so no clean target-class image would be left): there, as
    in BackdoorBench, the defender gets the clean originals, and the caller records it.
    """
    excludes_poisoned = not bd.attack.clean_label
    idx = stratified_indices(
        labels,
        fraction=fraction,
        seed=seed,
        exclude=bd.poisoned.poison_indices if excludes_poisoned else None,
    )
    return idx, excludes_poisoned


def build_fixture(name: str, data: dict[str, hk.ImageDataset]) -> dict[str, Any]:
    """Train (or load from cache) one fixture and measure BA/ASR/RA on the full test set."""
    cfg = fixture_config(name)
    d = fixture_dir(name)
    done = d / "fixture.json"
    if done.is_file():
        info: dict[str, Any] = json.loads(done.read_text())
        info["cached"] = True
        return info
    seed = int(cfg["seed"])
    if cfg["attack"] == "clean":
        return _build_clean(name, cfg, data, d)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    bd = hk.make_backdoored_model(
        cfg["attack"],
        data["train"],
        arch=lambda: new_model(name),
        attack_config=cfg["attack_config"],
        train_config=TRAIN,
        runtime={"seed": seed, "device": "cpu"},
        progress=_print_progress,
    )
    train_s = time.perf_counter() - t0
    rep = hk.Validator(bd.model).run(
        data["test"].loader(batch_size=1000), trigger=bd.trigger, target=bd.target
    )
    clean_idx, excludes_poisoned = clean_budget(bd, data["train"].labels, seed=seed)
    d.mkdir(parents=True, exist_ok=True)
    save_state_dict(bd.model, d / "model.safetensors")
    bd.trigger.save(d / "trigger.safetensors")
    save_state_dict(
        {"poison_indices": bd.poisoned.poison_indices, "clean_indices": clean_idx},
        d / "indices.safetensors",
    )
    rep.save(d / "validation.json")
    info = {
        "fixture": name,
        "config": cfg,
        "ba": rep.ba,
        "asr": rep.asr,
        "ra": rep.ra,
        "train_seconds": train_s,
        "poisoned": len(bd.poisoned.poison_indices),
        "clean_budget": len(clean_idx),
        "clean_budget_excludes_poisoned": excludes_poisoned,
        "epochs": [e.__dict__ for e in bd.history.epochs],
        "cached": False,
    }
    done.write_text(json.dumps(info, indent=2))
    return info


def _build_clean(
    name: str, cfg: dict[str, Any], data: dict[str, hk.ImageDataset], d: Path
) -> dict[str, Any]:
    """A clean reference model: same architecture and recipe, unpoisoned training set."""
    from hardenkit.training import train_model

    seed = int(cfg["seed"])
    torch.manual_seed(seed)
    model = new_model(name)
    t0 = time.perf_counter()
    history = train_model(
        model,
        data["train"].images,
        data["train"].labels,
        TRAIN,
        runtime={"seed": seed, "device": "cpu"},
        progress=_print_progress,
        phase="train[clean]",
    )
    train_s = time.perf_counter() - t0
    model.eval()
    rep = hk.Validator(model).run(data["test"].loader(batch_size=1000))
    clean_idx = stratified_indices(data["train"].labels, fraction=CLEAN_FRACTION, seed=seed)
    d.mkdir(parents=True, exist_ok=True)
    save_state_dict(model, d / "model.safetensors")
    save_state_dict(
        {"poison_indices": torch.zeros(0, dtype=torch.int64), "clean_indices": clean_idx},
        d / "indices.safetensors",
    )
    rep.save(d / "validation.json")
    info = {
        "fixture": name,
        "config": cfg,
        "ba": rep.ba,
        "asr": None,
        "ra": None,
        "train_seconds": train_s,
        "poisoned": 0,
        "clean_budget": len(clean_idx),
        "clean_budget_excludes_poisoned": True,
        "epochs": [e.__dict__ for e in history.epochs],
        "cached": False,
    }
    (d / "fixture.json").write_text(json.dumps(info, indent=2))
    return info


def load_fixture(
    name: str,
) -> tuple[torch.nn.Module, Trigger | None, dict[str, torch.Tensor], dict[str, Any]]:
    """Load a cached fixture: (model, trigger, indices, info). Builds nothing.

    Clean reference fixtures (``clean-s*``) have no trigger (``None``).
    """
    d = fixture_dir(name)
    if not (d / "fixture.json").is_file():
        raise SystemExit(
            f"fixture {name} not built; run python -m benchmarks.cifar_fixtures --only {name}"
        )
    model = new_model(name)
    load_model_weights(model, d / "model.safetensors")
    from safetensors.torch import load_file

    return (
        model.eval(),
        Trigger.load(d / "trigger.safetensors") if (d / "trigger.safetensors").is_file() else None,
        load_file(str(d / "indices.safetensors")),
        json.loads((d / "fixture.json").read_text()),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    p.add_argument("--only", action="append", choices=sorted(FIXTURES), help="fixture(s) to build")
    p.add_argument(
        "--results",
        default="cifar10_cpu_undefended",
        help="results file name under benchmarks/results/ (default: %(default)s)",
    )
    args = p.parse_args(argv)
    names = args.only or [n for n in FIXTURES if "-s" not in n and "arch" not in FIXTURES[n]]
    data = load_cifar10(args.archive)
    rows = []
    for name in names:
        print(f"[{time.strftime('%H:%M:%S')}] fixture {name} ...", flush=True)
        info = build_fixture(name, data)
        rows.append(
            {
                "fixture": name,
                "arch": info["config"]["arch"],
                "attack": info["config"]["attack"],
                "poison_rate": (info["config"]["attack_config"] or {}).get("poison_rate", 0.0),
                "seed": info["config"]["seed"],
                "BA %": 100 * info["ba"],
                "ASR %": None if info["asr"] is None else 100 * info["asr"],
                "RA %": None if info["ra"] is None else 100 * info["ra"],
                "train s": info["train_seconds"],
                "cached": info["cached"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    cols = [
        "fixture",
        "arch",
        "attack",
        "poison_rate",
        "seed",
        "BA %",
        "ASR %",
        "RA %",
        "train s",
        "cached",
    ]
    out = write_results(
        args.results,
        rows,
        cols,
        {
            "protocol": "cifar10-cpu",
            "archs": sorted({fixture_config(n)["arch"] for n in names}),
            "train": TRAIN,
            "peak_rss_mb": peak_rss_mb(),
            "command": "python -m benchmarks.cifar_fixtures " + " ".join(argv or sys.argv[1:]),
        },
    )
    print(out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
