"""The utility guard's paired interval of the BA drop: does it hold the test set's drop.

    python -m benchmarks.purify_cpu --only badnets-0.1 --only blended-0.1 --only wanet-0.1 \\
        --only sig-0.1 --defence auto-quick-ci --out purify_cpu_utility_interval_cnn
    python -m benchmarks.purify_cpu --only preact-badnets-0.1 --only preact-blended-0.1 \\
        --only preact-wanet-0.1 --only preact-sig-0.1 --defence auto-quick-ci \\
        --out purify_cpu_utility_interval_res
    python -m benchmarks.utility_interval_table

The first two commands run the shipped default, ``Purifier(model).run(clean_loader)``, on the
CIFAR-10 protocol fixtures (both families, seed 0) and record its utility guard (stop 55):
the BA before / after on the held-out 10 % of the clean budget (250 of its 2,500 images,
which are *training* images of the model) and the paired 95 % interval of the drop
(``hk.validate.paired_drop_interval``). This script sets each beside the drop on the full
CIFAR-10 test set (10,000 images the model never saw) and says whether the interval holds it,
whether the held-out verdict (drop <= ``max_ba_drop``) is the test set's, and whether the
"cannot tell" note fired. Writes ``benchmarks/results/utility_interval.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .common import ROOT, md_table, write_results

SOURCES = ("purify_cpu_utility_interval_cnn", "purify_cpu_utility_interval_res")
NOTE_MARKS = ("cannot rule out a larger loss", "cannot tell this drop from one within")


def rows_of(source: str) -> list[dict[str, Any]]:
    """One table row per repaired cell of a ``purify_cpu`` results file."""
    path = ROOT / "results" / f"{source}.json"
    if not path.is_file():
        print(f"missing {path.name}: run the commands in this module's docstring", flush=True)
        return []
    out: list[dict[str, Any]] = []
    for r in json.loads(path.read_text())["details"]:
        guard = r.get("utility_guard")
        if r["defence"] == "none" or not guard or guard.get("drop_interval") is None:
            continue
        lo, hi = guard["drop_interval"]
        held_out = guard["ba_before"] - guard["ba_after"]
        test = r["ba_drop"]
        bound = guard["max_ba_drop"]
        notes = r.get("notes") or []
        out.append(
            {
                "fixture": r["fixture"],
                "model": r["model"],
                "status": r["status"],
                "held-out images": guard["images"],
                "held-out BA before %": 100 * guard["ba_before"],
                "held-out BA after %": 100 * guard["ba_after"],
                "held-out drop": 100 * held_out,
                "95% interval": f"{100 * lo:.2f} to {100 * hi:.2f}",
                "width": 100 * (hi - lo),
                "test drop": 100 * test,
                "holds test drop": lo <= test <= hi,
                "same verdict": (held_out <= bound) == (test <= bound),
                "note": any(m in n for n in notes for m in NOTE_MARKS),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="utility_interval", help="results name")
    args = p.parse_args(argv)
    rows = [row for source in SOURCES for row in rows_of(source)]
    if not rows:
        return 1
    cols = [
        "fixture",
        "model",
        "status",
        "held-out images",
        "held-out BA before %",
        "held-out BA after %",
        "held-out drop",
        "95% interval",
        "width",
        "test drop",
        "holds test drop",
        "same verdict",
        "note",
    ]
    held = sum(r["holds test drop"] for r in rows)
    same = sum(r["same verdict"] for r in rows)
    notes = sum(r["note"] for r in rows)
    summary = (
        f"The interval held the test-set drop in {held} of {len(rows)} repairs; the held-out "
        f"verdict was the test set's in {same} of {len(rows)}; the 'cannot tell' note fired on "
        f"{notes}."
    )
    write_results(
        args.out,
        rows,
        cols,
        {
            "protocol": "utility guard interval (stop 55)",
            "sources": list(SOURCES),
            "summary": summary,
            "command": " ".join(["python -m benchmarks.utility_interval_table", *(argv or [])]),
        },
        body=md_table(rows, cols) + f"\n{summary}\n",
    )
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
