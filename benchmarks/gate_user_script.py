"""``hardenkit gate`` (the CLI, default policy) on models a user trained with a script of their own.

    python -m benchmarks.gate_user_script                          # every model
    python -m benchmarks.gate_user_script --models patch-mid,clean # some

The pre-deployment check as a platform team runs it in CI, on CIFAR-10 models no one here
tuned the gate to: the committed ``benchmarks.user_script`` fixtures — a plain VGG-style
``nn.Sequential`` with the input normalisation inside, trained by that file's own loop with
its own triggers (a 4×4 random-colour patch near the top-left corner, a 5×5 red/blue
checkerboard on the left edge, a smooth colour pattern blended at α 0.15; held out since stop
49: additive diagonal stripes and a smooth random warp; since stop 53 the script's own residual
network ``user_resnet`` with a pixel patch and a checkerboard blend) — and the same networks and
script without poisoning (``clean``, ``res-clean``). For each model:

1. the clean budget the fixture names (2,500 training images, 250 per class) is written as an
   ImageFolder of PNG files, 2,000 test images (the first 200 of each class) as the held-out
   set, and the weights as a plain state dict;
2. ``hardenkit gate --weights W --arch benchmarks.user_script:user_model --num-classes 10
   --data CLEAN --holdout HELD --out OUT`` (``user_resnet`` for the residual models) runs as
   a subprocess (the documented default policy: quick scan, repair with ``auto`` when
   flagged, re-scan, BA drop <= 3 points, ASR of every recovered trigger <= 10 %, ONNX
   verified on CPU);
3. the model the gate would ship (``OUT/model.safetensors``) is measured in plain PyTorch on
   all 10,000 test images with the **real** trigger, which the gate never sees.

A verdict is *wrong* when the gate passed a model whose shipped weights still have a real ASR
above the policy's ``max_asr`` or lost more than ``max_ba_drop`` of the input's BA (a silent
wrong answer), and a *false alarm* when it failed the clean model. The ASR counts every
non-target image the model puts on the target, with or without the trigger's help, so each
row also gives the shipped model's share of the same images on the target *without* the
trigger and what the trigger adds; when the ASR is over ``max_asr`` but the trigger adds
nothing significant (exact McNemar test on the same images, p >= 0.05) the verdict says
*ASR over max_asr from the model's bias, not the trigger* instead of *WRONG*. Writes
``benchmarks/results/<out>.{json,md}``; each model's outcome is cached in
``benchmarks/cache/gate_user/`` (the gate's outputs are kept there too). The gate subprocess
inherits the environment: to run several of these side by side, set ``OMP_NUM_THREADS=1``
(six unpinned gates on the 2-core machine had not finished after an hour).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import Tensor

import hardenkit as hk
from hardenkit.attacks.base import build_attack
from hardenkit.cli._common import to_luma
from hardenkit.training import predict

from .common import (
    CACHE,
    CIFAR10_CLASSES,
    ROOT,
    config_hash,
    load_cached,
    load_cifar10,
    md_table,
    write_results,
)
from .fallback_zoo import _measure as zoo_measure
from .fallback_zoo import _splits as zoo_splits
from .fallback_zoo import zoo_models
from .scanner_zoo import ATTACK_NAMES
from .scanner_zoo import FIXTURES as ZOO_FIXTURES
from .scanner_zoo import _model as zoo_model
from .user_script import (
    CLEAN_MODELS,
    MODELS,
    ba_asr,
    load_or_train,
    model_arch,
    model_spec,
    stamp,
    upsample_uint8,
    user_input,
)
from .user_script import _describe as describe

HELD_PER_CLASS = 200
ZOO_ARCHS = {
    "user-sequential": "benchmarks.scan_statistic:user_sequential",
    "tiny-resnet": "benchmarks.scan_statistic:TinyResNet",
    "small-cnn": "small-cnn",
}
"""``--arch`` of the scanner zoo's architectures (``zoo:<id>`` models)."""

GATE_DEFAULT = "default-s60"
"""The default policy a cached outcome was measured under (part of the cache key): stop 41
made ``flagged_without_trigger: fail`` the default; stop 50 added the ``signal`` detector to
the scan presets; stop 59 made ``repaired_label_suspect: fail`` the default and stop 60
narrowed it to labels the same detector had singled out before the repair; outcomes
measured before are in the committed
``benchmarks/results/gate_user_script*.json``. A ``--policy`` file's contents are part of the
key too."""


