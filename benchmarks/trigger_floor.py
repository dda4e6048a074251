"""Each user-script trigger on the *clean* models of the same architecture: the attack rate a
repair can at best bring the backdoored model down to, and the DER that allows (stop 57).

DER = [max(0, ASR_before − ASR_after) − max(0, BA_before − BA_after) + 1] / 2 can only reach
95 when the planted ASR is at least 90 %: a repair that costs nothing and takes the ASR to
0 scores (ASR_before + 1) / 2. ``gray-blend`` was planted at 73.74 %, so issue 16's "DER >= 95"
cannot be met on it by any repair. A trigger also sends some images of a *clean* model to the
target (the same model family, trained by the same script without poisoning): that rate
(``floor``) is what "the backdoor is gone" looks like, and ``DER at floor`` the DER of a
free repair that reaches it.

    python -m benchmarks.trigger_floor                       # every backdoored model
    python -m benchmarks.trigger_floor --inputs user_script_gray_gray-blend

``--inputs``: committed ``benchmarks.user_script`` results whose repairs are compared with the
floor (later files win for the same model and defence): the ASR each left above the floor
(``excess``) and the share of the removable attack rate it removed. Evaluation only: the
committed fixtures are loaded, nothing is trained (about 90 s on two threads).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch
from torch import nn

import hardenkit as hk

from . import user_script as us
from .common import RESULTS, load_cifar10, md_table, write_results


def _arch(spec: dict[str, Any]) -> str:
    """The architecture a clean twin must share: the spec's ``arch``, ``@<size>`` for a
    ``resolution`` model (stop 58)."""
    arch = str(spec.get("arch", "sequential"))
    return arch if spec.get("resolution") is None else f"{arch}@{spec['resolution']}"


def floors(names: list[str], data: dict[str, hk.ImageDataset]) -> list[dict[str, Any]]:
    """One row per backdoored model: its ASR, its trigger's rate on every clean model of its
    architecture (``floor`` = the highest), and the DER ceilings."""
    xt, yt = data["test"].tensors()
    clean: dict[str, list[str]] = {}
    for c, spec in us.CLEAN_MODELS.items():
        clean.setdefault(_arch(spec), []).append(c)
    cache: dict[str, nn.Module] = {}

    def model(name: str) -> nn.Module:
        if name not in cache:
            cache[name] = us.load_or_train(name, data)[0]
        return cache[name]

    rows: list[dict[str, Any]] = []
    for name in names:
        spec = us.model_spec(name)
        if spec["kind"] == "clean":
            continue
        # the BA and ASR the fixture index recorded when the model was trained (ba_asr)
        _, info = us.load_or_train(name, data)
        ba, asr = float(info["ba"]), float(info["asr"])
        x = us.user_input(xt, spec)
        keep = yt != spec["target"]
        stamped = us.stamp(x[keep], spec)
        to = torch.full_like(yt[keep], spec["target"])
        arch = _arch(spec)
        twins = clean.get(arch, [])
        rates = {c: us.accuracy(model(c), stamped, to) for c in twins}
        floor = max(rates.values()) if rates else None
        rows.append(
            {
                "model": name,
                "arch": arch,
                "target": spec["target"],
                "ba": ba,
                "asr": asr,
                "clean rates": {c: round(100 * r, 2) for c, r in rates.items()},
                "floor": floor,
                "der_max": hk.der(ba_before=ba, ba_after=ba, asr_before=asr, asr_after=0.0),
                "der_at_floor": None
                if floor is None
                else hk.der(ba_before=ba, ba_after=ba, asr_before=asr, asr_after=floor),
            }
        )
    return rows


def compare(rows: list[dict[str, Any]], inputs: list[str]) -> list[dict[str, Any]]:
    """The repairs of ``inputs`` (``benchmarks.user_script`` results) beside each floor."""
    by_model = {r["model"]: r for r in rows}
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for name in inputs:
        for r in json.loads((RESULTS / f"{name}.json").read_text())["rows"]:
            if r["defence"] != "none" and r["model"] in by_model and r.get("asr") is not None:
                found[(r["model"], r["defence"])] = {**r, "source": name}
    out: list[dict[str, Any]] = []
    for (model, defence), r in sorted(found.items()):
        f = by_model[model]
        removable = f["asr"] - (f["floor"] or 0.0)
        out.append(
            {
                "model": model,
                "defence": defence,
                "ASR %": 100 * r["asr"],
                "floor %": None if f["floor"] is None else 100 * f["floor"],
                "excess": None if f["floor"] is None else 100 * (r["asr"] - f["floor"]),
                "removed %": None
                if removable <= 0
                else 100 * min(1.0, (f["asr"] - r["asr"]) / removable),
                "BA drop": 100 * r["ba_drop"],
                "DER %": 100 * r["der"],
                "DER max %": 100 * f["der_max"],
                "status": r.get("status"),
                "source": r["source"],
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", default=",".join(us.MODELS), help="comma-separated")
    p.add_argument("--inputs", default="", help="comma-separated user_script result names")
    p.add_argument("--out", default="trigger_floor", help="results name")
    args = p.parse_args(argv)
    names = [m for m in args.models.split(",") if m]
    unknown = sorted(set(names) - set(us.MODELS))
    if unknown:
        raise SystemExit(f"unknown backdoored model(s) {unknown}; known: {sorted(us.MODELS)}")
    rows = floors(names, load_cifar10())
    table = [
        {
            **r,
            "BA %": 100 * r["ba"],
            "ASR %": 100 * r["asr"],
            "floor %": None if r["floor"] is None else 100 * r["floor"],
            "DER max %": 100 * r["der_max"],
            "DER at floor %": None if r["der_at_floor"] is None else 100 * r["der_at_floor"],
        }
        for r in rows
    ]
    cols = ["model", "arch", "target", "BA %", "ASR %", "clean rates", "floor %", "DER max %",
            "DER at floor %"]  # fmt: skip
    body = md_table(table, cols)
    repairs = compare(rows, [n for n in args.inputs.split(",") if n])
    rcols = ["model", "defence", "ASR %", "floor %", "excess", "removed %", "BA drop", "DER %",
             "DER max %", "status", "source"]  # fmt: skip
    if repairs:
        body += "\n## Repairs against the floor\n\n" + md_table(repairs, rcols)
    write_results(
        args.out,
        table,
        cols,
        {
            "repairs": repairs,
            "command": "python -m benchmarks.trigger_floor " + " ".join(argv or sys.argv[1:]),
        },
        body=body,
    )
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
