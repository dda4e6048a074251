"""Example 01: plant a backdoor, then measure it with the Validator and a gate policy.

What it shows:
    * ``hk.make_synthetic_dataset``: deterministic CIFAR-like data, no download;
    * ``hk.make_backdoored_model``: poison the training set with a built-in attack and train a
      zoo ``small-cnn`` on it (the red-team side, used to test defences);
    * a clean model trained with the same recipe, whose benign accuracy (BA) is the baseline
      of the ``max_ba_drop`` rule;
    * ``hk.Validator`` with a ``hk.GatePolicy``: BA, attack success rate (ASR) and robust
      accuracy (RA) with 95% Wilson intervals, and a pass/fail decision per rule;
    * saving the JSON report (schema: docs/schemas/validation-report.schema.json) and the
      backdoored model + trigger as safetensors.

The default run is tiny (4 classes, 400 training images, 5 epochs: a few seconds of CPU).
``--no-quick`` runs a 10-class, 5,000-image version that takes minutes on a CPU. The quick
setting plants the default attack (Blended, alpha 0.3) reliably; the other attacks need the
larger ``--no-quick`` run to reach a high ASR.

    python examples/01_backdoor_and_validate.py
    python examples/01_backdoor_and_validate.py --attack badnets --no-quick --out runs/01

The backdoored model is expected to FAIL the gate (its ASR is high) and the clean model to
PASS it. The script exits 0 either way: it is a demonstration, not a gate.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

import hardenkit as hk


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="tiny data and few epochs (default); --no-quick for a 10-class, 5,000-image run",
    )
    p.add_argument("--attack", default="blended", choices=["badnets", "blended", "wanet", "sig"])
    p.add_argument("--out", type=Path, default=None, help="output directory (default: a temp dir)")
    p.add_argument("--device", default="cpu", help="auto, cpu or cuda")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    # An application may configure logging; the library itself never does. Events such as
    # ``attack.trained`` and ``validate.done`` then appear on stderr as key=value lines.
    hk.configure_logging(fmt="console", level="INFO")

    if args.quick:
        data = hk.make_synthetic_dataset(
            num_classes=4, train_per_class=100, test_per_class=25, seed=args.seed
        )
        train_cfg = hk.TrainConfig(epochs=5, batch_size=32, lr=0.05, augment=False)
        # A stronger blend than BackdoorBench's 0.2 so the backdoor is planted in 5 epochs.
        attack_cfg: dict[str, object] = {"target": 0, "poison_rate": 0.1}
        if args.attack == "blended":
            attack_cfg["alpha"] = 0.3
    else:
        data = hk.make_synthetic_dataset(
            num_classes=10, train_per_class=500, test_per_class=100, seed=args.seed
        )
        train_cfg = hk.TrainConfig(epochs=8, batch_size=128, lr=0.05, augment=False)
        attack_cfg = {"target": 0, "poison_rate": 0.1}
    if args.attack == "wanet":
        # WaNet's default sub-pixel warp barely changes the smooth synthetic images.
        attack_cfg.update({"s": 2.0, "cross_ratio": 0.5})
    runtime = hk.RuntimeConfig(device=args.device, seed=args.seed, progress="off")
    print(f"data: {data.train!r} / test {data.test!r}")

    # 1. The red-team side: poison the training set and train a backdoored model.
    bd = hk.make_backdoored_model(
        args.attack,
        data.train,
        arch="small-cnn",
        attack_config=attack_cfg,
        train_config=train_cfg,
        runtime=runtime,
    )
    print(
        f"trained a backdoored small-cnn ({args.attack}, "
        f"{len(bd.poisoned.poison_indices)} poisoned images) in {bd.history.seconds:.1f}s"
    )

    # 2. A clean model trained with the same recipe gives the BA baseline.
    torch.manual_seed(args.seed)
    clean = hk.create_model("small-cnn", num_classes=data.train.num_classes)
    x, y = data.train.tensors()
    hk.train_model(clean, x, y, train_cfg, runtime=runtime)
    baseline_ba = hk.Validator(clean, runtime=runtime).run(data.test.loader()).ba
    print(f"clean baseline BA = {100 * baseline_ba:.2f}%")

    # 3. The gate: every threshold is a fraction in [0, 1].
    policy = hk.GatePolicy(min_ba=0.60, max_asr=0.10, max_ba_drop=0.05)
    validator = hk.Validator(bd.model, num_classes=data.train.num_classes, runtime=runtime)
    report = validator.run(
        data.test.loader(batch_size=256),
        trigger=bd.trigger,
        target=bd.target,
        baseline_ba=baseline_ba,
        policy=policy,
    )
    print("\nbackdoored model:")
    print(report.summary())
    for rule in report.decision.rules if report.decision else []:
        print(f"  {rule.rule_id}: {rule.message}")

    clean_report = hk.Validator(clean, runtime=runtime, policy=policy).run(
        data.test.loader(), trigger=bd.trigger, target=bd.target, baseline_ba=baseline_ba
    )
    print("\nclean model, same trigger:")
    print(clean_report.summary())

    # 4. Save the report and the artefacts.
    out = args.out or Path(tempfile.mkdtemp(prefix="hardenkit-example-01-"))
    report_path = report.save(out / "validation.json")
    bd.save(out / "backdoored")  # model.safetensors, trigger.safetensors, attack.json
    reloaded = json.loads(report_path.read_text())
    assert reloaded["report_type"] == "validation"
    print(f"\nwrote {report_path} and {out / 'backdoored'}/")
    print(
        json.dumps(
            {
                "ba": round(report.ba, 4),
                "asr": round(report.asr or 0.0, 4),
                "ra": round(report.ra or 0.0, 4),
                "passed": report.passed,
                "clean_passed": clean_report.passed,
                "seconds": round(time.perf_counter() - t_start, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
