"""Issue 16's purification table, assembled from the committed CPU results (no model runs).

    python -m benchmarks.issue16_table          # writes benchmarks/results/issue16_table.*
    python -m benchmarks.issue16_table --check    # exit 1 when a source cell is missing

Every number is a cell of a committed ``benchmarks/results/purify_cpu_*.json`` written by
``benchmarks.purify_cpu`` (the command that made it is in that file's ``command`` field and in
``docs/benchmarks.md``). This script only picks, per *role* (the default as shipped, the
default when its scan misses, each seed method's hardened default and ``paper`` preset), the
result file that measured the role's current code path, and aggregates the seeds: BA drop
(points), ASR, RA and DER against the same file's undefended row, seconds, mean and worst
case. It then checks issue 16's acceptance items on the CPU protocol and says, per item and
cell, met or not.

Seconds are wall time on the shared 2-core machine, usually beside another job: compare them
within a row, not across files.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import RESULTS, write_results
from .purify_cpu import seed_stats

FAMILIES = {"cifar-cnn": "", "residual": "preact-"}
ATTACKS = ("badnets", "blended", "wanet", "sig")
SEEDS = ("", "-s1")


@dataclass(frozen=True)
class Source:
    """Cells of one role: ``defence`` rows of ``files`` (later files win), optionally limited
    to fixtures whose attack is in ``attacks``."""

    files: tuple[str, ...]
    defence: str
    attacks: tuple[str, ...] = ATTACKS


# role -> the sources of its cells, in order (a later source overrides an earlier one)
ROLES: dict[str, tuple[Source, ...]] = {
    # Purifier(model).run(clean_loader): auto with its own quick scan; all 16 cells re-measured
    # with today's code at stop 52 (stops 36 / 38 / 51 had measured them under older scans)
    "default": (Source(("purify_cpu_default_s52",), "auto-quick"),),
    # the same call with the quick scan's flags removed: stop 38's checked MCL, re-measured on
    # all 16 cells at stop 51 with today's default (+ the signal's own checked MCL run)
    "default, scan misses": (
        Source(("purify_cpu_checked_mcl",), "auto-quick-miss-cmcl"),
        Source(("purify_cpu_signal_miss",), "auto-quick-miss"),
    ),
    # MCL's hardened default (anchor 3, most anomalous label, best validated epoch); the
    # BadNets and Blended cells re-measured with today's code and protocol scans at stop 52
    # (the WaNet / SIG cells, `refused` / `nothing-to-purify`, are stop 35's)
    "mcl": (
        Source(("purify_cpu_cifar_cnn_seeds", "purify_cpu_preact_family"), "mcl-anchor3"),
        Source(("purify_cpu_mcl_s52",), "mcl-anchor3", ("badnets", "blended")),
    ),
    "mcl paper": (
        Source(("purify_cpu_cifar_cnn_seeds", "purify_cpu_preact_mcl_paper"), "mcl-paper"),
    ),
    # D3's default (the code's procedure, λ 0.5, best validation epoch)
    "d3": (Source(("purify_cpu_d3_head",), "d3-0.5"),),
    "d3 paper": (
        Source(
            ("purify_cpu_d3_paper", "purify_cpu_d3_paper_s1", "purify_cpu_preact_d3_paper"),
            "d3-paper",
        ),
    ),
    "d3 last-layer": (Source(("purify_cpu_d3_head",), "d3-head-rel-30"),),
}


NOT_RUN: dict[tuple[str, str], str] = {
    (role, f"preact-{attack}-0.1{seed}"): (
        "MCL needs a recovered trigger; the protocol's scan recovered none for WaNet or SIG "
        "(the cifar-cnn cells and the residual seed-0 cells of mcl are `refused` / "
        "`nothing-to-purify`)"
    )
    for role in ("mcl", "mcl paper")
    for attack in ("wanet", "sig")
    for seed in SEEDS
    if not (role == "mcl" and seed == "")
}
"""(role, fixture) cells deliberately not measured, with the reason (not gaps for --check)."""


def fixture_name(family: str, attack: str, seed: str) -> str:
    return f"{FAMILIES[family]}{attack}-0.1{seed}"


def load_cells(results: Path = RESULTS) -> tuple[dict[tuple[str, str], dict[str, Any]], list[str]]:
    """(role, fixture) -> the cell (``details`` entry of the result file, plus ``source``)."""
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    missing_files: list[str] = []
    for role, sources in ROLES.items():
        for src in sources:
            for name in src.files:
                path = results / f"{name}.json"
                if not path.exists():
                    missing_files.append(name)
                    continue
                data = json.loads(path.read_text())
                for c in data.get("details", []):
                    if c.get("defence") == src.defence and c.get("attack") in src.attacks:
                        cells[(role, c["fixture"])] = {**c, "source": name}
    return cells, sorted(set(missing_files))


def aggregate(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean / worst over the seeds' cells (``purify_cpu.seed_stats``) and their source files."""
    return {**seed_stats(cells), "sources": ", ".join(sorted({c["source"] for c in cells}))}


