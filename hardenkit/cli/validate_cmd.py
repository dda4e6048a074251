"""``hardenkit validate``: BA/ASR/RA of a model file against a gate policy."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ._common import (
    EXIT_GATE_FAILED,
    EXIT_OK,
    add_command,
    add_deprecated_alias,
    add_image_size_arg,
    add_model_args,
    add_report_arg,
    load_data_for,
    load_model_from_args,
    load_policy_file,
    load_trigger_arg,
    parse_target,
    positive_int,
    resolve_model_args,
    write_report,
)


def add_parser(sub: Any) -> None:
    p = add_command(
        sub,
        "validate",
        help="measure BA/ASR/RA of a model and apply a gate policy",
        description="Measure benign accuracy, attack success rate and robust accuracy of a "
        "model on held-out data and apply a gate policy. Exit 0 = pass, 1 = policy failed, "
        "2 = usage/input error, 3 = runtime or environment error (e.g. --device cuda "
        "without CUDA).",
    )
    add_model_args(p)
    p.add_argument(
        "--data",
        required=True,
        help="ImageFolder directory, .tar.gz archive in ImageFolder layout, or 'synthetic'",
    )
    p.add_argument("--split", default="test", help="split folder inside --data")
    add_image_size_arg(p)
    p.add_argument(
        "--trigger",
        help="trigger .safetensors file, or attack spec such as 'badnets:patch_size=3'",
    )
    p.add_argument(
        "--target",
        help="target label of the trigger (all-to-one), or 'all-to-all' for label y -> y+1",
    )
    p.add_argument("--policy", type=Path, help="gate policy file (JSON or YAML)")
    p.add_argument("--min-ba", type=float, help="policy: minimum BA (fraction)")
    p.add_argument("--max-asr", type=float, help="policy: maximum ASR (fraction)")
    p.add_argument("--max-ba-drop", type=float, help="policy: maximum BA drop vs --baseline-ba")
    p.add_argument(
        "--max-trigger-share",
        type=float,
        help="policy: maximum share of triggered images moved to one class other than the "
        "target and their own (a redirected backdoor; default 0.5)",
    )
    p.add_argument(
        "--skip-chance-check",
        action="store_true",
        help="policy: no HK-DATA-002 rule (by default a model no better than chance "
        "on the images fails: the images or labels do not fit it)",
    )
    p.add_argument("--baseline-ba", type=float, help="BA of the model before repair")
    p.add_argument("--batch-size", type=positive_int, default=256, help="evaluation batch size")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add_report_arg(p, "ValidationReport")
    add_deprecated_alias(p, "--output", "-o", new="--report", dest="report", type=Path)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import RuntimeConfig
    from ..validate import GatePolicy, Validator

    if (args.trigger is None) != (args.target is None):
        raise ConfigError("--trigger and --target go together.", hint="pass both or neither")
    # cheap checks of the user's inputs first: the policy and the target
    fields: dict[str, Any] = load_policy_file(args.policy) if args.policy else {}
    for key in ("min_ba", "max_asr", "max_ba_drop", "max_trigger_share"):
        if getattr(args, key) is not None:
            fields[key] = getattr(args, key)
    if args.skip_chance_check:
        fields["require_above_chance"] = False
    policy = GatePolicy(**fields)
    resolve_model_args(args)  # --num-classes may come from the weights file
    target = parse_target(args.target, args.num_classes)
    rt = RuntimeConfig(device=args.device)
    model = load_model_from_args(args)
    data = load_data_for(model, args.data, split=args.split, image_size=args.image_size)
    trigger = None
    if args.trigger is not None:
        c, h, _ = data.image_shape
        trigger = load_trigger_arg(args.trigger, image_size=h, channels=c)
    report = Validator(model, num_classes=args.num_classes, runtime=rt, policy=policy).run(
        data.loader(batch_size=args.batch_size),
        trigger=trigger,
        target=target,
        baseline_ba=args.baseline_ba,
    )
    print(report.summary(), file=sys.stderr)
    write_report(report, args.report)
    return EXIT_OK if report.passed else EXIT_GATE_FAILED
