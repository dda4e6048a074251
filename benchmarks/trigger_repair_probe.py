"""Repairs of one scanner-zoo model given one recovered trigger: where does a residue come from?

    python -m benchmarks.trigger_repair_probe user-sequential-badnets-2 default shift=4 final
    python -m benchmarks.trigger_repair_probe user-sequential-badnets-2 nc-unlearn finetune ce=1

The trigger is the one the gate's scan of the input model recovered for the real target (the
cached ``out/scan/triggers/label_<target>.safetensors`` of ``python -m
benchmarks.gate_user_script --models zoo:<model>``), or, without that cache, the
one a default ``hk.Scanner`` run on the clean budget recovers (nothing is run when it misses
the target). Each variant repairs the zoo model with ``Purifier(model, strategy).run(clean,
scan=ScanResult.from_triggers({target: trigger}))`` and prints BA, the real trigger's ASR and
the recovered trigger's ASR (%, on the same 5,000 test images as ``benchmarks.fallback_zoo``),
the chosen epoch and the seconds. Variants (MCL's default unless named):

* ``default``: MCL as shipped; ``final``: MCL with ``selection="final"``;
* ``shift=N``: MCL with the trigger stamped at a random offset of up to N pixels per image
  (the image is rolled, stamped and rolled back: the trigger moves, the content does not);
* ``ce=W``: MCL with ``ce_weight=W``; ``anchor=W``: MCL with ``anchor_weight=W``;
  ``epochs=N``: MCL with ``epochs=N``;
* ``nc-unlearn`` / ``finetune``: those strategies with their defaults.

A probe, not a table: it prints one line per variant (``PROBE model variant status BA real
inv epoch seconds``), which the docs quote with this command.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

import hardenkit as hk
from hardenkit.attacks.base import build_attack
from hardenkit.scan.scanner import ScanResult
from hardenkit.triggers import CallableTrigger, Trigger

from .common import CACHE, load_cifar10
from .fallback_zoo import _splits, zoo_models
from .purify_cpu import measure
from .scanner_zoo import ATTACK_NAMES, FIXTURES, _model


def _shifted(trigger: Trigger, shift: int) -> Trigger:
    """``trigger`` stamped at a random offset of up to ``shift`` pixels, per image."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(x)
        offs = torch.randint(-shift, shift + 1, (x.shape[0], 2))
        for i in range(x.shape[0]):
            dy, dx = int(offs[i, 0]), int(offs[i, 1])
            rolled = torch.roll(x[i : i + 1], (-dy, -dx), (2, 3))
            out[i : i + 1] = torch.roll(trigger.apply(rolled), (dy, dx), (2, 3))
        return out

    return CallableTrigger(fn, f"shift{shift}")


def _variant(name: str, trigger: Trigger) -> tuple[str, dict[str, Any], Trigger]:
    kind, _, arg = name.partition("=")
    if kind in ("nc-unlearn", "finetune"):
        return kind, {}, trigger
    cfg: dict[str, Any] = {
        "default": {},
        "shift": {},
        "final": {"selection": "final"},
        "ce": {"ce_weight": float(arg or 0)},
        "anchor": {"anchor_weight": float(arg or 0)},
        "epochs": {"epochs": int(arg or 1)},
    }[kind]
    return "mcl", cfg, _shifted(trigger, int(arg)) if kind == "shift" else trigger


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    mid, variants = args[0], args[1:]
    meta = zoo_models(min_asr=0.0, clean=True)[mid]
    clean, test = _splits(load_cifar10(), meta)
    tgt = int(meta["target"])
    model = _model(meta["arch"])
    model.load_state_dict(load_file(FIXTURES / f"{mid}.safetensors"))
    model.eval()
    name = ATTACK_NAMES.get(meta["attack"], meta["attack"])
    real = build_attack(name, {"image_size": 32, "channels": 3, **meta["attack_config"]}).trigger
    gate_out = sorted((CACHE / "gate_user").glob(f"zoo-{mid}-*/out"))
    if gate_out:
        trig = Trigger.load(Path(gate_out[0]) / "scan" / "triggers" / f"label_{tgt}.safetensors")
    else:
        found = hk.Scanner(model, 10).run(clean.loader())
        print("scan", found.report.verdict, found.report.flagged_labels, sorted(found.triggers))
        if tgt not in found.triggers:
            return 0
        trig = found.triggers[tgt]

    def pct(v: float) -> float:
        return round(100 * v, 2)

    m0 = measure(model, real, test, target=tgt)
    inv0 = measure(model, trig, test, target=tgt)["asr"]
    print("input", pct(m0["ba"]), pct(m0["asr"]), "inv", pct(inv0), flush=True)
    for v in variants:
        strategy, cfg, t = _variant(v, trig)
        scan = ScanResult.from_triggers(
            {tgt: t}, model=model, num_classes=10, trigger_asr={tgt: 1.0}
        )
        t0 = time.time()
        res = hk.Purifier(model, strategy, config=cfg or None).run(clean.loader(), scan=scan)
        m = measure(res.model, real, test, target=tgt)
        mi = measure(res.model, trig, test, target=tgt)
        epoch = res.report.details.get("checkpoint", {}).get("chosen_epoch")
        print("PROBE", mid, v, res.status, "BA", pct(m["ba"]), "real", pct(m["asr"]), "inv",
              pct(mi["asr"]), "epoch", epoch, round(time.time() - t0), flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