def build(results: Path = RESULTS) -> dict[str, Any]:
    cells, missing_files = load_cells(results)
    rows: list[dict[str, Any]] = []
    missing_cells: list[str] = []
    for family in FAMILIES:
        for attack in ATTACKS:
            for role in ROLES:
                got = []
                for seed in SEEDS:
                    fx = fixture_name(family, attack, seed)
                    if (role, fx) in cells:
                        got.append(cells[(role, fx)])
                    elif (role, fx) not in NOT_RUN:
                        missing_cells.append(f"{role} / {fx}")
                if got:
                    rows.append(
                        {"family": family, "attack": attack, "role": role, **aggregate(got)}
                    )
    return {
        "rows": rows,
        "acceptance": acceptance(rows),
        "missing_files": missing_files,
        "missing_cells": missing_cells,
    }


def _row(rows: list[dict[str, Any]], family: str, attack: str, role: str) -> dict[str, Any] | None:
    for r in rows:
        if (r["family"], r["attack"], r["role"]) == (family, attack, role):
            return r
    return None


def _meets(r: dict[str, Any] | None, asr: float, drop: float) -> bool:
    """Worst case over the seeds (and at least two seeds) within both bounds."""
    return (
        r is not None and r["seeds"] >= 2 and r["worst ASR %"] <= asr and r["worst BA drop"] <= drop
    )


def _closest(rows: list[dict[str, Any]], family: str, attack: str) -> str:
    """For an unmet ASR <= 2 % / drop <= 1.5 item: the role with the least worst-case drop
    among those whose worst ASR is within 2 %."""
    near = [
        x
        for x in rows
        if (x["family"], x["attack"]) == (family, attack)
        and x["seeds"] >= 2
        and x["worst ASR %"] <= 2
    ]
    if not near:
        return "none of the roles reaches ASR <= 2 % on every seed"
    x = min(near, key=lambda x: x["worst BA drop"])
    return f"closest: {x['role']}, drop {x['worst BA drop']:.2f}, ASR {x['worst ASR %']:.2f} %"


