"""Trigger-free repairs on the scanner zoo: what ``auto`` can run when the scan misses.

    python -m benchmarks.fallback_zoo                                   # every model x defence
    python -m benchmarks.fallback_zoo --models user-sequential-badnets-0 --defences sau,finetune
    python -m benchmarks.fallback_zoo --clean --clean-defences auto   # + the clean models

The models are the committed ``benchmarks/fixtures/scanner_zoo`` weights (three architectures,
randomised BadNets patch / Blended / SIG / WaNet, trained the way a user would; see
``benchmarks.scanner_zoo``) — none of hardenkit's purification settings were tuned on them.
Each trigger-free defence runs **without a scan** (``Purifier(model, strategy).run(clean)``).
``auto-miss`` is the default ``auto`` given the default (``quick``) scan of the clean budget
*with its flags removed* — what ``auto`` does when the Scanner misses the backdoor (now:
NC unlearning of the inverted triggers of the 3 labels with the smallest masks; before: plain
fine-tuning, ``finetune-20`` here at 20 epochs). ``auto`` is the default ``auto`` with the real
scan — on the clean models, what the default repair costs a model that has no backdoor;
``auto-mcl`` / ``auto-nc`` are ``auto`` with ``trigger_strategy="mcl"`` and no accuracy
check (``max_trigger_ba_drop=None``: MCL's repair whatever it costs) / ``"nc-unlearn"`` (the
default before issue 16), with the real scan; ``auto`` itself runs MCL and keeps NC
unlearning's repair instead when MCL cost more than 3 points of validation accuracy.
Clean budget: 250 CIFAR-10 training images per class that the model never saw (2,500; the
Purifier holds 10 % out for its own guard). BA / ASR / RA: on the other half of the CIFAR-10
test split than the zoo's scans (5,000 images), with the model's real trigger and target.
Per-cell results are cached under ``benchmarks/cache/fallback/``. Writes
``benchmarks/results/fallback_zoo.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch
from safetensors.torch import load_file

import hardenkit as hk
from hardenkit.attacks.base import build_attack
from hardenkit.data import stratified_indices
from hardenkit.testing import missed_scan

from .common import (
    CACHE,
    config_hash,
    guard_fields,
    load_cached,
    load_cifar10,
    mcl_default_key,
    md_table,
    recheck_cell,
    write_results,
)
from .purify_cpu import measure
from .scanner_zoo import ATTACK_NAMES, FIXTURES, _model

DEFENCES: dict[str, tuple[str, dict[str, Any]]] = {
    "auto": ("auto", {}),
    "auto-miss": ("auto", {}),
    # stop 54: the default again (the same repair as auto), run with the trigger guard and its
    # rows recorded: how often it fires on models we did not build
    "auto-tg": ("auto", {}),
    # auto's trigger branch: MCL (its default since issue 16) vs NC unlearning (the default before)
    "auto-mcl": ("auto", {"trigger_strategy": "mcl", "max_trigger_ba_drop": None}),
    "auto-nc": ("auto", {"trigger_strategy": "nc-unlearn"}),
    # auto with MCL's anchor weight 3 in its trigger branch (issue 16: the anchor default)
    "auto-anchor3": ("auto", {"trigger_config": {"anchor_weight": 3.0}}),
    # auto with MCL on the smallest-mask labels' triggers when the scan flags nothing
    # (exploratory, stop 34): what it costs a clean model
    "auto-cand-mcl": ("auto", {"candidate_strategy": "mcl"}),
    # auto with the smallest-mask branch (flagged labels first) when the scan flags labels
    # without a recovered trigger, instead of fine-tuning: measured before it became auto's
    # default (stop 35); the same as "auto" now
    "auto-flag-cand": ("auto", {"flagged_without_trigger": "candidates"}),
    # auto-miss with Neural Cleanse's candidates only (no warp candidate: before stop 37)
    "auto-miss-nc": ("auto", {"other_inversion_candidates": 0}),
    # auto with MCL on the smallest mask's (and smallest warp's) inversion only (stop 37)
    "auto-c1mcl": ("auto", {"unflagged_candidates": 1, "candidate_strategy": "mcl"}),
    # auto with checked MCL first in the candidate branch (the default since stop 38): kept
    # when it costs <= 1.5 points of clean accuracy, else NC unlearning of the candidates
    "auto-cmcl": ("auto", {"candidate_mcl": 1}),
    "auto-miss-cmcl": ("auto", {"candidate_mcl": 1}),
    # ... and without it: the default of stops 35-37 (candidate_mcl 0)
    "auto-c0": ("auto", {"candidate_mcl": 0}),
    "auto-miss-c0": ("auto", {"candidate_mcl": 0}),
    # auto with 40 % of the clean images stamped in the candidate branch (default 20 %; stop 37)
    "auto-r40": ("auto", {"candidate_config": {"unlearning_ratio": 0.4}}),
    "auto-miss-r40": ("auto", {"candidate_config": {"unlearning_ratio": 0.4}}),
    "finetune-20": ("finetune", {"epochs": 20}),
    "d3-20": ("d3", {"epochs": 20}),
    "sau-cheap": ("sau", {"epochs": 5, "steps": 1}),
    # trigger strategies on their own (the Purifier runs its own quick scan first)
    "mcl-paper": ("mcl", {"preset": "paper"}),
    "nc-unlearn-final": ("nc-unlearn", {"selection": "final"}),
    "nc-unlearn-r50": ("nc-unlearn", {"unlearning_ratio": 0.5}),
    # = MCL's default since issue 16 (spelled out: the name meant this before the default did)
    # issue 16, the auto trigger branch: MCL variants that may keep more accuracy
    "mcl-lr01": ("mcl", {"lr_schedule": ((0, 0.01), (10, 0.001))}),
    "mcl-anchor3": ("mcl", {"anchor_weight": 3.0}),
    # stop 61: MCL's default plus two more Neural Cleanse inversions of its label from other
    # random starts (MCLConfig.inversion_restarts)
    "mcl-r2": ("mcl", {"inversion_restarts": 2}),
    # stop 52: a heavier clean-feature anchor (cheaper on the protocol, more patch residue here)
    "mcl-anchor5": ("mcl", {"anchor_weight": 5.0}),
    # MCL's default plus cross-entropy on the clean images (stop 42: a patch residue that MCL
    # left on an under-fitted nn.Sequential, which gains accuracy from the extra CE)
    "mcl-ce": ("mcl", {"ce_weight": 1.0}),
    "mcl-anchored": (
        "mcl",
        {"anchor_weight": 1.0, "selection": "best-val", "validation_fraction": 0.1},
    ),
}
MIN_ASR = 0.8
"""A zoo model counts as backdoored here only when its real trigger reached this ASR."""


def zoo_models(min_asr: float = MIN_ASR, clean: bool = False) -> dict[str, dict[str, Any]]:
    """The zoo's backdoored models whose real trigger reached ``min_asr`` (and, with
    ``clean``, its clean models: BA only)."""
    index: dict[str, dict[str, Any]] = json.loads((FIXTURES / "index.json").read_text())
    return {
        k: v
        for k, v in sorted(index.items())
        if (clean and v["attack"] == "clean") or (v.get("true_asr") or 0.0) >= min_asr
    }


def _splits(
    data: dict[str, hk.ImageDataset], meta: dict[str, Any]
) -> tuple[hk.ImageDataset, hk.ImageDataset]:
    """(clean budget never trained on, test half not used by the zoo's scans)."""
    labels = data["train"].labels
    used = set(stratified_indices(labels, per_class=meta["train_images"] // 10,
                                  seed=meta["seed"]).tolist())  # fmt: skip
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(7)).tolist()
    free = torch.tensor([i for i in perm if i not in used])
    pick = stratified_indices(labels[free], per_class=250, seed=0)
    clean = data["train"].subset(free[pick].sort().values)
    pool = torch.randperm(len(data["test"]), generator=torch.Generator().manual_seed(123))
    test = data["test"].subset(pool[: len(pool) // 2].sort().values)
    return clean, test


def _measure(model: Any, trigger: Any, test: hk.ImageDataset, target: int) -> dict[str, float]:
    if trigger is not None:
        return measure(model, trigger, test, target=target)
    rep = hk.Validator(model, runtime={"device": "cpu"}).run(test.loader(batch_size=1000))
    return {"ba": rep.ba, "asr": 0.0, "ra": 0.0}  # a clean model: BA only


def run_cell(
    mid: str,
    meta: dict[str, Any],
    defence: str,
    data: dict[str, hk.ImageDataset],
    cached_only: bool = False,
) -> dict[str, Any] | None:
    strategy, cfg = DEFENCES.get(defence, (defence, {}))
    # "auto" v3: its trigger branch changed (nc-unlearn -> mcl, then mcl guarded by
    # max_trigger_ba_drop; issue 16)
    # "auto" v5: flagged labels without a trigger -> their inversions + smallest masks (stop 35)
    # "auto" v6 / "auto-miss*" v2: a missed scan keeps every detector's inversions and the
    # candidates add warp's smallest reached label (stop 37)
    v = 6 if defence == "auto" else 2 if defence.startswith("auto-miss") else 1
    spec = {"model": mid, "defence": defence, "cfg": cfg, "v": v}
    spec.update(mcl_default_key(strategy, cfg))
    spec["recheck"] = 1  # the Purifier's recheck of the judged label (stop 62)
    key = config_hash(spec)
    cache = CACHE / "fallback" / f"{mid}-{defence}-{key}.json"
    cached = load_cached(cache)
    if cached is not None or cached_only:
        return cached
    model = _model(meta["arch"])
    model.load_state_dict(load_file(FIXTURES / f"{mid}.safetensors"))
    model.eval()
    trigger = None
    if meta["attack"] != "clean":
        name = ATTACK_NAMES.get(meta["attack"], meta["attack"])
        trigger = build_attack(name, {"image_size": 32, "channels": 3,
                                      **meta["attack_config"]}).trigger  # fmt: skip
    clean, test = _splits(data, meta)
    tgt = 0 if meta["target"] is None else int(meta["target"])
    row: dict[str, Any] = {"model": mid, "arch": meta["arch"], "attack": meta["attack"],
                           "defence": defence}  # fmt: skip
    if defence == "none":
        row.update(_measure(model, trigger, test, tgt), seconds=0.0, status="-")
    else:
        rt = {"seed": 0, "device": "cpu", "progress": "off"}
        t0 = time.perf_counter()
        scan = None
        if defence.startswith("auto"):
            scan_cfg = hk.scan.scan_config_for_budget("quick")
            scanner = hk.Scanner(model, 10, config=scan_cfg, runtime=rt)
            found = scanner.run(clean.loader(batch_size=500))
            row["scan_flagged"] = found.flagged_labels
            scan = missed_scan(found) if defence.startswith("auto-miss") else found
        res = hk.Purifier(model, strategy, config=cfg, runtime=rt).run(
            clean.loader(batch_size=500), scan=scan
        )
        row["branch"] = res.report.details.get("branch")
        if "candidate_sources" in res.report.details:  # which detectors' triggers it unlearned
            row["candidate_sources"] = res.report.details["candidate_sources"]
        # auto's accuracy checks; MCL's own inversions of its label (stop 61)
        for k in ("val_ba_drop", "train_ba_drop", "candidate_mcl", "inversion_restarts"):
            if k in res.report.details:
                row[k] = res.report.details[k]
        row.update(_measure(res.model, trigger, test, tgt))
        row.update(seconds=time.perf_counter() - t0, status=res.status)
        # each known trigger's held-out ASR before / after and the trigger guard (stop 54)
        row.update(guard_fields(res.report))
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(row, indent=2))
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="", help="comma-separated zoo ids (default: all)")
    ap.add_argument("--defences", default=",".join(DEFENCES), help="comma-separated")
    ap.add_argument("--clean", action="store_true", help="also the zoo's clean models")
    ap.add_argument(
        "--clean-defences", default="auto", help="comma-separated, run on the clean models"
    )
    ap.add_argument("--out", default="fallback_zoo")
    ap.add_argument(
        "--cached-only", action="store_true", help="table the cached cells only; run nothing"
    )
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = zoo_models(clean=args.clean or bool(args.models))
    if args.models:
        models = {k: models[k] for k in args.models.split(",")}
    defences = ["none", *[d for d in args.defences.split(",") if d and d != "none"]]
    clean_defences = ["none", *[d for d in args.clean_defences.split(",") if d and d != "none"]]
    data = load_cifar10()
    rows: list[dict[str, Any]] = []
    for mid, meta in models.items():
        base: dict[str, Any] | None = None
        for d in clean_defences if meta["attack"] == "clean" else defences:
            got = run_cell(mid, meta, d, data, args.cached_only)
            if got is None:
                continue
            row = got
            if d == "none":
                base = row
            assert base is not None
            row["ba_drop"] = base["ba"] - row["ba"]
            # DER (ALGORITHMS.md §0): [max(0, dASR) - max(0, dBA) + 1] / 2
            gain = max(0.0, base["asr"] - row["asr"])
            row["der"] = 100 * (gain - max(0.0, row["ba_drop"]) + 1) / 2
            rows.append(row)
            show = ("model", "defence", "ba", "asr", "seconds", "status")
            print(json.dumps({k: row[k] for k in show}), flush=True)
    pct = [
        {
            **r,
            **{k: 100 * r[k] for k in ("ba", "asr", "ra", "ba_drop")},
            "recheck": recheck_cell(r.get("recheck")),
        }
        for r in rows
    ]
    columns = ["model", "attack", "defence", "ba", "asr", "ra", "ba_drop", "der", "seconds",
               "status", "branch", "recheck"]  # fmt: skip
    summary: list[dict[str, Any]] = []
    for d in dict.fromkeys(defences[1:] + clean_defences[1:]):
        mine = [r for r in pct if r["defence"] == d and r["attack"] != "clean"]
        if mine:
            summary.append({
                "defence": d,
                "backdoored models": len(mine),
                "asr<=5%": sum(r["asr"] <= 5 for r in mine),
                "worst asr": max(r["asr"] for r in mine),
                "mean ba drop": sum(r["ba_drop"] for r in mine) / len(mine),
                "worst ba drop": max(r["ba_drop"] for r in mine),
                "min der": min(r["der"] for r in mine),
                "mean seconds": sum(r["seconds"] for r in mine) / len(mine),
            })  # fmt: skip
    cmd = "python -m benchmarks.fallback_zoo " + " ".join(sys.argv[1:] if argv is None else argv)
    md_path = write_results(args.out, pct, columns, {"command": cmd.strip(), "summary": summary})
    if summary:
        with md_path.open("a") as fh:
            fh.write("\n## Summary per defence\n\n" + md_table(summary, list(summary[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
