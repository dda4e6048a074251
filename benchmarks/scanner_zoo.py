"""Neural Cleanse and PixelBackdoor on a zoo of CIFAR-10 models we did not tune on.

    python -m benchmarks.scanner_zoo                       # train (or load) and scan every model
    python -m benchmarks.scanner_zoo --archs small-cnn     # one architecture
    python -m benchmarks.scanner_zoo --from-json benchmarks/results/scanner_zoo.json

Models are trained the way a user would (``benchmarks.scan_statistic``'s plain
``nn.Sequential`` with the normalization inside, its small residual net, and the zoo's
``small-cnn``; 6 epochs on 600 images per class): ``--clean`` clean models per architecture
and one model per attack — BadNets with a randomised patch (size 3-5, one of five positions,
random / white / black / checkerboard pattern), Blended with a random noise pattern and a random
alpha in [0.1, 0.2], SIG with a random frequency in {4, 6, 8} — each with a random target.
Trained weights are written to ``benchmarks/fixtures/scanner_zoo/<id>.safetensors`` (with
``index.json``: arch, attack, BA, ASR) and re-used on the next run, so a later session re-scans
without re-training.

Each model is scanned once with ``detectors=["neural-cleanse", "pixel"]`` at the ``quick``
budget (Neural Cleanse: 200 inversion images, 15 epochs; PixelBackdoor: its defaults, 100
images x up to 100 epochs); every per-label statistic is kept, so the rules below are all
evaluated on the same inversions (none of their thresholds was tuned on these models):

* ``nc:mad-l1`` — the published rule (MAD index of the raw mask L1 norms >= 2);
* ``nc:mad-log-l1`` — the same index on log L1 norms;
* ``pixel:log-pixels`` / ``pixel:log-l1`` — PixelBackdoor's trigger sizes (perturbed pixels /
  L1), MAD index on their logs >= 2, only labels whose trigger reached the attack threshold;
* ``nc-log+pixel`` — either ``nc:mad-log-l1`` or ``pixel:log-pixels`` flags (the scanner's
  ``combine="any"``).

A backdoored model counts only when its real trigger reached 80 % ASR; a rule "detects" it
only when it flags the true target. AUROC: of each rule's model-level evidence (its MAD
anomaly index; the combination takes the larger), backdoored vs clean models — how well a
threshold *could* separate them. Writes ``benchmarks/results/scanner_zoo.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

import hardenkit as hk
from hardenkit.data import stratified_indices
from hardenkit.scan.anomaly import log_values, mad_anomaly

from .common import RESULTS, ROOT, load_cifar10, write_results
from .scan_statistic import ARCHS, LOCATIONS, MIN_PLANTED_ASR, PATTERNS

FIXTURES = ROOT / "fixtures" / "scanner_zoo"
ATTACKS = ("badnets", "blended", "sig")


def _attack_config(attack: str, rng: random.Random, seed: int) -> dict[str, Any]:
    target = rng.randrange(10)
    if attack == "badnets":
        return {
            "target": target,
            "patch_size": rng.choice([3, 4, 5]),
            "location": rng.choice(LOCATIONS),
            "pattern": rng.choice(PATTERNS),
            "margin": rng.choice([0, 1, 2]),
            "seed": seed,
        }
    if attack == "blended":
        return {
            "target": target,
            "alpha": round(rng.uniform(0.1, 0.2), 3),
            "pattern_seed": rng.randrange(10_000),
            "seed": seed,
        }
    if attack == "sig":
        return {"target": target, "frequency": float(rng.choice([4, 6, 8])), "seed": seed}
    raise ValueError(attack)


def _model(arch: str) -> torch.nn.Module:
    factory = ARCHS[arch]
    return hk.create_model(factory, 10) if isinstance(factory, str) else factory()


def _train_or_load(
    arch: str, attack: str, seed: int, data: dict[str, hk.ImageDataset], args: argparse.Namespace
) -> tuple[torch.nn.Module, dict[str, Any]]:
    mid = f"{arch}-{attack}-{seed}"
    index_path = FIXTURES / "index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    if mid in index and (FIXTURES / f"{mid}.safetensors").is_file():
        model = _model(arch)
        model.load_state_dict(load_file(FIXTURES / f"{mid}.safetensors"))
        return model.eval(), index[mid]
    rng = random.Random(f"{arch}/{attack}/{seed}")
    train_idx = stratified_indices(data["train"].labels, per_class=args.train_per_class, seed=seed)
    train = data["train"].subset(train_idx)
    test = data["test"].subset(stratified_indices(data["test"].labels, per_class=100, seed=0))
    tc = hk.TrainConfig(epochs=args.epochs, batch_size=128, lr=0.05, augment=True)
    rt = {"seed": seed, "device": "cpu", "progress": "off"}
    t0 = time.perf_counter()
    attack_cfg: dict[str, Any] | None = None
    if attack == "clean":
        torch.manual_seed(seed)
        model = _model(arch)
        hk.train_model(model, *train.tensors(), tc, runtime=rt)
        ba, asr = hk.Validator(model, runtime=rt).run(test.loader()).ba, None
    else:
        attack_cfg = _attack_config(attack, rng, seed)
        factory = ARCHS[arch]
        bd = hk.make_backdoored_model(
            attack, train, test=test, arch=factory, attack_config=attack_cfg,
            train_config=tc, runtime=rt,
        )  # fmt: skip
        model, ba, asr = bd.model, bd.metrics["ba"], bd.metrics["asr"]
    meta = {
        "arch": arch,
        "attack": attack,
        "seed": seed,
        "attack_config": attack_cfg,
        "target": None if attack_cfg is None else attack_cfg["target"],
        "ba": ba,
        "true_asr": asr,
        "train_s": time.perf_counter() - t0,
        "train_images": len(train),
        "epochs": args.epochs,
        "command": "python -m benchmarks.scanner_zoo",
    }
    FIXTURES.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              FIXTURES / f"{mid}.safetensors")  # fmt: skip
    index[mid] = meta
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return model.eval(), meta


def _scan(
    model: torch.nn.Module, seed: int, data: dict[str, hk.ImageDataset], args: argparse.Namespace
) -> dict[str, Any]:
    # clean images for the scan: from a fixed random half of the CIFAR-10 test split (never
    # trained on; the other half is free for BA/ASR)
    pool = torch.randperm(len(data["test"]), generator=torch.Generator().manual_seed(123))
    half = pool[len(pool) // 2 :].sort().values
    pick = stratified_indices(data["test"].labels[half], per_class=args.scan_per_class, seed=seed)
    clean = data["test"].subset(half[pick])
    cfg = hk.scan.scan_config_for_budget(args.budget, {"detectors": ["neural-cleanse", "pixel"]})
    rt = {"seed": seed, "device": "cpu", "progress": "off"}
    t0 = time.perf_counter()
    scan = hk.Scanner(model, 10, config=cfg, runtime=rt).run(clean.loader())
    nc = next(d for d in scan.report.detectors if d.detector == "neural-cleanse")
    px = next(d for d in scan.report.detectors if d.detector == "pixel")
    return {
        "nc_l1": [c.value for c in nc.classes],
        "px_pixels": [float(c.extra["pixels"]) for c in px.classes],
        "px_l1": [float(c.extra["l1"]) for c in px.classes],
        "px_reached": [bool(c.extra["reached_threshold"]) for c in px.classes],
        "trigger_asr": [float(c.trigger_asr or 0.0) for c in scan.report.classes],
        "nc_s": nc.seconds,
        "px_s": px.seconds,
        "scan_s": time.perf_counter() - t0,
    }


def _mm_bd(model: torch.nn.Module, seed: int) -> dict[str, Any]:
    """Data-free MM-BD at its reference defaults (no clean images)."""
    rt = {"seed": seed, "device": "cpu", "progress": "off"}
    cfg = {"detectors": ["mm-bd"]}
    t0 = time.perf_counter()
    scan = hk.Scanner(model, 10, config=cfg, runtime=rt, input_shape=(3, 32, 32)).run()
    det = scan.report.detectors[0]
    return {
        "mm_bd_p": det.p_value,
        "mm_bd_flags": list(det.flagged_labels),
        "mm_bd_margins": [c.value for c in det.classes],
        "mm_bd_s": time.perf_counter() - t0,
    }


def _pixel_flags(sizes: list[float], reached: list[bool]) -> list[int]:
    return [y for y in mad_anomaly(log_values(sizes), side="low").flagged if reached[y]]


def rule_flags(m: dict[str, Any], rule: str) -> list[int]:
    if rule == "nc:mad-l1":
        return mad_anomaly(m["nc_l1"], side="low").flagged
    if rule == "nc:mad-log-l1":
        return mad_anomaly(log_values(m["nc_l1"]), side="low").flagged
    if rule == "pixel:log-pixels":
        return _pixel_flags(m["px_pixels"], m["px_reached"])
    if rule == "pixel:log-l1":
        return _pixel_flags(m["px_l1"], m["px_reached"])
    if rule == "nc-log+pixel":
        out = rule_flags(m, "nc:mad-log-l1")
        return out + [y for y in rule_flags(m, "pixel:log-pixels") if y not in out]
    if rule == "mm-bd":
        return list(m.get("mm_bd_flags", []))
    raise ValueError(rule)


RULES = ["nc:mad-l1", "nc:mad-log-l1", "pixel:log-pixels", "pixel:log-l1", "nc-log+pixel"]


def rule_evidence(m: dict[str, Any], rule: str) -> float:
    """The model-level evidence behind ``rule`` (its MAD anomaly index; the combination takes
    the larger of its two): what a threshold other than 2 would be compared with."""

    def index(values: list[float], reached: list[bool] | None = None) -> float:
        stats = mad_anomaly(values, side="low")
        on = [i for i, v in enumerate(values) if v < stats.median]
        if reached is not None:
            on = [i for i in on if reached[i]]
        return max((stats.per_label[i] for i in on), default=0.0)

    if rule == "nc:mad-l1":
        return index(m["nc_l1"])
    if rule == "nc:mad-log-l1":
        return index(log_values(m["nc_l1"]))
    if rule == "pixel:log-pixels":
        return index(log_values(m["px_pixels"]), m["px_reached"])
    if rule == "pixel:log-l1":
        return index(log_values(m["px_l1"]), m["px_reached"])
    if rule == "nc-log+pixel":
        return max(rule_evidence(m, "nc:mad-log-l1"), rule_evidence(m, "pixel:log-pixels"))
    if rule == "mm-bd":
        return -math.log10(max(float(m["mm_bd_p"]), 1e-300))
    raise ValueError(rule)


def auroc(pos: list[float], neg: list[float]) -> float | None:
    """Probability that a backdoored model's evidence exceeds a clean one's (ties count 1/2)."""
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def evaluate(models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    groups = sorted({m["attack"] for m in models if m["attack"] != "clean"})
    rules = [*RULES, "mm-bd"] if all("mm_bd_p" in m for m in models) else RULES
    for split in [*groups, "all"]:
        bd = [
            m
            for m in models
            if m["attack"] != "clean"
            and split in ("all", m["attack"])
            and (m["true_asr"] or 0) >= MIN_PLANTED_ASR
        ]
        clean = [m for m in models if m["attack"] == "clean"]
        for rule in rules:
            tp = sum(m["target"] in rule_flags(m, rule) for m in bd)
            fp = sum(bool(rule_flags(m, rule)) for m in clean)
            rows.append(
                {
                    "attack": split,
                    "rule": rule,
                    "backdoored": len(bd),
                    "detected (right target)": tp,
                    "TPR %": 100 * tp / len(bd) if bd else None,
                    "clean": len(clean),
                    "flagged clean": fp,
                    "FPR %": 100 * fp / len(clean) if clean else None,
                    "AUROC": auroc(
                        [rule_evidence(m, rule) for m in bd],
                        [rule_evidence(m, rule) for m in clean],
                    ),
                    "max clean index": max((rule_evidence(m, rule) for m in clean), default=None),
                }
            )
    return rows


def per_model_table(models: list[dict[str, Any]]) -> str:
    rules = [*RULES, "mm-bd"] if all("mm_bd_p" in m for m in models) else RULES
    cols = ["model", "BA %", "ASR %", "target", *rules, "NC s", "pixel s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for m in models:
        asr = "" if m["true_asr"] is None else f"{100 * m['true_asr']:.1f}"
        cells = [
            f"{m['arch']}/{m['attack']}/{m['seed']}",
            f"{100 * m['ba']:.1f}",
            asr,
            "" if m["target"] is None else str(m["target"]),
            *[str(rule_flags(m, r)) for r in rules],
            f"{m['nc_s']:.0f}",
            f"{m['px_s']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--attacks", default=",".join(ATTACKS))
    p.add_argument("--clean", type=int, default=3, help="clean models per architecture")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--train-per-class", type=int, default=600)
    p.add_argument("--scan-per-class", type=int, default=30)
    p.add_argument("--budget", default="quick")
    p.add_argument("--from-json", type=Path, default=None, help="re-evaluate saved statistics")
    p.add_argument("--name", default="scanner_zoo")
    p.add_argument(
        "--mm-bd",
        action="store_true",
        help="also run data-free MM-BD (reference defaults) on every model; with --from-json, "
        "on the saved weights of the models that lack it",
    )
    args = p.parse_args(argv)
    shown = list(argv) if argv is not None else __import__("sys").argv[1:]
    if args.from_json is not None:
        models = json.loads(args.from_json.read_text())["models"]
        if args.mm_bd:
            index = json.loads((FIXTURES / "index.json").read_text())
            for m in models:
                if "mm_bd_p" in m:
                    continue
                model = _model(m["arch"])
                model.load_state_dict(load_file(FIXTURES / f"{m['id']}.safetensors"))
                m.update(_mm_bd(model.eval(), m["seed"]))
                assert index[m["id"]]["ba"] == m["ba"]
                print(f"{m['id']:28s} mm-bd p={m['mm_bd_p']:.3g} flags {m['mm_bd_flags']} "
                      f"({m['mm_bd_s']:.0f}s)", flush=True)  # fmt: skip
                # progress survives an interruption: re-run the same command to resume
                args.from_json.write_text(json.dumps({"models": models}))
    else:
        data = load_cifar10()
        partial = RESULTS / f"{args.name}.partial.json"
        done = {d["id"]: d for d in json.loads(partial.read_text())} if partial.is_file() else {}
        models = []
        plan = [
            (arch, kind, seed)
            for arch in args.archs.split(",")
            for kind, seeds in [("clean", range(args.clean))]
            + [(a, range(1)) for a in args.attacks.split(",") if a]
            for seed in seeds
        ]
        for arch, kind, seed in plan:
            mid = f"{arch}-{kind}-{seed}"
            if mid in done:
                models.append(done[mid])
                continue
            model, meta = _train_or_load(arch, kind, seed, data, args)
            m = {"id": mid, **meta, **_scan(model, seed, data, args)}
            if args.mm_bd:
                m.update(_mm_bd(model, seed))
            models.append(m)
            print(
                f"{mid:28s} BA {100 * m['ba']:.1f}% ASR {m['true_asr']} target {m['target']} "
                + " ".join(f"{r}={rule_flags(m, r)}" for r in RULES)
                + f" ({m['train_s']:.0f}s train, {m['nc_s']:.0f}+{m['px_s']:.0f}s scan)",
                flush=True,
            )
            partial.write_text(json.dumps(models))
        if partial.is_file():
            partial.unlink()
    rows = evaluate(models)
    cmd = ("python -m benchmarks.scanner_zoo " + " ".join(shown)).strip()
    path = write_results(args.name, rows, list(rows[0]), {"command": cmd, "models": models})
    with path.open("a") as f:
        f.write("\n## Per model (flagged labels per rule)\n\n" + per_model_table(models))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
