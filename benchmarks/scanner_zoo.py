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
  ``combine="any"``);
* ``warp:default`` — the warp inversion's floored MAD test on log mean shifts;
* ``share:default`` — the prediction-share detector (a label the model predicts for far less
  than its share of the clean images; Bonferroni-corrected binomial p-value < 0.01, evidence
  ``-log10 p`` with the same threshold 2 as the MAD rules);
* ``nc+warp`` / ``nc+warp+share`` — any of those flags (the default scan presets are
  ``nc+warp+share``).

Statistics of a detector a saved result lacks are added with ``--from-json ... --add
DETECTOR`` (the saved weights are scanned with that detector alone, same images).

A backdoored model counts only when its real trigger reached 80 % ASR (``--min-asr``); a rule
"detects" it only when it flags the true target. AUROC: of each rule's model-level evidence (its MAD
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
from hardenkit.scan.anomaly import log_values, mad_anomaly, ratio_scale_floor

from .common import RESULTS, ROOT, load_cifar10, write_results
from .scan_statistic import ARCHS, LOCATIONS, MIN_PLANTED_ASR, PATTERNS

FIXTURES = ROOT / "fixtures" / "scanner_zoo"
ATTACKS = ("badnets", "blended", "sig", "wanet")
ATTACK_NAMES = {"sig-half": "sig"}
"""Zoo attack kinds that are a registered attack with other settings (``_attack_config``)."""


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
    if attack == "sig-half":
        # half the target class poisoned (5 % of the set): the rest still teaches the class
        return {**_attack_config("sig", rng, seed), "poison_rate": 0.05}
    if attack == "wanet":
        # a stronger warp than the paper's s=0.5: 6 short epochs do not learn the weak one
        return {
            "target": target,
            "k": 4,
            "s": rng.choice([0.75, 1.0]),
            "grid_seed": rng.randrange(10_000),
            "seed": seed,
        }
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
    # WaNet's warp is learned slowly (ASR 66 % after 6 epochs on small-cnn): twice the epochs
    epochs = args.epochs * (2 if attack == "wanet" else 1)
    tc = hk.TrainConfig(epochs=epochs, batch_size=128, lr=0.05, augment=True)
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
            ATTACK_NAMES.get(attack, attack), train, test=test, arch=factory,
            attack_config=attack_cfg, train_config=tc, runtime=rt,
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
        "epochs": epochs,
        "command": "python -m benchmarks.scanner_zoo",
    }
    FIXTURES.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              FIXTURES / f"{mid}.safetensors")  # fmt: skip
    # re-read: another zoo run may have added models meanwhile
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    index[mid] = meta
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return model.eval(), meta