def _write_folder(root: Path, x: torch.Tensor, y: torch.Tensor) -> None:
    """``x`` (uint8 N,3,H,W, or N,1,H,W: grayscale PNGs) as ``root/<class>/<i>.png``
    (lossless: the pixels stay exact)."""
    for i, (img, label) in enumerate(zip(x, y.tolist(), strict=True)):
        d = root / CIFAR10_CLASSES[label]
        d.mkdir(parents=True, exist_ok=True)
        pixels = img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(d / f"{i:05d}.png")


def _data_dirs(
    tag: str, clean: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor]
) -> tuple[Path, Path]:
    """The clean budget and the first HELD_PER_CLASS test images of each class as ImageFolder
    directories (uint8 images; cached under ``tag``)."""
    base = CACHE / "gate_user" / f"data-{tag}"
    clean_dir, held_dir = base / "clean", base / "held"
    if not (base / "done").is_file():
        _write_folder(clean_dir / "train", *clean)
        xt, yt = test
        idx = torch.cat([torch.nonzero(yt == c).flatten()[:HELD_PER_CLASS] for c in range(10)])
        _write_folder(held_dir / "test", xt[idx], yt[idx])
        (base / "done").write_text("ok\n")
    return clean_dir, held_dir


def _case(name: str, data: dict[str, hk.ImageDataset]) -> dict[str, Any]:
    """What a gate run needs for one model: the model (weights loaded), its ``--arch`` and
    factory, the clean budget and test images (uint8), the cache key, a trigger description
    and ``measure(model) -> {ba, asr}`` with the real trigger (``asr`` None when clean)."""
    train, test = data["train"], data["test"]
    if not name.startswith("zoo:"):
        spec = model_spec(name)
        model, info = load_or_train(name, data)
        idx = info["clean_idx"]
        xt, yt = test.tensors()
        xm = user_input(xt, spec)  # the test images as the model takes them
        # the model's ``--arch`` path and factory (the nn.Sequential, or since stop 53 the
        # script's residual network)
        arch, factory = model_arch(spec)
        gray = spec.get("channels", 3) == 1  # stop 55: grayscale PNG files, as a user has them
        size = spec.get("resolution")  # stop 58: 64x64 files for a 64x64 model

        def files(images: Tensor) -> Tensor:
            images = to_luma(images) if gray else images
            return images if size is None else upsample_uint8(images, size)

        tag: dict[str, Any] = {"clean": idx.tolist(), "held": HELD_PER_CLASS}
        if size is not None:
            tag["resolution"] = size
        return {
            "model": model,
            "arch": arch,
            "factory": factory,
            "key": {"model": name, "spec": spec, "held": HELD_PER_CLASS, "policy": GATE_DEFAULT},
            "clean": (files(train.images[idx]), train.labels[idx]),
            "data_tag": config_hash({**tag, "channels": 1} if gray else tag),
            "test": (files(test.images), test.labels),
            "trigger": "none" if spec["kind"] == "clean" else describe(spec),
            "target": spec["target"],
            "measure": lambda m: ba_asr(m, spec, xt, yt),
            "classes": lambda m: class_accuracy(m, xm, yt),
            "effect": None
            if spec["kind"] == "clean"
            else lambda m: paired_trigger_effect(
                m, xm[yt != spec["target"]], stamp(xm[yt != spec["target"]], spec), spec["target"]
            ),
        }
    mid = name.removeprefix("zoo:")
    meta = zoo_models(min_asr=0.0, clean=True)[mid]
    clean, held = zoo_splits(data, meta)  # never trained on / the half the scans did not use
    trigger = None
    if meta["attack"] != "clean":
        attack = ATTACK_NAMES.get(meta["attack"], meta["attack"])
        cfg = {"image_size": 32, "channels": 3, **meta["attack_config"]}
        trigger = build_attack(attack, cfg).trigger
    target = None if meta["target"] is None else int(meta["target"])

    def measure(m: torch.nn.Module) -> dict[str, float | None]:
        r = zoo_measure(m, trigger, held, 0 if target is None else target)
        return {"ba": r["ba"], "asr": None if trigger is None else r["asr"]}

    def effect(m: torch.nn.Module) -> dict[str, Any]:
        assert trigger is not None
        assert target is not None
        xh, yh = held.tensors()
        keep = xh[yh != target]
        return paired_trigger_effect(m, keep, trigger.apply(keep), target)

    model = zoo_model(meta["arch"])
    model.load_state_dict(load_file(ZOO_FIXTURES / f"{mid}.safetensors"))
    return {
        "model": model.eval(),
        "arch": ZOO_ARCHS[meta["arch"]],
        "factory": lambda: zoo_model(meta["arch"]),
        "key": {"model": name, "held": HELD_PER_CLASS, "policy": GATE_DEFAULT},
        "clean": (clean.images, clean.labels),
        "data_tag": config_hash(
            {"zoo": [meta["train_images"], meta["seed"]], "held": HELD_PER_CLASS}
        ),
        "test": (held.images, held.labels),
        "trigger": meta["attack"] if trigger is None else f"{meta['attack']} (zoo)",
        "target": target,
        "measure": measure,
        "classes": lambda m: class_accuracy(m, *held.tensors()),
        "effect": None if trigger is None else effect,
    }


