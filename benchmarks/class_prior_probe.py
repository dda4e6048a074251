"""What a trigger repair does to the target class, with and without MCL's class-prior
recalibration.

    python -m benchmarks.class_prior_probe                                  # every model below
    python -m benchmarks.class_prior_probe --models patch-tl,zoo:small-cnn-badnets-0
    python -m benchmarks.class_prior_probe --strategy nc-unlearn --out class_prior_probe_nc

A contrastive repair pushes triggered images away from the target label's features; on
models we did not build it also shrinks the target label on *clean* images (stop 45: the gate
shipped ``patch-tl`` with its target class at 42.0 % instead of 64.6 %, at −0.9 BA points).
MCL's ``recalibrate_prior`` (opt-in, stop 46) refits the output layer's bias so the
repaired model's predicted probabilities on the clean budget match the input model's.

For each model: the default (``quick``) scan of its clean budget, then the default ``mcl``
repair with the recalibration (``Purifier(model, "mcl", config={"recalibrate_prior": True})
.run(clean, scan=scan)``); the repair *without* the
recalibration is the same weights with the recorded bias shift taken back (the calibration
runs after the epoch selection, so nothing else differs). Measured with the **real** trigger
on the model's held-out test images (``benchmarks.gate_user_script``'s cases: all 10,000 for
the ``benchmarks.user_script`` models, the zoo's unused half of 5,000 for ``zoo:`` models):
BA, ASR, the share of the non-target images put on the target without the trigger (floor),
the target class's accuracy and the largest drop of any class's accuracy.
``--strategy nc-unlearn``: the same for NC unlearning (``auto``'s branch when MCL costs too
much accuracy or the scan flagged nothing), with the recalibration applied after it by this
script (toward the input model on the whole clean budget, without the ASR check). Rows are cached in
``benchmarks/cache/class_prior/``; writes ``benchmarks/results/<out>.{json,md}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from typing import Any

import torch

import hardenkit as hk
from hardenkit.purify.calibration import BiasCalibration, calibrate_output_bias, undo_calibration
from hardenkit.scan import scan_config_for_budget

from .common import CACHE, config_hash, load_cached, load_cifar10, md_table, write_results
from .gate_user_script import _case

TUNED = ["patch-tl", "patch-mid", "blend-smooth"]
"""The models the recalibration was designed on (stop 46)."""
HELD_OUT = [
    "zoo:small-cnn-badnets-0",
    "zoo:small-cnn-blended-0",
    "zoo:small-cnn-badnets-2",
    "zoo:tiny-resnet-badnets-1",
    "zoo:user-sequential-blended-0",
]
"""Scanner-zoo models (other architectures, triggers, targets) never looked at while
designing it."""


def _measure(case: dict[str, Any], model: torch.nn.Module) -> dict[str, Any]:
    m = case["measure"](model)
    eff = case["effect"](model)
    classes = case["classes"](model)
    return {"ba": m["ba"], "asr": m["asr"], "floor": eff["floor"], "classes": classes}


MCL_VARIANTS = ["mcl without recalibration", "mcl (default)"]
"""``mcl (default)``: measured while ``recalibrate_prior`` was MCL's default (stop 46), i.e. MCL
with the recalibration; the row names are kept so the cached rows stay readable."""


def run_model(name: str, data: dict[str, hk.ImageDataset], strategy: str = "mcl") -> dict[str, Any]:
    case = _case(name, data)
    key = {"model": name, "key": case["key"], "data": case["data_tag"], "v": 1}
    if strategy != "mcl":
        key["strategy"] = strategy
    path = CACHE / "class_prior" / f"{name.replace(':', '_')}-{config_hash(key)}.json"
    cached = load_cached(path)
    if cached is not None:
        return cached
    model = case["model"]
    x, y = case["clean"]
    loader = hk.ImageDataset(x, y).loader(batch_size=128)
    t0 = time.perf_counter()
    scan = hk.Scanner(model, config=scan_config_for_budget("quick", None)).run(loader)
    config = {"recalibrate_prior": True} if strategy == "mcl" else None
    res = hk.Purifier(model, strategy, config=config).run(loader, scan=scan)
    seconds = time.perf_counter() - t0
    if strategy == "mcl":
        details = res.report.details or {}
        cal_rec = details.get("prior_calibration") or {}
        names = ("applied", "layer", "shift", "kl_before", "kl_after", "reason")
        fields = {k: cal_rec[k] for k in names if k in cal_rec}
        without = copy.deepcopy(res.model)
        undo_calibration(without, BiasCalibration(**fields) if fields else BiasCalibration(False))
        with_, variants = res.model, MCL_VARIANTS
    else:  # what the recalibration would do after this strategy (post hoc, no ASR check)
        without = res.model
        with_ = copy.deepcopy(without)
        cal = calibrate_output_bias(with_, model, x)
        cal_rec = cal.as_dict()
        variants = [strategy, f"{strategy} + recalibration (post hoc)"]
    row = {
        "model": name,
        "target": case["target"],
        "scan": f"{scan.verdict} {scan.flagged_labels}",
        "status": res.status,
        "calibration": "applied" if cal_rec.get("applied") else (cal_rec.get("reason") or "-"),
        "variants": variants,
        "input": _measure(case, model),
        variants[0]: _measure(case, without),
        variants[1]: _measure(case, with_),
        "seconds": seconds,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row, indent=1))
    return row


def _row(r: dict[str, Any], which: str, group: str) -> dict[str, Any]:
    base, m, t = r["input"], r[which], r["target"]
    drops = [a - b for a, b in zip(base["classes"], m["classes"], strict=True)]
    worst = max(range(len(drops)), key=lambda c: drops[c])
    return {
        "model": r["model"],
        "target": t,
        "set": group,
        "repair": which,
        "BA %": 100 * m["ba"],
        "BA drop (pt)": 100 * (base["ba"] - m["ba"]) if which != "input" else None,
        "ASR %": 100 * m["asr"],
        "floor %": 100 * m["floor"],
        "target class %": 100 * m["classes"][t],
        "largest class drop (pt, class)": "-"
        if which == "input"
        else f"{100 * drops[worst]:+.1f} ({worst})",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", default=",".join([*TUNED, *HELD_OUT]))
    p.add_argument("--out", default="class_prior_probe", help="results name")
    p.add_argument(
        "--strategy",
        default="mcl",
        choices=["mcl", "nc-unlearn"],
        help="nc-unlearn: its repair, and the recalibration applied after it (post hoc)",
    )
    args = p.parse_args(argv)
    args_given = sys.argv[1:] if argv is None else argv
    data = load_cifar10()
    rows: list[dict[str, Any]] = []
    table: list[dict[str, Any]] = []
    for name in [m for m in args.models.split(",") if m]:
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        r = run_model(name, data, args.strategy)
        print(json.dumps({k: v for k, v in r.items() if k != "input"}, default=str), flush=True)
        rows.append(r)
        group = "designed on" if name in TUNED else "held out"
        variants = r.get("variants", MCL_VARIANTS)
        for which in ("input", *variants):
            default = which == variants[-1]
            extra = {"calibration": r["calibration"], "s": round(r["seconds"])} if default else {}
            table.append({**_row(r, which, group), **extra})
    cols = ["model", "target", "set", "repair", "BA %", "BA drop (pt)", "ASR %", "floor %",
            "target class %", "largest class drop (pt, class)", "calibration", "s"]  # fmt: skip
    write_results(
        args.out,
        table,
        cols,
        {
            "protocol": "default quick scan + default mcl; with / without the prior recalibration",
            "measurements": rows,
            "command": " ".join(["python -m benchmarks.class_prior_probe", *args_given]),
        },
    )
    print(md_table(table, cols))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
