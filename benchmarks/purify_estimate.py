"""How good is the up-front time estimate of a repair? ``Purifier.estimate`` against the run.

    python -m benchmarks.purify_estimate                               # every model, strategy
    python -m benchmarks.purify_estimate --models patch-tl --strategies auto,mcl
    python -m benchmarks.purify_estimate --factors --models patch-tl,res-patch \
        --out purify_estimate_factors                 # the passes per epoch, two epochs each

For each user-script model (``benchmarks/user_script.py``: committed, trained outside
hardenkit) and each strategy at its default settings, ``Purifier(model, strategy)`` first
estimates (:meth:`hardenkit.Purifier.estimate`, what ``hardenkit purify`` prints) and then runs
on the model's 2,500 clean images; the row compares the estimate's parts with the report's
``timings``. The per-epoch pass factors of ``estimate_passes`` were measured on ``patch-tl``
and ``res-patch`` with two epochs (``--factors``: each strategy's repair seconds ÷ (one timed
step × steps per pass × epochs), with a known trigger instead of a scan; stop 63);
``blend-smooth`` and ``res-blend`` are held out.
Runs share the CPU, so their timings carry the load of the other jobs — the estimate's own
timing runs under the same load. Writes ``benchmarks/results/<out>.{json,md}``; cells are
cached in ``benchmarks/cache/purify_estimate/``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import hardenkit as hk

from .common import (
    CACHE,
    config_hash,
    load_cached,
    load_cifar10,
    md_table,
    save_cached,
    write_results,
)
from .user_script import clean_loader, load_or_train, model_spec

MODELS = ["patch-tl", "res-patch", "blend-smooth", "res-blend"]
TUNED = {"patch-tl", "res-patch"}
STRATEGIES = ["auto", "mcl", "nc-unlearn", "finetune", "d3", "sau", "fine-pruning"]


def run_cell(name: str, strategy: str, data: dict[str, Any], cached_only: bool) -> dict[str, Any]:
    key = config_hash({"model": name, "strategy": strategy, "v": 2})  # v2: median step
    cache = CACHE / "purify_estimate" / f"{name}-{strategy}-{key}.json"
    cached = load_cached(cache)
    if cached is not None or cached_only:
        return cached or {}
    model, info = load_or_train(name, data)
    spec = model_spec(name)
    loader = clean_loader(spec, info, data)
    purifier = hk.Purifier(model, strategy)
    n = len(loader.dataset)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    est = purifier.estimate(n, (3, 32, 32))
    est_seconds = time.perf_counter() - t0
    res = purifier.run(loader)
    t = res.report.timings
    row: dict[str, Any] = {
        "model": name,
        "held_out": name not in TUNED,
        "strategy": strategy,
        "images": est.repair_images,
        "estimate_seconds": est_seconds,
        "est_scan": est.scan,
        "est_repair_lo": None if est.repair is None else est.repair[0],
        "est_repair_hi": None if est.repair is None else est.repair[1],
        "est_recheck": est.recheck,
        "est_total_lo": None if est.total is None else est.total[0],
        "est_total_hi": None if est.total is None else est.total[1],
        "scan": t["scan"],
        "repair": t["repair"],
        "recheck": t["recheck"],
        "total": res.report.seconds,
        "status": res.status,
        "branch": res.report.details.get("branch"),
    }
    return save_cached(cache, row)


def factor_row(name: str, strategy: str, data: dict[str, Any]) -> dict[str, Any]:
    """Passes per epoch of ``strategy`` on ``name``: two epochs, the real trigger given as
    the scan (``ScanResult.from_triggers``) to the strategies that need one, no recheck."""
    from hardenkit.purify import STRATEGIES, step_seconds
    from hardenkit.scan import ScanResult

    from .user_script import stamp

    model, info = load_or_train(name, data)
    spec = model_spec(name)
    loader = clean_loader(spec, info, data)
    cfg: dict[str, Any] = {"epochs": 2}
    if strategy == "mcl":
        cfg["min_trigger_asr"] = 0.0  # the trigger is the real one; ASR is not the point here
    scan = None
    if STRATEGIES.get(strategy).needs_trigger:
        trigger = hk.triggers.CallableTrigger(lambda x: stamp(x, spec), name=name)
        scan = ScanResult.from_triggers({spec["target"]: trigger}, model=model, num_classes=10)
    res = hk.Purifier(model, strategy, config=cfg).run(loader, scan=scan)
    n = res.report.clean_images["train"]
    strat = STRATEGIES.get(strategy)(cfg)
    bs = min(strat.estimate_batch_size(), n)
    step = step_seconds(model, (3, 32, 32), bs)
    epochs = res.report.epochs or 2
    repair = res.report.timings["repair"]
    return {
        "model": name,
        "strategy": strategy,
        "images": n,
        "batch": bs,
        "step s": step,
        "repair s": repair,
        "epochs": epochs,
        "passes per epoch": repair / (step * -(-n // bs) * epochs),
        "status": res.status,
    }


def _verdict(r: dict[str, Any]) -> str:
    lo, hi, got = r.get("est_total_lo"), r.get("est_total_hi"), r["total"]
    if lo is None or hi is None:
        return "no estimate"
    if got < lo:
        return f"faster ({got / lo:.2f}x the low end)"
    if got > hi:
        return f"SLOWER ({got / hi:.2f}x the high end)"
    return "within"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated")
    p.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated")
    p.add_argument("--out", default="purify_estimate", help="results name")
    p.add_argument("--cached-only", action="store_true", help="only cells already measured")
    p.add_argument(
        "--factors",
        action="store_true",
        help="measure the passes per epoch instead (two epochs; default strategies: those "
        "with an epoch schedule)",
    )
    args = p.parse_args(argv)
    data = load_cifar10()
    if args.factors:
        names = [s for s in args.strategies.split(",") if s and s != "auto"]
        factors = [factor_row(m, s, data) for m in args.models.split(",") if m for s in names]
        cols = ["model", "strategy", "images", "batch", "step s", "repair s", "epochs",
                "passes per epoch", "status"]  # fmt: skip
        _write(args.out, factors, cols, "passes per epoch of each strategy (stop 63)", argv)
        return 0
    rows = []
    for name in [m for m in args.models.split(",") if m]:
        for strategy in [s for s in args.strategies.split(",") if s]:
            print(f"[{time.strftime('%H:%M:%S')}] {name} / {strategy} ...", flush=True)
            r = run_cell(name, strategy, data, args.cached_only)
            if r:
                rows.append(r)
                print(f"  total {r['total']:.0f}s, estimate {r['est_total_lo']}-"
                      f"{r['est_total_hi']}: {_verdict(r)}", flush=True)  # fmt: skip
    table = [
        {
            **r,
            "set": "held out" if r["held_out"] else "tuned",
            "estimate s (scan + repair + recheck)": "-"
            if r["est_total_lo"] is None
            else f"{r['est_total_lo']:.0f}-{r['est_total_hi']:.0f} "
            f"({r['est_scan'] or 0:.0f} + {r['est_repair_lo']:.0f}-{r['est_repair_hi']:.0f} "
            f"+ {r['est_recheck'] or 0:.0f})",
            "measured s (scan + repair + recheck)": f"{r['total']:.0f} ({r['scan']:.0f} + "
            f"{r['repair']:.0f} + {r['recheck']:.0f})",
            "verdict": _verdict(r),
        }
        for r in rows
    ]
    cols = ["model", "set", "strategy", "estimate s (scan + repair + recheck)",
            "measured s (scan + repair + recheck)", "verdict", "status", "branch"]  # fmt: skip
    _write(args.out, table, cols, "Purifier.estimate against the run (stop 63)", argv)
    return 0


def _write(
    out: str, rows: list[dict[str, Any]], cols: list[str], protocol: str, argv: list[str] | None
) -> None:
    """Write ``benchmarks/results/<out>.{json,md}`` with the command that made them, and print
    the table."""
    command = "python -m benchmarks.purify_estimate " + " ".join(argv or sys.argv[1:])
    write_results(out, rows, cols, {"protocol": protocol, "command": command})
    print(md_table(rows, cols))


if __name__ == "__main__":
    raise SystemExit(main())
