"""The Scanner on zoo models that end in a softmax (probabilities instead of logits).

    python -m benchmarks.softmax_probe [--models user-sequential-badnets-0,...]

A user's ``nn.Sequential`` often ends in ``nn.Softmax``. Each scanner-zoo CIFAR-10 model is
scanned (``quick`` budget, on the fallback zoo's clean budget) three times: as trained
(logits), with ``nn.Softmax(dim=1)`` appended and the scanner as it is (it detects
probability outputs and scans their logarithm, stop 44), and with the softmax appended and
that detection switched off — how every scan ran before stop 44. Writes
``benchmarks/results/softmax_probe.{json,md}``. With ``--purify STRATEGY`` it instead repairs
each backdoored model as trained, with the softmax appended (the Purifier trains through
``log(p)`` since stop 44) and with the softmax appended and that detection off in the
Purifier and in ``train_model`` (how it trained before), all against the scan of the logits
model, and measures BA / ASR with the real trigger:
``softmax_probe_purify_<STRATEGY>.{json,md}``. Needs the CIFAR-10 archive; a benchmark, not a
test.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from safetensors.torch import load_file
from torch import nn

import hardenkit as hk
import hardenkit.purify.purifier as purifier_module
import hardenkit.scan.scanner as scanner_module
import hardenkit.training as training_module
from hardenkit.attacks.base import build_attack

from .common import load_cifar10, write_results
from .fallback_zoo import _splits, zoo_models
from .purify_cpu import measure
from .scanner_zoo import ATTACK_NAMES, FIXTURES, _model

DEFAULT = (
    "user-sequential-badnets-0,user-sequential-badnets-2,small-cnn-blended-0,"
    "tiny-resnet-badnets-1,user-sequential-clean-0"
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=DEFAULT, help="scanner-zoo model ids, comma-separated")
    ap.add_argument("--purify", metavar="STRATEGY", help="repair instead of scanning")
    args = ap.parse_args(argv)
    data = load_cifar10()
    zoo = zoo_models(clean=True)
    if args.purify:
        return _purify(args, data, zoo)
    detect = scanner_module.returns_probabilities
    rows: list[dict[str, Any]] = []
    for mid in [m.strip() for m in args.models.split(",") if m.strip()]:
        meta = zoo[mid]
        model = _model(meta["arch"])
        model.load_state_dict(load_file(FIXTURES / f"{mid}.safetensors"))
        model.eval()
        clean, _ = _splits(data, meta)
        soft = nn.Sequential(model, nn.Softmax(dim=1)).eval()
        for mode, m, on in (
            ("logits", model, True),
            ("softmax, scanned on log-probabilities (now)", soft, True),
            ("softmax, scanned as given (before stop 44)", soft, False),
        ):
            scanner_module.returns_probabilities = detect if on else (lambda out: False)  # type: ignore[assignment]
            try:
                t = time.perf_counter()
                rep = (
                    hk.Scanner(
                        m,
                        10,
                        config=hk.scan.scan_config_for_budget("quick"),
                        runtime={"seed": 0, "device": "cpu", "progress": "off"},
                    )
                    .run(clean.loader(batch_size=500))
                    .report
                )
            finally:
                scanner_module.returns_probabilities = detect
            nc = next(d for d in rep.detectors if d.detector == "neural-cleanse")
            row = {
                "model": mid,
                "target": "-" if meta["target"] is None else meta["target"],
                "mode": mode,
                "verdict": rep.verdict,
                "flagged": str(rep.flagged_labels),
                "score": round(rep.score, 3),
                "nc_anomaly_index": round(nc.anomaly_index, 2),
                "model_outputs": rep.model_outputs,
                "seconds": round(time.perf_counter() - t, 1),
            }
            print(row, flush=True)
            rows.append(row)
    cols = ["model", "target", "mode", "verdict", "flagged", "score", "nc_anomaly_index"]
    cols += ["model_outputs", "seconds"]
    cmd = "python -m benchmarks.softmax_probe" + (
        "" if args.models == DEFAULT else f" --models {args.models}"
    )
    print(write_results("softmax_probe", rows, cols, {"command": cmd}))
    return 0


def _purify(args: argparse.Namespace, data: Any, zoo: dict[str, Any]) -> int:
    detect = purifier_module.returns_probabilities
    rt = {"seed": 0, "device": "cpu", "progress": "off"}
    rows: list[dict[str, Any]] = []
    for mid in [m.strip() for m in args.models.split(",") if m.strip()]:
        meta = zoo[mid]
        if meta["attack"] == "clean":
            continue
        model = _model(meta["arch"])
        model.load_state_dict(load_file(FIXTURES / f"{mid}.safetensors"))
        model.eval()
        clean, test = _splits(data, meta)
        name = ATTACK_NAMES.get(meta["attack"], meta["attack"])
        trigger = build_attack(
            name, {"image_size": 32, "channels": 3, **meta["attack_config"]}
        ).trigger
        target = int(meta["target"])
        scan = hk.Scanner(model, 10, config=hk.scan.scan_config_for_budget("quick"), runtime=rt)
        found = scan.run(clean.loader(batch_size=500))
        before = measure(model, trigger, test, target=target)
        soft = nn.Sequential(model, nn.Softmax(1)).eval()
        for mode, m, on in (
            ("logits", model, True),
            ("softmax, trained through log-probabilities (now)", soft, True),
            ("softmax, trained as given (before stop 44)", soft, False),
        ):
            off = detect if on else (lambda out: False)
            purifier_module.returns_probabilities = off  # type: ignore[assignment]
            training_module.returns_probabilities = off  # type: ignore[assignment]
            t = time.perf_counter()
            try:
                res = hk.Purifier(m, args.purify, runtime=rt).run(
                    clean.loader(batch_size=500), scan=found
                )
            finally:
                purifier_module.returns_probabilities = detect
                training_module.returns_probabilities = detect
            after = measure(res.model, trigger, test, target=target)
            row = {
                "model": mid,
                "target": target,
                "flagged": str(found.flagged_labels),
                "mode": mode,
                "strategy": args.purify,
                "status": res.status,
                "ba_before": round(100 * before["ba"], 2),
                "asr_before": round(100 * before["asr"], 2),
                "ba_after": round(100 * after["ba"], 2),
                "asr_after": round(100 * after["asr"], 2),
                "seconds": round(time.perf_counter() - t, 1),
            }
            print(row, flush=True)
            rows.append(row)
    cols = ["model", "target", "flagged", "mode", "strategy", "status", "ba_before"]
    cols += ["asr_before", "ba_after", "asr_after", "seconds"]
    cmd = f"python -m benchmarks.softmax_probe --purify {args.purify}" + (
        "" if args.models == DEFAULT else f" --models {args.models}"
    )
    print(write_results(f"softmax_probe_purify_{args.purify}", rows, cols, {"command": cmd}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
