"""Example 09: train a clean model from an untrusted (poisoned) training set.

What it shows:
    * the defender's setting: a training set of unknown provenance, here 10 % BadNets-poisoned
      (``attack.poison(...)`` returns a ``PoisonedDataset`` that knows its poison indices —
      used only to *measure* the isolation, never by the defence);
    * ``hk.RobustTrainer(model, "plain")``: ordinary training plants the backdoor;
    * ``hk.RobustTrainer(model, "dlp")``: the decoupled learning process (supervised → active
      unlearning → active semi-supervised fine-tuning) trains a copy of the same untrained
      model without it; ``"abl"`` (anti-backdoor learning) is the baseline;
    * the ``TrainingReport``: per-stage seconds, the suspected set (size, class histogram,
      precision/recall against the true poison), BA/ASR on the clean test set, the status;
    * ``TrainingResult.save`` (``model.safetensors``, ``report.json``, ``suspected.json``).

The default (``--quick``) run uses 4-class synthetic data (100 training images per class,
a 5x5 BadNets patch), a ``small-cnn`` of width 8 and 10 epochs per method: about 20-30 s on
one CPU thread (measured: plain BA 92 % / ASR 83 %, DLP BA 92 % / ASR 4 %).
``--no-quick`` uses 10 classes, 300 images per class and more epochs (a few minutes).

    python examples/09_train_untrusted.py
    python examples/09_train_untrusted.py --out runs/09

Exit status: 0 when DLP's ASR is at most 10 % and its BA within 5 points of plain training
on the poisoned set; 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

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
        help="tiny data and schedules (seconds); --no-quick for a larger run",
    )
    p.add_argument("--out", type=Path, default=None, help="output directory (default: a temp dir)")
    p.add_argument("--device", default="cpu", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def pct(v: float | None) -> str:
    return "     -" if v is None else f"{100 * v:5.1f}%"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    k, per_class, width = (4, 100, 8) if args.quick else (10, 300, 16)
    epochs = 10 if args.quick else 20
    data = hk.data.make_synthetic_dataset(
        num_classes=k, train_per_class=per_class, test_per_class=50, seed=args.seed
    )
    attack = hk.build_attack("badnets", poison_rate=0.1, target=0, patch_size=5, seed=args.seed)
    untrusted = attack.poison(data.train)
    trigger = attack.build_trigger()
    print(
        f"untrusted training set: {len(untrusted)} images, {len(untrusted.poison_indices)} poisoned"
    )

    # no crop/flip on this small synthetic set: it would keep plain training from learning
    # the corner-patch backdoor at all (docs/training.md), and there would be nothing to remove
    common = {"batch_size": 32, "augment": False}
    configs: dict[str, dict[str, Any]] = {
        "plain": {"epochs": epochs, **common},
        "abl": {"isolation_epochs": 3, "finetune_epochs": epochs - 3, **common},
        "dlp": {"sl_epochs": 3, "ssl_epochs": epochs - 3, "rescore_every": 1, **common},
    }
    runtime = {"device": args.device, "seed": args.seed, "progress": "off"}
    results = {}
    for name, cfg in configs.items():
        torch.manual_seed(args.seed)  # the same untrained model for every method
        model = hk.build_model("small-cnn", k, width=width)
        results[name] = hk.RobustTrainer(model, name, config=cfg, runtime=runtime).fit(
            untrusted, test=data.test, trigger=trigger, target=0
        )

    print(f"\n{'method':8} {'BA':>6} {'ASR':>6} {'prec.':>6} {'recall':>6} {'seconds':>8}  status")
    for name, res in results.items():
        rep = res.report
        iso = rep.isolation
        print(
            f"{name:8} {pct(rep.ba)} {pct(rep.asr)} {pct(iso and iso.precision)} "
            f"{pct(iso and iso.recall)} {rep.seconds:8.1f}  {rep.status}"
        )
    dlp = results["dlp"]
    print("\n" + dlp.report.summary())

    out = args.out or Path(tempfile.mkdtemp(prefix="hardenkit-09-"))
    dlp.save(out / "dlp")
    print(f"\nwrote {out / 'dlp'}: model.safetensors, report.json, suspected.json")

    ba_plain = results["plain"].report.ba or 0.0
    ok = (dlp.report.asr or 0.0) <= 0.10 and (dlp.report.ba or 0.0) >= ba_plain - 0.05
    print("DLP removed the backdoor" if ok else "DLP did NOT meet ASR <= 10 % / BA within 5 pts")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
