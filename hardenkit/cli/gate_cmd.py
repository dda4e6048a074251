"""``hardenkit gate``: may this model ship? Scan, repair, re-scan, measure, export, verify.

Also ``hardenkit schema NAME``: print a published JSON Schema (``gate-policy``, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ._common import (
    EXIT_OK,
    add_command,
    add_image_size_arg,
    add_model_args,
    add_report_arg,
    load_data_arg,
    load_model_from_args,
    load_policy_file,
    model_metadata_from_args,
    nonnegative_int,
    resolve_model_args,
    write_report,
)


def add_parser(sub: Any) -> None:
    p = add_command(
        sub,
        "gate",
        help="pre-deployment gate: scan, repair if flagged, re-scan, measure, export, decide",
        description="Decide whether a model of unknown provenance may ship. Scan it; when the "
        "scan is not clean and the policy allows, repair it and re-scan the repaired model; "
        "measure benign accuracy and every recovered trigger's ASR on held-out images; export "
        "to ONNX and verify it on ONNX Runtime; judge every rule of the policy (fail closed: a "
        "rule that cannot be evaluated fails). Writes gate.json, junit.xml, gate.sarif, "
        "summary.md (also appended to $GITHUB_STEP_SUMMARY when set), the model that would "
        "ship (model.safetensors, model.onnx) and the scans to --out. Exit 0 = passed, 1 = a "
        "rule failed, 2 = usage/config/input error (e.g. a policy typo, overlapping data), "
        "3 = environment error (e.g. the policy's ONNX Runtime provider is missing).",
    )
    add_model_args(p)
    p.add_argument(
        "--data",
        required=True,
        help="clean images you trust (scan and repair): ImageFolder directory, .tar.gz "
        "archive (ImageFolder layout) or 'synthetic'",
    )
    p.add_argument("--split", default="train", help="split folder inside --data")
    p.add_argument(
        "--holdout",
        help="held-out clean images for the measurements (same forms as --data); default: "
        "the policy's holdout_fraction of --data. Must not share images with --data",
    )
    p.add_argument("--holdout-split", default="test", help="split folder inside --holdout")
    add_image_size_arg(p)
    p.add_argument(
        "--policy",
        type=Path,
        help="gate policy file (YAML or JSON; `hardenkit schema gate-policy` prints its "
        "schema); default: the documented default policy (docs/gate.md)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of splits and scans")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="output directory: gate.json, junit.xml, gate.sarif, summary.md, "
        "model.safetensors, model.onnx, scan/, rescan/",
    )
    add_report_arg(p, "GateReport (also written to DIR/gate.json)")
    p.set_defaults(func=run)

    s = add_command(
        sub,
        "schema",
        help="print a JSON Schema of a hardenkit config or report (e.g. gate-policy)",
        description="Print the JSON Schema (draft 2020-12) of a config file hardenkit reads "
        "or a report it writes. Names: gate-policy, gate-report, validation-policy, "
        "scan-config, scan-report, purification-report, training-report, validation-report, "
        "demo-report, runtime-config, train-config.",
    )
    s.add_argument("name", help="schema name, e.g. gate-policy")
    s.set_defaults(func=run_schema)


def run_schema(args: argparse.Namespace) -> int:
    from ..schemas import json_schema

    print(json.dumps(json_schema(args.name), indent=2, ensure_ascii=False))
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    from ..config import RuntimeConfig
    from ..gate import DeploymentPolicy, Gate

    resolve_model_args(args)
    fields: dict[str, Any] = load_policy_file(args.policy, "gate policy") if args.policy else {}
    policy = DeploymentPolicy(**fields)  # a typo is a ConfigError (exit 2) before any work
    rt = RuntimeConfig(device=args.device, seed=args.seed)
    rt.resolve_device()  # an unusable --device fails here (exit 3)
    model = load_model_from_args(args)
    data = load_data_arg(args.data, split=args.split, image_size=args.image_size)
    holdout = None
    if args.holdout is not None:
        holdout = load_data_arg(args.holdout, split=args.holdout_split, image_size=args.image_size)
    print(
        f"gate: scan ({policy.scan_budget} budget) -> repair with {policy.strategy} if "
        f"flagged -> re-scan -> measure -> ONNX on {policy.onnx_provider}; on this machine "
        "roughly 1-2 scans of a few minutes each plus a repair of a few minutes when "
        "flagged (progress below)",
        file=sys.stderr,
    )
    result = Gate(policy, runtime=rt).run(
        model,
        data.loader(batch_size=512),
        None if holdout is None else holdout.loader(batch_size=512),
        num_classes=args.num_classes,
        weights_metadata=model_metadata_from_args(args),
    )
    out: Path = args.out
    result.save(out)
    print(result.report.summary(), file=sys.stderr)
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary:
        with open(step_summary, "a", encoding="utf-8") as fh:
            fh.write((out / "summary.md").read_text())
    write_report(result.report, args.report)
    print(f"wrote {out}/gate.json, junit.xml, gate.sarif, summary.md", file=sys.stderr)
    return result.exit_code