def _scan(
    model: torch.nn.Module,
    seed: int,
    data: dict[str, hk.ImageDataset],
    args: argparse.Namespace,
    detectors: list[str],
) -> dict[str, Any]:
    # clean images for the scan: from a fixed random half of the CIFAR-10 test split (never
    # trained on; the other half is free for BA/ASR)
    pool = torch.randperm(len(data["test"]), generator=torch.Generator().manual_seed(123))
    half = pool[len(pool) // 2 :].sort().values
    pick = stratified_indices(data["test"].labels[half], per_class=args.scan_per_class, seed=seed)
    clean = data["test"].subset(half[pick])
    cfg = hk.scan.scan_config_for_budget(args.budget, {"detectors": detectors})
    rt = {"seed": seed, "device": "cpu", "progress": "off"}
    t0 = time.perf_counter()
    scan = hk.Scanner(model, 10, config=cfg, runtime=rt).run(clean.loader())
    out: dict[str, Any] = {"scan_s": time.perf_counter() - t0}
    for d in scan.report.detectors:
        if d.detector == "neural-cleanse":
            out.update(nc_l1=[c.value for c in d.classes], nc_s=d.seconds)
            out["trigger_asr"] = [float(c.trigger_asr or 0.0) for c in scan.report.classes]
        elif d.detector == "pixel":
            out.update(
                px_pixels=[float(c.extra["pixels"]) for c in d.classes],
                px_l1=[float(c.extra["l1"]) for c in d.classes],
                px_reached=[bool(c.extra["reached_threshold"]) for c in d.classes],
                px_s=d.seconds,
            )
        elif d.detector == "warp":
            out.update(
                w_shift=[c.value for c in d.classes],
                w_reached=[bool(c.extra["reached_threshold"]) for c in d.classes],
                w_s=d.seconds,
            )
        elif d.detector == "signal":
            out.update(
                sg_rms=[c.value for c in d.classes],
                sg_reached=[bool(c.extra["reached_threshold"]) for c in d.classes],
                sg_s=d.seconds,
            )
        elif d.detector == "prediction-share":
            out.update(
                ps_share=[c.value for c in d.classes],
                ps_p=[float(c.extra["p_value"]) for c in d.classes],
                ps_images=int(d.info["images"]),
                ps_s=d.seconds,
            )
    return out


def _mm_bd(
    model: torch.nn.Module, seed: int, options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Data-free MM-BD (no clean images) at its reference defaults, or with ``options``
    (``MaxMarginConfig`` fields, e.g. ``{"alpha": 0.001}``)."""
    rt = {"seed": seed, "device": "cpu", "progress": "off"}
    cfg: dict[str, Any] = {"detectors": ["mm-bd"]}
    if options:
        cfg["detector_options"] = {"mm-bd": options}
    t0 = time.perf_counter()
    scan = hk.Scanner(model, 10, config=cfg, runtime=rt, input_shape=(3, 32, 32)).run()
    det = scan.report.detectors[0]
    return {
        "mm_bd_p": det.p_value,
        "mm_bd_flags": list(det.flagged_labels),
        "mm_bd_margins": [c.value for c in det.classes],
        "mm_bd_verdict": scan.verdict,
        "mm_bd_s": time.perf_counter() - t0,
    }


FLOOR = ratio_scale_floor(0.5, 2.0)  # the detectors' default max_median_ratio (0.5)


def _stats(
    values: list[float], reached: list[bool] | None, floor: float
) -> tuple[float, list[int]]:
    """(model-level index, flagged labels) of the low-side MAD test on log values."""
    st = mad_anomaly(log_values(values), side="low", min_scale=floor)
    ok = [True] * len(values) if reached is None else reached
    on = [i for i, v in enumerate(log_values(values)) if v < st.median and ok[i]]
    index = max((st.per_label[i] for i in on), default=0.0)
    return index, [y for y in st.flagged if ok[y]]


# rule -> (statistic key, reached key, MAD floor); the published NC rule is handled apart
_DETECTOR_RULES: dict[str, tuple[str, str | None, float]] = {
    "nc:mad-log-l1": ("nc_l1", None, 0.0),
    "nc:default": ("nc_l1", None, FLOOR),
    "pixel:log-pixels": ("px_pixels", "px_reached", 0.0),
    "pixel:default": ("px_pixels", "px_reached", FLOOR),
    "warp:default": ("w_shift", "w_reached", FLOOR),
    "signal:default": ("sg_rms", "sg_reached", FLOOR),
}
SHARE_ALPHA = 0.01  # PredictionShareConfig.alpha: -log10(alpha) = 2, the MAD rules' threshold
COMBINED = {
    "nc+warp": ("nc:default", "warp:default"),
    "nc+warp+share": ("nc:default", "warp:default", "share:default"),
    "nc+pixel+warp": ("nc:default", "pixel:default", "warp:default"),
    "nc+warp+share+signal": ("nc:default", "warp:default", "share:default", "signal:default"),
}


def has_rule(m: dict[str, Any], rule: str) -> bool:
    if rule in COMBINED:
        return all(has_rule(m, r) for r in COMBINED[rule])
    if rule == "mm-bd":
        return "mm_bd_p" in m
    if rule == "share:default":
        return "ps_p" in m
    key = "nc_l1" if rule == "nc:mad-l1" else _DETECTOR_RULES[rule][0]
    return key in m


def rule_flags(m: dict[str, Any], rule: str) -> list[int]:
    if rule == "nc:mad-l1":
        return mad_anomaly(m["nc_l1"], side="low").flagged
    if rule in _DETECTOR_RULES:
        key, reached, floor = _DETECTOR_RULES[rule]
        return _stats(m[key], m[reached] if reached else None, floor)[1]
    if rule in COMBINED:
        out: list[int] = []
        for r in COMBINED[rule]:
            out += [y for y in rule_flags(m, r) if y not in out]
        return out
    if rule == "mm-bd":
        return list(m.get("mm_bd_flags", []))
    if rule == "share:default":
        p = m["ps_p"]
        return sorted((y for y in range(len(p)) if p[y] < SHARE_ALPHA), key=lambda y: p[y])
    raise ValueError(rule)


RULES = [
    "nc:mad-l1",
    "nc:mad-log-l1",
    "nc:default",
    "pixel:log-pixels",
    "pixel:default",
    "warp:default",
    "nc+warp",
    "nc+pixel+warp",
    "share:default",
    "nc+warp+share",
    "signal:default",
    "nc+warp+share+signal",
]


def rule_evidence(m: dict[str, Any], rule: str) -> float:
    """The model-level evidence behind ``rule`` (its anomaly index; a combination takes the
    largest of its members'): what a threshold other than 2 would be compared with."""
    if rule == "nc:mad-l1":
        st = mad_anomaly(m["nc_l1"], side="low")
        return max(
            (st.per_label[i] for i, v in enumerate(m["nc_l1"]) if v < st.median), default=0.0
        )
    if rule in _DETECTOR_RULES:
        key, reached, floor = _DETECTOR_RULES[rule]
        return _stats(m[key], m[reached] if reached else None, floor)[0]
    if rule in COMBINED:
        return max(rule_evidence(m, r) for r in COMBINED[rule])
    if rule == "mm-bd":
        return -math.log10(max(float(m["mm_bd_p"]), 1e-300))
    if rule == "share:default":  # -log10 of the smallest corrected p-value: threshold 2
        return max(0.0, -math.log10(max(min(m["ps_p"]), 1e-300)))
    raise ValueError(rule)


def auroc(pos: list[float], neg: list[float]) -> float | None:
    """Probability that a backdoored model's evidence exceeds a clean one's (ties count 1/2)."""
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


REFERENCE_DETECTORS = {
    "neural-cleanse": "nc_l1",
    "pixel": "px_pixels",
    "warp": "w_shift",
    "signal": "sg_rms",
}


def write_reference(models: list[dict[str, Any]], command: str, name: str = "scanner_zoo") -> Path:
    """hardenkit/scan/clean_reference.json: each clean model's evidence per detector,
    computed exactly as the detectors do (floored MAD on log sizes, default settings; the
    prediction share's ``-log10`` of its smallest Bonferroni-corrected p-value)."""
    from hardenkit.scan.calibration import REFERENCE_PATH

    clean = [m for m in models if m["attack"] == "clean"]
    rows = []
    for m in clean:
        idx = {
            det: mad_anomaly(log_values(m[key]), side="low", min_scale=FLOOR).index
            for det, key in REFERENCE_DETECTORS.items()
            if key in m
        }
        if "ps_p" in m:  # the detector's evidence: -log10 of the smallest corrected p-value
            idx["prediction-share"] = rule_evidence(m, "share:default")
        rows.append({"id": m["id"], "arch": m["arch"], "ba": m["ba"], "indices": idx})
    archs = sorted({m["arch"] for m in clean})
    epochs = sorted({int(m["epochs"]) for m in clean})
    trained = f"{epochs[0]}" if len(epochs) == 1 else f"{epochs[0]}-{epochs[-1]}"
    payload = {
        "source": f"benchmarks/results/{name}.md ({command})",
        "description": f"{len(clean)} clean CIFAR-10 models ({', '.join(archs)}; {trained} epochs "
        "on 600 images per class), scanned at the 'quick' budget, default detector settings",
        "threshold": 2.0,
        "num_classes": 10,
        "models": rows,
    }
    REFERENCE_PATH.write_text(json.dumps(payload, indent=2) + "\n")
    return REFERENCE_PATH


def _rules(models: list[dict[str, Any]]) -> list[str]:
    """The rules every model has the statistics for."""
    return [r for r in [*RULES, "mm-bd"] if all(has_rule(m, r) for m in models)]


def evaluate(
    models: list[dict[str, Any]], min_asr: float = MIN_PLANTED_ASR
) -> list[dict[str, Any]]:
    """Per attack (and ``all``) and rule: TPR with the right target over the backdoored models
    whose real trigger reached ``min_asr``, FPR over the clean models, AUROC."""
    rows = []
    groups = sorted({m["attack"] for m in models if m["attack"] != "clean"})
    rules = _rules(models)
    for split in [*groups, "all"]:
        bd = [
            m
            for m in models
            if m["attack"] != "clean"
            and split in ("all", m["attack"])
            and (m["true_asr"] or 0) >= min_asr
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


_SECONDS = {
    "NC s": "nc_s",
    "pixel s": "px_s",
    "warp s": "w_s",
    "share s": "ps_s",
    "signal s": "sg_s",
}


def per_model_table(models: list[dict[str, Any]]) -> str:
    rules = _rules(models)
    cols = ["model", "BA %", "ASR %", "target", *rules, *_SECONDS]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for m in models:
        asr = "" if m["true_asr"] is None else f"{100 * m['true_asr']:.1f}"
        cells = [
            f"{m['arch']}/{m['attack']}/{m['seed']}",
            f"{100 * m['ba']:.1f}",
            asr,
            "" if m["target"] is None else str(m["target"]),
            *[str(rule_flags(m, r)) for r in rules],
            *[f"{m[k]:.0f}" if k in m else "" for k in _SECONDS.values()],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _load_weights(m: dict[str, Any]) -> torch.nn.Module:
    model = _model(m["arch"])
    model.load_state_dict(load_file(FIXTURES / f"{m['id']}.safetensors"))
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--attacks", default=",".join(ATTACKS))
    p.add_argument("--clean", type=int, default=3, help="clean models per architecture")
    p.add_argument(
        "--clean-seeds",
        default=None,
        help="seeds of the clean models (comma-separated; default: 0 .. --clean - 1)",
    )
    p.add_argument(
        "--seeds",
        default="0",
        help="seeds of the backdoored models (comma-separated; each seed draws a new trigger, "
        "target and training order)",
    )
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--train-per-class", type=int, default=600)
    p.add_argument("--scan-per-class", type=int, default=30)
    p.add_argument("--budget", default="quick")
    p.add_argument(
        "--detectors",
        default="neural-cleanse,warp,prediction-share",
        help="detectors of the scan of each new model (comma-separated)",
    )
    p.add_argument("--from-json", type=Path, nargs="+", default=None,
                   help="re-evaluate saved statistics (several files are merged)")  # fmt: skip
    p.add_argument(
        "--add",
        default="",
        help="with --from-json: scan the saved weights with these detectors (comma-separated) "
        "where a model lacks their statistics; progress is saved to the first file",
    )
    p.add_argument("--name", default="scanner_zoo")
    p.add_argument(
        "--min-asr",
        type=float,
        default=MIN_PLANTED_ASR,
        help="a backdoored model counts when its real trigger reached this ASR "
        f"(default {MIN_PLANTED_ASR})",
    )
    p.add_argument(
        "--write-reference",
        action="store_true",
        help="also write the clean models' indices to hardenkit/scan/clean_reference.json",
    )
    p.add_argument(
        "--mm-bd",
        action="store_true",
        help="also run data-free MM-BD (reference defaults) on every model; with --from-json, "
        "on the saved weights of the models that lack it",
    )
    args = p.parse_args(argv)
    shown = list(argv) if argv is not None else __import__("sys").argv[1:]
    keys = {
        "neural-cleanse": "nc_l1",
        "pixel": "px_pixels",
        "warp": "w_shift",
        "prediction-share": "ps_p",
        "signal": "sg_rms",
    }
    if args.from_json is not None:
        models = []
        for f in args.from_json:
            models += [m for m in json.loads(f.read_text())["models"]
                       if m["id"] not in {x["id"] for x in models}]  # fmt: skip
        add = [d for d in args.add.split(",") if d]
        data = load_cifar10() if add else {}
        index = json.loads((FIXTURES / "index.json").read_text())
        save_to = args.from_json[0]
        for m in models:
            missing = [d for d in add if keys[d] not in m]
            if missing:
                m.update(_scan(_load_weights(m), m["seed"], data, args, missing))
                flags = " ".join(f"{r}={rule_flags(m, r)}" for r in _rules([m]))
                print(f"{m['id']:28s} + {missing}: {flags}", flush=True)
            if args.mm_bd and "mm_bd_p" not in m:
                m.update(_mm_bd(_load_weights(m), m["seed"]))
                print(f"{m['id']:28s} mm-bd p={m['mm_bd_p']:.3g} flags {m['mm_bd_flags']} "
                      f"({m['mm_bd_s']:.0f}s)", flush=True)  # fmt: skip
            assert index[m["id"]]["ba"] == m["ba"]
            if missing or args.mm_bd:
                # progress survives an interruption: re-run the same command to resume
                save_to.write_text(json.dumps({"models": models}))
    else:
        data = load_cifar10()
        detectors = [d for d in args.detectors.split(",") if d]
        partial = RESULTS / f"{args.name}.partial.json"
        done = {d["id"]: d for d in json.loads(partial.read_text())} if partial.is_file() else {}
        models = []
        seeds_bd = [int(v) for v in args.seeds.split(",") if v]
        seeds_clean = (
            range(args.clean)
            if args.clean_seeds is None
            else [int(v) for v in args.clean_seeds.split(",") if v]
        )
        plan = [
            (arch, kind, seed)
            for arch in args.archs.split(",")
            for kind, seeds in [("clean", seeds_clean)]
            + [(a, seeds_bd) for a in args.attacks.split(",") if a]
            for seed in seeds
        ]
        for arch, kind, seed in plan:
            mid = f"{arch}-{kind}-{seed}"
            if mid in done:
                models.append(done[mid])
                continue
            model, meta = _train_or_load(arch, kind, seed, data, args)
            m = {"id": mid, **meta, **_scan(model, seed, data, args, detectors)}
            if args.mm_bd:
                m.update(_mm_bd(model, seed))
            models.append(m)
            print(
                f"{mid:28s} BA {100 * m['ba']:.1f}% ASR {m['true_asr']} target {m['target']} "
                + " ".join(f"{r}={rule_flags(m, r)}" for r in _rules([m]))
                + f" ({m['train_s']:.0f}s train, {m['scan_s']:.0f}s scan)",
                flush=True,
            )
            partial.write_text(json.dumps(models))
        if partial.is_file():
            partial.unlink()
    rows = evaluate(models, args.min_asr)
    cmd = ("python -m benchmarks.scanner_zoo " + " ".join(shown)).strip()
    path = write_results(args.name, rows, list(rows[0]), {"command": cmd, "models": models})
    with path.open("a") as f:
        f.write("\n## Per model (flagged labels per rule)\n\n" + per_model_table(models))
    if args.write_reference:
        print(f"wrote {write_reference(models, cmd, args.name)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
