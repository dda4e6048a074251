"""``hardenkit gate``: may this model ship? Scan, repair, re-scan, measure, export, verify.

Also ``hardenkit schema NAME``: print a published JSON Schema (``gate-policy``, ...).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._common import (
    EXIT_OK,
    add_command,
    add_image_size_arg,
    add_model_args,
    add_report_arg,
    load_data_for,
    load_model_from_args,
    load_policy_file,
    model_metadata_from_args,
    nonnegative_int,
    resolve_model_args,
    write_report,
)

if TYPE_CHECKING:
    from ..gate import DeploymentPolicy


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
        "summary.md (also appended to $GITHUB_STEP_SUMMARY when set), report.html (the "
        "report with figures, for a person), the model that would "
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
        help="output directory: gate.json, junit.xml, gate.sarif, summary.md, report.html, "
        "model.safetensors, model.onnx, scan/, rescan/, and triton/ with the policy's "
        "serving_bundle: triton",
    )
    add_report_arg(p, "GateReport (also written to DIR/gate.json)")
    ml = p.add_argument_group(
        'MLflow (needs `pip install "hardenkit[mlflow]"`)',
        "Log the saved outputs to an MLflow run and register the ONNX model only when the "
        "gate passed. Logging is on when --mlflow-tracking-uri is given, or when "
        "--mlflow-experiment/--register-model is given and $MLFLOW_TRACKING_URI is set "
        "($MLFLOW_TRACKING_URI alone does not turn it on). An MLflow failure exits 3 (a "
        "passed gate's model is then not registered).",
    )
    ml.add_argument(
        "--mlflow-tracking-uri",
        metavar="URI",
        help="MLflow tracking URI, e.g. http://mlflow:5000 or sqlite:///mlflow.db",
    )
    ml.add_argument(
        "--mlflow-experiment",
        metavar="NAME",
        help="MLflow experiment (created when missing; default hardenkit-gate)",
    )
    ml.add_argument(
        "--register-model",
        metavar="NAME",
        help="register a version of this MLflow model when the gate passed, tagged with the "
        "report id and sha256s (never when it failed)",
    )
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
    mlflow_uri = _mlflow_tracking_uri(args, policy)  # before the gate: fail in seconds
    rt = RuntimeConfig(device=args.device, seed=args.seed)
    rt.resolve_device()  # an unusable --device fails here (exit 3)
    model = load_model_from_args(args)
    data = load_data_for(model, args.data, split=args.split, image_size=args.image_size)
    holdout = None
    if args.holdout is not None:
        holdout = load_data_for(
            model,
            args.holdout,
            split=args.holdout_split,
            image_size=args.image_size,
            flag="--holdout",
        )
    rounds = policy.max_repair_rounds
    print(
        f"gate: scan ({policy.scan_budget} budget) -> repair with {policy.strategy} if "
        f"flagged -> re-scan -> measure -> ONNX on {policy.onnx_provider}; "
        f"{_time_estimate(policy, model, data, rt, args.num_classes, holdout is not None)} "
        "(progress below)"
        + (
            f"; max_repair_rounds {rounds}: up to {rounds - 1} more repair and re-scan "
            "round(s) when a re-scan flags a label, for investigation only (a model repaired "
            "in more than one round fails HK-REPAIR-001)"
            if rounds > 1
            else ""
        ),
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
    print(f"wrote {out}/gate.json, junit.xml, gate.sarif, summary.md, report.html", file=sys.stderr)
    if mlflow_uri is not None:
        from ..integrations.mlflow import log_gate

        print(f"gate: logging {out} to MLflow at {mlflow_uri}", file=sys.stderr)
        # an MLflow failure raises IntegrationError: exit 3 whatever the gate decided
        rec = log_gate(
            out,
            tracking_uri=mlflow_uri,
            experiment=args.mlflow_experiment or "hardenkit-gate",
            registered_model_name=args.register_model,
        )
        print(
            f"mlflow: run {rec.run_id} (experiment {rec.experiment_id}); {rec.reason}",
            file=sys.stderr,
        )
    return result.exit_code


def _time_estimate(
    policy: DeploymentPolicy,
    model: Any,
    data: Any,
    rt: Any,
    num_classes: int | None,
    holdout_given: bool = False,
) -> str:
    """How long the gate may take, said before any work: an upper estimate of one scan on
    this model and these images (:func:`hardenkit.scan.estimate_scan_seconds`), and what
    follows when the scan flags a label: the repair's range from the strategy's schedule
    and one timed training step (:meth:`hardenkit.Purifier.estimate`, stop 63) and a
    re-scan. Without a repair estimate (``anp``, ``shapley-pruning``) the measured ratio: in
    the 39 gate runs with a repair in ``benchmarks/results/gate_user_script*.json`` (22
    CIFAR-10 models) the repair took 1.0-5.1 times as long as the scan."""
    from ..purify import Purifier
    from ..scan.budget import scan_config_for_budget
    from .scan_cmd import human_seconds, scan_estimate

    cfg = scan_config_for_budget(policy.scan_budget, policy.scan)
    est = scan_estimate(model, cfg, rt, tuple(data.image_shape), len(data), num_classes)
    if isinstance(est, str):
        scan = f"no time estimate for the scan ({est})"
    else:
        scan = (
            f"one scan estimated at most ~{human_seconds(est[0])} on {est[1]} (early stopping "
            "usually ends sooner)"
        )
    # the gate repairs on its clean images less its held-out split (none with --holdout)
    n = len(data) - (0 if holdout_given else round(len(data) * policy.holdout_fraction))
    repair = None
    with contextlib.suppress(Exception):  # an estimate never stops the gate (a bad config
        # fails in the gate itself, with its own message)
        purifier = Purifier(
            model,
            policy.strategy,
            config=policy.strategy_config or None,
            runtime=rt,
        )
        # the gate passes its scan and its held-out split to the repair
        shape = tuple(data.image_shape)
        repair = purifier.estimate(n, shape, scan_given=True, holdout_given=True).repair
    what = (
        "a repair (often 1-5 times a scan)"
        if repair is None
        else f"a repair ({policy.strategy}: ~{human_seconds(repair[0])}-{human_seconds(repair[1])})"
    )
    return f"{scan}; when it flags a label, {what} and a re-scan follow"


def _mlflow_tracking_uri(args: argparse.Namespace, policy: DeploymentPolicy) -> str | None:
    """The tracking URI to log to, or None when MLflow logging is off.

    On with ``--mlflow-tracking-uri``, or with ``--mlflow-experiment``/``--register-model``
    and ``$MLFLOW_TRACKING_URI``. Checked before the gate runs: a flag without a URI or with
    an empty name, a registration with ``export_onnx: false`` (exit 2) and a missing
    ``mlflow`` package (exit 3) fail before any scan.
    """
    from ..errors import ConfigError

    uri = args.mlflow_tracking_uri
    flags = (uri, args.mlflow_experiment, args.register_model)
    if all(v is None for v in flags):
        return None
    for flag, value in (
        ("--mlflow-tracking-uri", uri),
        ("--mlflow-experiment", args.mlflow_experiment),
        ("--register-model", args.register_model),
    ):
        if value is not None and not value.strip():
            raise ConfigError(f"{flag} is empty.", hint=f"pass a value or leave {flag} out")
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or None
    if uri is None:
        raise ConfigError(
            "--mlflow-experiment/--register-model need an MLflow tracking server, and none "
            "was given.",
            hint="pass --mlflow-tracking-uri URI (e.g. sqlite:///mlflow.db) or set "
            "$MLFLOW_TRACKING_URI",
        )
    if args.register_model is not None and not policy.export_onnx:
        raise ConfigError(
            "--register-model registers the gate's ONNX model, but the policy turns the ONNX "
            "export off (export_onnx: false).",
            hint="remove export_onnx: false from the policy, or drop --register-model",
        )
    from ..integrations.mlflow import require_mlflow

    require_mlflow()
    return str(uri)