def mcnemar_p(gained: int, lost: int) -> float:
    """Exact two-sided McNemar p-value: ``gained`` images go to the target only with the
    trigger, ``lost`` only without it (paired on the same images).

    >>> round(mcnemar_p(10, 10), 3)
    1.0
    >>> mcnemar_p(30, 5) < 0.001
    True
    """
    n = gained + lost
    if n == 0:
        return 1.0
    k = min(gained, lost)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_trigger_effect(
    model: torch.nn.Module, x: Tensor, xt: Tensor, target: int
) -> dict[str, Any]:
    """On the non-target images ``x`` and their triggered copies ``xt``: the share predicted as
    ``target`` without (``floor``) and with (``asr``) the trigger, and McNemar's p for the
    difference (paired per image, which :func:`hardenkit.training.trigger_effect`'s shares
    alone cannot give)."""
    without = predict(model, x).argmax(1) == target
    with_ = predict(model, xt).argmax(1) == target
    gained, lost = int((with_ & ~without).sum()), int((without & ~with_).sum())
    return {
        "floor": float(without.float().mean()),
        "asr": float(with_.float().mean()),
        "gained": gained,
        "lost": lost,
        "p": mcnemar_p(gained, lost),
    }


def class_accuracy(model: torch.nn.Module, x: Tensor, y: Tensor) -> list[float]:
    """Accuracy of ``model`` on each class of ``(x, y)``."""
    pred = predict(model, x).argmax(1)
    return [float((pred[y == c] == c).float().mean()) for c in range(int(y.max()) + 1)]


def verdict(
    *,
    passed: bool,
    backdoored: bool,
    asr_after: float | None,
    ba_lost: float,
    policy: dict[str, Any],
    trigger_p: float | None = None,
) -> str:
    """Whether the gate's decision was right, judged with the real trigger it never saw.
    ``trigger_p``: McNemar's p that the trigger changes the shipped model's target share.

    >>> pol = {"max_asr": 0.1, "max_ba_drop": 0.03}
    >>> verdict(passed=True, backdoored=True, asr_after=0.4, ba_lost=0.0, policy=pol)
    'WRONG'
    >>> verdict(passed=True, backdoored=True, asr_after=0.11, ba_lost=0.0, policy=pol,
    ...         trigger_p=0.6)
    "ASR over max_asr from the model's bias, not the trigger"
    >>> verdict(passed=False, backdoored=False, asr_after=None, ba_lost=0.0, policy=pol)
    'false alarm'
    """
    if not backdoored:
        return "right" if passed else "false alarm"
    if not passed:
        return "right (failed closed)"
    if ba_lost > policy["max_ba_drop"]:
        return "WRONG"
    if (asr_after or 0.0) > policy["max_asr"]:
        if trigger_p is not None and trigger_p >= 0.05:
            return "ASR over max_asr from the model's bias, not the trigger"
        return "WRONG"
    return "right"


