"""``hardenkit scan-fleet``: scan many models, one independent task each (process pool or Ray)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ._common import add_command, add_report_arg, positive_int, write_report

if TYPE_CHECKING:  # torch and the fleet runner are imported in run(): `--help` stays fast
    from ..fleet import FleetStart

EXIT_CODES = (
    "Exit 0 = every model scanned (now or by an earlier run) and none flagged; 1 = a model "
    "flagged (verdict at or above --fail-on, or a scan its time budget cut short that flagged "
    "nothing), none failed; 3 = a model could not be scanned (its error is listed in "
    "DIR/fleet.md; 3 wins over 1), or Ray is missing/unreachable; 2 = a bad manifest "
    "(every bad entry is listed; nothing is scanned) or usage error."
)


def add_parser(sub: Any) -> None:
    p = add_command(
        sub,
        "scan-fleet",
        help="scan many models listed in a manifest, in parallel (process pool or Ray)",
        description="Scan every model of a fleet manifest (YAML or JSON: defaults plus one "
        "entry per model with id, weights, arch or factory, num_classes, data, scan "
        "overrides; see docs/scale.md). Each model is an independent task: a local process "
        "pool by default, a Ray cluster with --ray. Writes DIR/<id>/scan.json per scanned "
        "model (the ScanReport) and DIR/fleet.json, fleet.csv, fleet.md. A model that fails "
        "is listed with its error and never stops the others; a re-run skips the models "
        "whose scan.json is valid for the same weights (sha256) and settings (--force "
        "rescans). " + EXIT_CODES,
    )
    p.add_argument("manifest", type=Path, metavar="MANIFEST", help="fleet manifest (YAML/JSON)")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="output folder: <id>/scan.json per model, fleet.json, fleet.csv, fleet.md",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        metavar="N",
        help="models scanned at once; default: min(CPUs, models to scan) (the Ray cluster's "
        "CPUs with --ray); each scan gets max(1, CPUs // N) torch threads",
    )
    p.add_argument(
        "--ray",
        action="store_true",
        help='run the tasks on Ray (pip install "hardenkit[ray]"): a new local Ray '
        "instance, or the cluster of --ray-address",
    )
    p.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="Ray cluster to connect to, e.g. 'auto' (the cluster `ray start --head` started "
        "on this machine) or ray://HOST:10001; implies --ray",
    )
    p.add_argument(
        "--gpus-per-task",
        type=float,
        default=0.0,
        metavar="G",
        help="GPUs each Ray task requests (Ray hides GPUs from tasks that request none)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="rescan every model, even those with a valid scan.json from an earlier run",
    )
    p.add_argument(
        "--fail-on",
        choices=["backdoored", "suspicious"],
        default="backdoored",
        help="lowest verdict that counts as flagged (exit 1)",
    )
    add_report_arg(p, "FleetReport (fleet.json)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.gpus_per_task < 0:
        raise ConfigError(f"--gpus-per-task must be >= 0, got {args.gpus_per_task}.")
    use_ray = bool(args.ray or args.ray_address)
    if args.gpus_per_task and not use_ray:
        raise ConfigError(
            "--gpus-per-task applies to Ray tasks only.",
            hint="add --ray, or set device in the manifest for the process pool",
        )
    from ..fleet import plan_fleet, require_ray, run_fleet

    if use_ray:
        require_ray()  # a missing package fails in seconds (exit 3), before hashing weights
    plan = plan_fleet(args.manifest, args.out, force=args.force)
    result = run_fleet(
        plan,
        backend="ray" if use_ray else "process",
        workers=args.workers,
        fail_on=args.fail_on,
        ray_address=args.ray_address,
        ray_num_gpus=args.gpus_per_task,
        on_start=_say_plan,
    )
    print(result.report.summary(), file=sys.stderr)
    print(f"wrote {args.out}/ (fleet.json, fleet.csv, fleet.md)", file=sys.stderr)
    write_report(result.report, args.report)
    return result.exit_code


def _say_plan(start: FleetStart) -> None:
    """Before any scan: how many models, how they run, and roughly how long it may take."""
    from .scan_cmd import human_seconds

    plan = start.plan
    todo = len(plan.tasks)
    parts = [f"{plan.num_models} models: {todo} to scan"]
    if plan.skipped:
        parts.append(f"{len(plan.skipped)} skipped (scan.json valid for the same weights)")
    if plan.failed:
        parts.append(f"{len(plan.failed)} failed (unreadable weights)")
    if todo:
        where = (
            f"{start.backend} backend, {_n(start.workers, 'worker')} x "
            f"{_n(start.threads, 'torch thread')}"
        )
        if start.backend == "ray" and start.ray_address:
            where += f", Ray at {start.ray_address}"
        parts.append(where)
    line = f"scan-fleet: {'; '.join(parts)}"
    if todo:
        est = plan.estimate_seconds(start.workers, start.threads)
        line += (
            "; no time estimate"
            if est is None
            else f"; estimated at most ~{human_seconds(est)} (plus worker start-up; early stopping "
            "usually ends sooner)"
        )
    print(line, file=sys.stderr, flush=True)


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