def acceptance(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 16's CPU acceptance items, per family and attack, on the worst seed."""
    out: list[dict[str, Any]] = []

    def add(item: str, family: str, attack: str, met: bool, evidence: str) -> None:
        out.append(
            {"item": item, "family": family, "attack": attack, "met": met, "evidence": evidence}
        )

    def brief(r: dict[str, Any] | None) -> str:
        if r is None:
            return "not measured"
        return (
            f"{r['role']}: drop {r['worst BA drop']:.2f}, ASR {r['worst ASR %']:.2f} %, "
            f"DER {r['worst DER %']:.1f} (worst of {r['seeds']})"
        )

    for family in FAMILIES:
        for attack in ATTACKS:
            if attack in ("badnets", "blended"):
                r = _row(rows, family, attack, "mcl")
                add("MCL: ASR <= 2 %, drop <= 2", family, attack, _meets(r, 2, 2), brief(r))
            r = _row(rows, family, attack, "d3")
            add("D3 default: ASR <= 5 %, drop <= 3", family, attack, _meets(r, 5, 3), brief(r))
            best = [
                x
                for x in rows
                if (x["family"], x["attack"]) == (family, attack) and _meets(x, 2, 1.5)
            ]
            best.sort(key=lambda x: (x["worst BA drop"], x["worst ASR %"]))
            add(
                "some strategy: ASR <= 2 %, drop <= 1.5",
                family,
                attack,
                bool(best),
                brief(best[0]) if best else _closest(rows, family, attack),
            )
            for role in ("default", "default, scan misses"):
                r = _row(rows, family, attack, role)
                ok = r is not None and r["seeds"] >= 2 and r["worst DER %"] >= 95
                add(f"{role}: DER >= 95", family, attack, ok, brief(r))
    return out


def markdown(table: dict[str, Any]) -> str:
    md = [
        "## Per family, attack and role (mean / worst over the seeds)\n",
        "| family | attack | role | seeds | BA drop mean / worst | ASR % mean / worst | RA % mean "
        "| DER % mean / worst | mean seconds | statuses | source |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table["rows"]:
        md.append(
            f"| {r['family']} | {r['attack']} | {r['role']} | {r['seeds']} "
            f"| {r['mean BA drop']:.2f} / {r['worst BA drop']:.2f} "
            f"| {r['mean ASR %']:.2f} / {r['worst ASR %']:.2f} | {r['mean RA %']:.2f} "
            f"| {r['mean DER %']:.1f} / {r['worst DER %']:.1f} | {r['mean seconds']:.0f} "
            f"| {r['statuses']} | {r['sources']} |"
        )
    md += [
        "\n## Acceptance (issue 16, CPU protocol, worst seed)\n",
        "| item | family | attack | met | evidence |",
        "|---|---|---|---|---|",
    ]
    for a in table["acceptance"]:
        md.append(
            f"| {a['item']} | {a['family']} | {a['attack']} | "
            f"{'**yes**' if a['met'] else 'no'} | {a['evidence']} |"
        )
    met = sum(a["met"] for a in table["acceptance"])
    md.append(f"\n{met} of {len(table['acceptance'])} met.")
    md.append(
        "\nNot run by design: "
        + ", ".join(f"{r} / {fx}" for r, fx in NOT_RUN)
        + f" — {next(iter(NOT_RUN.values()))}."
    )
    if table["missing_cells"]:
        md.append("\nNot measured: " + "; ".join(table["missing_cells"]) + ".")
    return "\n".join(md) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when a source file or cell is missing (writes nothing)",
    )
    ap.add_argument("--out", default="issue16_table", help="results name")
    args = ap.parse_args(argv)
    table = build()
    if args.check:
        gaps = table["missing_files"] + table["missing_cells"]
        for g in gaps:
            print(f"missing: {g}")
        return 1 if gaps else 0
    columns = [
        "family",
        "attack",
        "role",
        "seeds",
        "mean BA drop",
        "worst BA drop",
        "mean ASR %",
        "worst ASR %",
        "mean RA %",
        "mean DER %",
        "worst DER %",
        "mean seconds",
        "statuses",
        "sources",
    ]
    path = write_results(
        args.out,
        table["rows"],
        columns,
        {
            "command": "python -m benchmarks.issue16_table",
            "roles": {
                role: [
                    {"files": list(s.files), "defence": s.defence, "attacks": list(s.attacks)}
                    for s in srcs
                ]
                for role, srcs in ROLES.items()
            },
            "acceptance": table["acceptance"],
            "missing_files": table["missing_files"],
            "missing_cells": table["missing_cells"],
        },
        body=markdown(table),
    )
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
