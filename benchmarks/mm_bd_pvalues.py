"""MM-BD's p-value and flagged label on the committed CIFAR-10 models.

    python -m benchmarks.mm_bd_pvalues                                  # every model below
    python -m benchmarks.mm_bd_pvalues --models user:stripes,user:clean # some

Stop 49: a held-out user-script model poisoned with additive diagonal stripes passed
``hardenkit gate`` unrepaired (the default scan's Neural Cleanse, warp inversion and
prediction share all read it clean), and data-free MM-BD flagged its target. Should MM-BD join
the scan presets, and at which ``alpha``? This script measures what that would add: MM-BD with
the reference's settings (30 starts x up to 300 steps; seed 0, one CPU thread), its decision
at ``--alpha`` (default 0.001), on

* ``user:<name>`` — the ``benchmarks.user_script`` fixtures (five backdoored, one clean);
* ``protocol:<name>`` — the ``cifar10-cpu`` protocol fixtures (``cifar-cnn`` and the residual
  family; four attacks, two seeds).

MM-BD needs no data, so its result does not depend on which clean images a scan is given:
the label it flags here is the label it would add to any scan of the same weights. The
scanner zoo's MM-BD p-values (same settings, ``alpha`` aside) are in
``benchmarks/results/scanner_zoo.json`` (``mm_bd_p``). Each model's row is cached in
``benchmarks/cache/mm_bd_pvalues/``; writes ``benchmarks/results/<out>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch

from .common import CACHE, config_hash, load_cached, md_table, save_cached, write_results
from .scanner_zoo import _mm_bd

USER = [
    "patch-tl",
    "patch-mid",
    "blend-smooth",
    "stripes",
    "warp",
    "ripple",
    "clean",
    "clean-s1",
    "clean-s2",
]
PROTOCOL = [
    f"{fam}{attack}-0.1{seed}"
    for fam in ("", "preact-")
    for attack in ("badnets", "blended", "wanet", "sig")
    for seed in ("", "-s1")
]
ALL = [*(f"user:{m}" for m in USER), *(f"protocol:{m}" for m in PROTOCOL)]


def _load(name: str) -> tuple[torch.nn.Module, int | None]:
    """(model, target) of ``user:<name>`` or ``protocol:<name>`` (committed weights only)."""
    kind, _, model_name = name.partition(":")
    if kind == "user":
        from .user_script import FIXTURES, load_or_train, model_spec

        if not (FIXTURES / f"{model_name}.safetensors").is_file():
            raise SystemExit(f"{name}: not trained; run benchmarks.user_script --train-only")
        model, _ = load_or_train(model_name, {})  # committed weights: no data needed
        return model, model_spec(model_name)["target"]
    from .cifar_fixtures import load_fixture

    model, trigger, _, info = load_fixture(model_name)
    return model, (None if trigger is None else int(info["config"].get("target", 0)))


def run_model(name: str, alpha: float, starts: int = 30) -> dict[str, Any]:
    # ``starts`` enters the options (and the cache key) only when it is not the reference's
    mm: dict[str, Any] = {"alpha": alpha} if starts == 30 else {"alpha": alpha, "starts": starts}
    key = config_hash({"model": name, "mm_bd": mm, "v": 1})
    cache = CACHE / "mm_bd_pvalues" / f"{name.replace(':', '-')}-{key}.json"
    cached = load_cached(cache)
    if cached is not None:
        return cached
    model, target = _load(name)
    m = _mm_bd(model, 0, mm)  # the scanner zoo's MM-BD run, with these options
    row = {
        "model": name,
        "target": target,
        "p": m["mm_bd_p"],
        "flagged": m["mm_bd_flags"],
        "verdict": m["mm_bd_verdict"],
        "flags target": (target in m["mm_bd_flags"]) if target is not None else None,
        "margins": m["mm_bd_margins"],
        "seconds": m["mm_bd_s"],
    }
    return save_cached(cache, row)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", default=",".join(ALL), help="comma-separated user:/protocol:")
    p.add_argument("--alpha", type=float, default=0.001, help="MM-BD's decision level")
    p.add_argument("--starts", type=int, default=30, help="random starts per class (reference: 30)")
    p.add_argument("--out", default="mm_bd_pvalues", help="results name")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    names = [m for m in args.models.split(",") if m]
    unknown = sorted(set(names) - set(ALL))
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; known: {ALL}")
    rows = []
    for name in names:
        print(f"[{time.strftime('%H:%M:%S')}] mm-bd {name} ...", flush=True)
        r = run_model(name, args.alpha, args.starts)
        print(json.dumps({k: r[k] for k in ("model", "target", "p", "flagged", "seconds")}))
        rows.append(r)
    cols = ["model", "target", "p", "flagged", "flags target", "verdict", "seconds"]
    table = [{**r, "p": f"{r['p']:.3g}"} for r in rows]
    write_results(
        args.out,
        table,
        cols,
        {
            "alpha": args.alpha,
            "starts": args.starts,
            "torch_threads": torch.get_num_threads(),
            "command": "python -m benchmarks.mm_bd_pvalues " + " ".join(argv or sys.argv[1:]),
        },
    )
    print(md_table(table, cols))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
