"""Example 08: remove a backdoor by pruning channels (Fine-Pruning, few-shot ShapPruning).

What it shows:
    * ``hk.Purifier(model, "fine-pruning")`` on a small **clean budget**: the channels of the
      last layer's input that are least active on clean images are pruned (as many as the
      *validation split of the clean budget* allows — never the test set), then the model is
      fine-tuned with the pruned weights held at exactly 0;
    * ``hk.Purifier(model, "shapley-pruning", holdout_fraction=0)`` with **one clean image per
      class** (10 images in all): the strategy inverts a trigger on those images (Neural
      Cleanse), estimates each BatchNorm channel's Shapley value for the inverted-trigger
      backdoor and prunes the few channels with the largest values. With ``holdout_fraction=0``
      every image is used, so the report's BA fields are ``None``: the test set measures it;
    * what was pruned (``report.details["pruning"]``, a ``PruningRecord``: unit, layers,
      pruned, total, fraction) and BA / ASR before and after on the test set with the **real**
      trigger (``hk.Validator``);
    * pruning is a weight edit: ``res.export_onnx`` exports the pruned model with no graph
      surgery, and ``hk.verify_onnx`` checks the logits of ONNX Runtime against PyTorch.

The default (``--quick``) run trains a BadNets-backdoored ``small-cnn`` (target 0, a 3x3
patch, 112 BatchNorm channels) on 10-class synthetic data (300 training images per class) for 8
epochs, runs Fine-Pruning with 10 fine-tuning epochs instead of 100, and ShapPruning with 30
Monte-Carlo permutations instead of 100 and a shorter trigger inversion (50 Neural Cleanse
epochs instead of 300): well under a minute on one CPU thread. ``--no-quick`` uses the
strategies' defaults (a few minutes).

The numbers are printed, not asserted: pruning a tiny network costs benign accuracy, and
one image per class is a hard setting (see "Known limits" in docs/pruning.md).

    python examples/08_prune_model.py
    python examples/08_prune_model.py --out runs/08

Exit status: 0 when both repairs ran and the ONNX export of the fine-pruned model verifies
(logit parity on ONNX Runtime); 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import hardenkit as hk
from hardenkit.reports import ModelFingerprint


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="short fine-tuning and Shapley estimation (default); --no-quick for the defaults",
    )
    p.add_argument("--out", type=Path, default=None, help="output directory (default: a temp dir)")
    p.add_argument("--device", default="cpu", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:6.1f}%"


def _pruned(record: dict[str, Any] | None) -> str:
    """The pruned channels per layer (the summary already gives the counts)."""
    if record is None:
        return "nothing pruned"
    layers = "; ".join(f"{name} {chans}" for name, chans in record["layers"].items())
    return f"pruned {record['unit']} channels: {layers or '-'}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    runtime = hk.RuntimeConfig(device=args.device, seed=args.seed, progress="off")
    data = hk.make_synthetic_dataset(
        num_classes=10, train_per_class=300, test_per_class=100, seed=args.seed
    )

    # 1. The model to repair: BadNets (3x3 patch), target 0, 10 % of the training images
    #    poisoned.
    t0 = time.perf_counter()
    bd = hk.make_backdoored_model(
        "badnets",
        data.train,
        arch="small-cnn",
        attack_config={"target": 0, "poison_rate": 0.1, "seed": args.seed},
        train_config=hk.TrainConfig(epochs=8, batch_size=128, lr=0.05, augment=False),
        runtime=runtime,
    )
    fingerprint = ModelFingerprint.of(bd.model)
    print(f"trained a BadNets small-cnn (target {bd.target}) in {time.perf_counter() - t0:.1f}s")

    test = data.test  # never trained on; the Purifier only measures its guard on it
    before = hk.Validator(bd.model, runtime=runtime).run(
        test.loader(), trigger=bd.trigger, target=bd.target
    )
    print(
        f"backdoored model on the test set: BA {_pct(before.ba).strip()}, "
        f"ASR (real trigger) {_pct(before.asr).strip()}"
    )

    # 2. Fine-Pruning on a clean budget of 100 non-poisoned training images per class. The
    #    Purifier holds 10 % out for its before/after numbers; fine-pruning keeps 10 % of the
    #    rest as the validation split on which it chooses how many channels to prune.
    budget = data.train.subset(
        hk.data.stratified_indices(
            data.train.labels, per_class=100, seed=args.seed, exclude=bd.poisoned.poison_indices
        )
    )
    fp_config: dict[str, object] = {"epochs": 10} if args.quick else {}
    fp = hk.Purifier(bd.model, "fine-pruning", config=fp_config, runtime=runtime).run(
        budget.loader(),
        # the utility guard's BA before/after on images the model never trained on; the
        # repair never reads them (checked by the conformance suite)
        holdout_loader=test.loader(),
    )
    sel = fp.report.details["selection"]
    print(f"\n{fp.report.summary()}")
    print(
        f"  {_pruned(fp.report.details['pruning'])}\n  chosen on the {sel['on']} "
        f"({sel['images']} images): accuracy {_pct(sel['accuracy_unpruned']).strip()} unpruned, "
        f"{_pct(sel['accuracy_pruned']).strip()} pruned"
    )

    # 3. ShapPruning with one clean image per class and no held-out split (holdout_fraction=0:
    #    the report's BA fields are None). Without scan=, the strategy inverts the trigger
    #    itself with Neural Cleanse on the 10 images and their augmented copies; "scan"
    #    overrides that ScanConfig (here: 50 inversion epochs instead of 300).
    shots = data.train.subset(
        hk.data.stratified_indices(
            data.train.labels, per_class=1, seed=args.seed, exclude=bd.poisoned.poison_indices
        )
    )
    sp_config: dict[str, object] = (
        {
            "max_permutations": 30,
            "scan": {"detector_options": {"neural-cleanse": {"epochs": 50, "batch_size": 64}}},
        }
        if args.quick
        else {}
    )
    sp = hk.Purifier(
        bd.model, "shapley-pruning", config=sp_config, runtime=runtime, holdout_fraction=0
    ).run(shots.loader())
    d = sp.report.details
    print(f"\n{sp.report.summary()}")
    if "scan" in d:
        print(
            f"  its own scan on {d['scan']['on']}: {d['scan']['verdict']}, "
            f"flagged {d['scan']['flagged_labels']}"
        )
    print(f"  {_pruned(d.get('pruning'))}")
    if "mitigation" in d:
        print(f"  mitigation: {d['mitigation']['stop_reason']}")
    assert ModelFingerprint.of(bd.model) == fingerprint  # the caller's model is untouched

    # 4. Measure both repaired copies on the test set with the real trigger.
    after = {
        name: hk.Validator(res.model, runtime=runtime).run(
            test.loader(), trigger=bd.trigger, target=bd.target
        )
        for name, res in (("fine-pruning", fp), ("shapley-pruning", sp))
    }
    print(f"\n{'test set, real trigger':28} {'BA':>7} {'ASR':>7} {'clean images':>13}")
    print(f"{'before (backdoored)':28} {_pct(before.ba)} {_pct(before.asr)} {'-':>13}")
    for name, res in (("fine-pruning", fp), ("shapley-pruning", sp)):
        used = res.report.clean_images
        n = used["train"] + used["validation"] + used["holdout"]
        print(f"{name:28} {_pct(after[name].ba)} {_pct(after[name].asr)} {n:>13}")

    # 5. Export the fine-pruned model to ONNX (pruning is a weight edit: no graph surgery)
    #    and verify the ONNX Runtime logits against PyTorch.
    out = args.out or Path(tempfile.mkdtemp(prefix="hardenkit-example-08-"))
    fp.save(out / "fine-pruning")
    sp.save(out / "shapley-pruning")  # with scan/: the strategy's own trigger inversion
    exp = fp.export_onnx(out / "fine-pruning" / "model.onnx")
    ver = hk.verify_onnx(
        exp,
        fp.model,
        test.loader(batch_size=200),
        trigger=bd.trigger,
        target=bd.target,
        providers=["CPUExecutionProvider"],
    )
    ver.save(out / "fine-pruning" / "onnx_verification.json")
    print(f"\nexported {Path(exp.path).name}: verification {'PASSED' if ver.passed else 'FAILED'}")
    print(f"wrote {out}/: {sorted(p.name for p in out.iterdir())}")

    ok = fp.purified and sp.status in {"purified", "nothing-to-purify", "unverified"} and ver.passed
    print(
        json.dumps(
            {
                name: {
                    "status": res.status,
                    "ba_after": round(after[name].ba, 4),
                    "asr_after": round(after[name].asr or 0.0, 4),
                    "pruned": (res.report.details.get("pruning") or {}).get("pruned"),
                    "seconds": round(res.report.seconds, 1),
                }
                for name, res in (("fine-pruning", fp), ("shapley-pruning", sp))
            }
            | {
                "ba_before": round(before.ba, 4),
                "asr_before": round(before.asr or 0.0, 4),
                "onnx_verified": ver.passed,
                "seconds": round(time.perf_counter() - t_start, 1),
            }
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
