"""The chance check (``HK-DATA-002``, the Purifier's refusal, the Scanner's ``at_chance``) on
imbalanced labelled images.

    python -m benchmarks.imbalanced_holdout_probe

Production data is rarely balanced. Each committed ``benchmarks.user_script`` CIFAR-10 model
(a user's ``nn.Sequential``, BA about 79 %) is measured on test sets where one class makes up
10 % (balanced), 50 %, 80 %, 90 % or 95 % of the images (all 1,000 test images of that class,
the other nine classes subsampled evenly), once with the true labels and once with the labels
shifted by one class (what a wrong class order looks like). For each set it reports the
accuracy, the largest class's share (a constant guess's accuracy), the chance the check uses
now (predictions unrelated to the images with the model's own class frequencies, stop 45) and
whether the model is judged above chance by the check before stop 45 (95 % Wilson lower bound
of the accuracy above the largest class's share) and now, plus the ``hardenkit validate``
policy's ``HK-DATA-002`` status. The majority class is the model's most and least accurate
class. Writes ``benchmarks/results/imbalanced_holdout_probe.{json,md}``; needs the CIFAR-10
archive; about a minute.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

import hardenkit as hk
from hardenkit.validate import chance_check
from hardenkit.validate.metrics import chance_check_of

from .common import CIFAR10_CLASSES, load_cifar10, md_table, write_results
from .gate_user_script import class_accuracy
from .user_script import load_or_train

SHARES = (0.1, 0.5, 0.8, 0.9, 0.95)


def _subset(y: torch.Tensor, major: int, share: float) -> torch.Tensor:
    """Indices: every image of ``major`` and an even sample of the others, ``major`` making up
    ``share`` of the result."""
    idx_major = torch.nonzero(y == major).flatten()
    others = [c for c in range(10) if c != major]
    per = min(
        round(len(idx_major) * (1 - share) / share / len(others)),
        min(int((y == c).sum()) for c in others),
    )
    parts = [idx_major] + [torch.nonzero(y == c).flatten()[:per] for c in others]
    return torch.cat(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="clean,patch-tl", help="benchmarks.user_script models")
    args = ap.parse_args(argv)
    data = load_cifar10()
    xt, yt = data["test"].tensors()
    rows: list[dict[str, Any]] = []
    for name in [m for m in args.models.split(",") if m]:
        model, _ = load_or_train(name, data)
        model.eval()
        per_class = class_accuracy(model, xt, yt)
        best = max(range(10), key=lambda c: per_class[c])
        worst = min(range(10), key=lambda c: per_class[c])
        for major in (best, worst):
            for share in SHARES:
                idx = _subset(yt, major, share)
                x, y = xt[idx], yt[idx]
                for labels, truth in (("true", y), ("shifted by one", (y + 1) % 10)):
                    t0 = time.perf_counter()
                    now = chance_check_of(model, x, truth, 10, runtime={"device": "cpu"})
                    before = chance_check(round(now.accuracy * len(truth)), truth, 10)
                    rep = hk.Validator(model, num_classes=10, runtime={"device": "cpu"}).run(
                        hk.data.TensorLoader(x, truth, batch_size=1000),
                        policy={"max_asr": None, "max_ba_drop": None},
                    )
                    rule = next(r for r in rep.decision.rules if r.rule_id == "HK-DATA-002")  # type: ignore[union-attr]
                    row = {
                        "model": name,
                        "majority class": f"{major} {CIFAR10_CLASSES[major]} "
                        f"({'best' if major == best else 'worst'}, {100 * per_class[major]:.1f} %)",
                        "majority share %": round(100 * share),
                        "labels": labels,
                        "images": len(truth),
                        "accuracy %": round(100 * now.accuracy, 2),
                        "95% lower bound %": round(100 * now.ci_low, 2),
                        "constant guess %": round(100 * (now.majority or 0.0), 2),
                        "chance now %": round(100 * now.chance, 2),
                        "above chance before": before.above,
                        "above chance now": now.above,
                        "HK-DATA-002 now": rule.status,
                        "seconds": round(time.perf_counter() - t0, 2),
                    }
                    print(row, flush=True)
                    rows.append(row)
    cols = ["model", "majority class", "majority share %", "labels", "images", "accuracy %",
            "95% lower bound %", "constant guess %", "chance now %", "above chance before",
            "above chance now", "HK-DATA-002 now"]  # fmt: skip
    cmd = "python -m benchmarks.imbalanced_holdout_probe" + (
        "" if args.models == "clean,patch-tl" else f" --models {args.models}"
    )
    write_results("imbalanced_holdout_probe", rows, cols, {"command": cmd})
    print(md_table(rows, cols))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