def run_model(
    name: str, data: dict[str, hk.ImageDataset], cached_only: bool, policy: Path | None = None
) -> dict[str, Any]:
    case = _case(name, data)
    extra = {} if policy is None else {"policy_file": json.loads(policy.read_text())}
    key = config_hash({**case["key"], **extra})
    cache = CACHE / "gate_user" / f"{name.replace(':', '-')}-{key}.json"
    cached = load_cached(cache)
    if cached is not None:
        out = cache.with_suffix("") / "out"
        rep = json.loads((out / "gate.json").read_text())
        if "class accuracy in/out" not in cached:
            shipped = case["factory"]()
            shipped.load_state_dict(load_file(out / "model.safetensors"))
            cached["class accuracy in/out"] = [
                case["classes"](case["model"]),
                case["classes"](shipped.eval()),
            ]
            cache.write_text(json.dumps(cached, indent=2, default=str))
        if "input trigger effect" not in cached and case["effect"] is not None:
            shipped = case["factory"]()
            shipped.load_state_dict(load_file(out / "model.safetensors"))
            cached["input trigger effect"] = case["effect"](case["model"])
            cached["shipped trigger effect"] = case["effect"](shipped.eval())
            cached["verdict"] = verdict(
                passed=rep["passed"],
                backdoored=True,
                asr_after=cached["real ASR in/out"][1],
                ba_lost=cached["real BA in/out"][0] - cached["real BA in/out"][1],
                policy=rep["policy"],
                trigger_p=cached["shipped trigger effect"]["p"],
            )
            cache.write_text(json.dumps(cached, indent=2, default=str))
        return {**cached, "trigger": case["trigger"], "failed rules": _failed(rep), **_rounds(rep)}
    if cached_only:
        return {"model": name, "trigger": case["trigger"], "verdict": "not measured"}
    model = case["model"]
    clean_dir, held_dir = _data_dirs(case["data_tag"], case["clean"], case["test"])
    work = cache.with_suffix("")
    work.mkdir(parents=True, exist_ok=True)
    weights = work / "input.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    out = work / "out"
    cmd = [
        sys.executable, "-m", "hardenkit", "gate", "--weights", str(weights),
        "--arch", case["arch"], "--num-classes", "10", "--data", str(clean_dir),
        "--holdout", str(held_dir), "--out", str(out),
        *([] if policy is None else ["--policy", str(policy.resolve())]),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT.parent)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT.parent)
    seconds = time.perf_counter() - t0
    (work / "gate.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if not (out / "gate.json").is_file():
        raise SystemExit(f"gate on {name} wrote no gate.json (exit {proc.returncode}); see {work}")
    rep = json.loads((out / "gate.json").read_text())
    before = case["measure"](model.eval())
    shipped = case["factory"]()
    shipped.load_state_dict(load_file(out / "model.safetensors"))
    after = case["measure"](shipped.eval())
    effect = None if case["effect"] is None else case["effect"](shipped)
    effect_in = None if case["effect"] is None else case["effect"](model)
    right = verdict(
        passed=rep["passed"],
        backdoored=case["target"] is not None,
        asr_after=after["asr"],
        ba_lost=before["ba"] - after["ba"],
        policy=rep["policy"],
        trigger_p=None if effect is None else effect["p"],
    )
    scan, rescan = rep.get("input_scan"), rep.get("rescan")
    row = {
        "model": name,
        "trigger": case["trigger"],
        "target": case["target"],
        "exit code": proc.returncode,
        "passed": rep["passed"],
        "failed rules": _failed(rep),
        "scan": f"{scan['verdict']} {scan['flagged_labels']}" if scan else "-",
        "repair": f"{rep['strategy']}: {rep['purification_status']}" if rep["repaired"] else "-",
        "rescan": f"{rescan['verdict']} {rescan['flagged_labels']}" if rescan else "-",
        "gate BA in/out": [rep["input_ba"], rep["output_ba"]],
        "recovered-trigger ASR max": max(
            (t.get("output_asr") or 0.0 for t in rep["triggers"]), default=None
        ),
        "real BA in/out": [before["ba"], after["ba"]],
        "real ASR in/out": [before["asr"], after["asr"]],
        "input trigger effect": effect_in,
        "shipped trigger effect": effect,
        "class accuracy in/out": [case["classes"](model), case["classes"](shipped)],
        "verdict": right,
        "gate seconds": seconds,
        "gate timings": rep.get("timings"),
    }
    cache.write_text(json.dumps(row, indent=2, default=str))
    return {**row, **_rounds(rep)}


def _rounds(rep: dict[str, Any]) -> dict[str, Any]:
    """From a gate.json: each repair round (the labels it repaired against, its status, the
    re-scan's verdict) and the paired 95 % interval of the gate's BA drop (stop 57)."""
    rounds = [
        f"{r['round']}: {r['against_labels']} {r['status']} -> {r.get('rescan_verdict') or '-'}"
        for r in rep.get("repair_rounds") or []
    ]
    ci = rep.get("ba_drop_interval")
    return {
        "repair rounds": "; ".join(rounds) or "-",
        "gate BA drop 95 % CI (pt)": "-"
        if ci is None
        else f"{100 * ci[0]:.1f} to {100 * ci[1]:.1f}",
    }


def _failed(rep: dict[str, Any]) -> list[str]:
    """The ids of the gate's failed rules."""
    return [r["rule_id"] for r in rep["rules"] if r["status"] == "fail"]


def _effect_cols(e_in: dict[str, Any] | None, e: dict[str, Any] | None) -> dict[str, str]:
    """The table's trigger-effect columns: the share on the target without the trigger (input
    / shipped) and what the trigger adds on the shipped model (``-`` for a clean model, or an
    outcome cached before they existed whose gate outputs are gone)."""
    if not e or not e_in:
        return {EFFECT_COLS[0]: "-", EFFECT_COLS[1]: "-"}
    return {
        EFFECT_COLS[0]: f"{_pct(e_in['floor'])} / {_pct(e['floor'])}",
        EFFECT_COLS[1]: f"{100 * (e['asr'] - e['floor']):+.2f} (p {e['p']:.2g})",
    }


EFFECT_COLS = ("on target without trigger % in / shipped", "shipped: trigger adds (pt, McNemar p)")


def _class_drop(pair: list[list[float]] | None) -> str:
    """The largest per-class accuracy loss, input to shipped, in points (``-`` unmeasured)."""
    if not pair:
        return "-"
    drops = [a - b for a, b in zip(*pair, strict=True)]
    c = max(range(len(drops)), key=lambda i: drops[i])
    return f"{100 * drops[c]:+.1f} ({c})"


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    names_all = [*MODELS, *CLEAN_MODELS]
    p.add_argument(
        "--models",
        default=",".join(names_all),
        help="comma-separated: user-script models, or zoo:<id> for a scanner-zoo fixture",
    )
    p.add_argument("--out", default="gate_user_script", help="results name")
    p.add_argument("--cached-only", action="store_true", help="only models already measured")
    p.add_argument(
        "--policy",
        type=Path,
        help="a gate policy JSON file instead of the default policy (e.g. "
        "benchmarks/policies/mcl_recalibrate_prior.json)",
    )
    args = p.parse_args(argv)
    names = [m for m in args.models.split(",") if m]
    zoo = {f"zoo:{k}" for k in zoo_models(min_asr=0.0, clean=True)}
    unknown = sorted(set(names) - set(names_all) - zoo)
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; known: {names_all}")
    data = load_cifar10()
    rows = []
    for name in names:
        print(f"[{time.strftime('%H:%M:%S')}] gate {name} ...", flush=True)
        r = run_model(name, data, args.cached_only, args.policy)
        print(json.dumps(r, default=str), flush=True)
        rows.append(r)
    table = [
        {
            **r,
            "BA % in / shipped": " / ".join(_pct(v) for v in r.get("real BA in/out", [])),
            "real ASR % in / shipped": " / ".join(_pct(v) for v in r.get("real ASR in/out", [])),
            "gate BA % in / out": " / ".join(_pct(v) for v in r.get("gate BA in/out", [])),
            "recovered ASR % (max)": _pct(r.get("recovered-trigger ASR max")),
            "failed": " ".join(r.get("failed rules", [])) or "-",
            "s": None if r.get("gate seconds") is None else round(r["gate seconds"]),
            **_effect_cols(r.get("input trigger effect"), r.get("shipped trigger effect")),
            "largest class drop (pt, class)": _class_drop(r.get("class accuracy in/out")),
        }
        for r in rows
    ]
    cols = ["model", "trigger", "exit code", "scan", "repair", "rescan", "repair rounds",
            "gate BA % in / out", "gate BA drop 95 % CI (pt)", "recovered ASR % (max)", "failed",
            "BA % in / shipped", "real ASR % in / shipped",
            *EFFECT_COLS, "largest class drop (pt, class)",
            "verdict", "s"]  # fmt: skip
    write_results(
        args.out,
        table,
        cols,
        {
            "protocol": "hardenkit gate (CLI, default policy) on user-script models",
            "held_out_images": 10 * HELD_PER_CLASS,
            "command": "python -m benchmarks.gate_user_script " + " ".join(argv or sys.argv[1:]),
        },
    )
    print(md_table(table, cols))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
