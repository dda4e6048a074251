"""Protocol `cifar10-gpu` (BENCHMARKS.md) as one script: train, scan, purify, export, verify.

    python -m benchmarks.gpu_protocol                      # full protocol on CUDA (< 8 min)
    python -m benchmarks.gpu_protocol --attack badnets --strategy d3 --epochs 20
    python -m benchmarks.gpu_protocol --smoke --out /tmp/gpu-smoke   # CPU, synthetic, seconds

Full mode, per attack (default BadNets and Blended, BackdoorBench defaults: all-to-one,
target 0, 10 % poison; BadNets 3×3 white patch bottom-right, Blended alpha 0.2):

1. ``train[<attack>]`` — PreAct-ResNet18 trained from scratch on the poisoned CIFAR-10 training
   set under bf16 autocast (``TRAIN`` of ``benchmarks.cifar_fixtures`` with ``--epochs``,
   default 12: one-cycle SGD, batch 256, crop + flip), BA / ASR / RA on the full test set;
2. ``scan[<attack>]`` — ``hk.Scanner`` with its default config on the clean budget (5 % of
   the training set, 2,500 images, stratified, no poisoned index): verdict, flagged labels;
3. ``purify[<attack>/<strategy>]`` — each ``--strategy`` (default ``auto``, ``mcl``, ``d3``,
   ``shapley-pruning``, ``fine-pruning``) with its default config on the clean budget (the
   Purifier holds 10 % of it out), given the scan when the strategy uses one; BA / ASR / RA
   on the full test set with the real trigger, DER against the undefended model, seconds;
4. ``export[<attack>]`` — ``hk.to_onnx`` of the ``--export-strategy`` model (default ``auto``)
   and ``hk.verify_onnx`` over the test set on ONNX Runtime's CUDA execution provider
   (requested first on a CUDA device; when ONNX Runtime cannot run it, the verification is
   re-run on the CPU provider and the result says so): logits parity, BA / ASR on both
   backends, the provider that actually ran.

Every phase is timed and logged. Before a phase starts, the script checks it still fits in
``--max-minutes`` (default 8) — estimated from the same phase of the previous attack, from
the measured epochs while training, and capped by ``max_seconds`` (the remaining time) in the
scan and strategy configs — and otherwise stops with a message; the phases that did not run
are listed in the results (exit code 3). A phase that raises is recorded as ``failed`` and the
run goes on (exit code 1). Results: ``benchmarks/results/gpu_protocol.{json,md}`` (or
``--out``), with the published numbers (BackdoorBench, D3 paper) side by side.

``--smoke`` runs every phase end to end on the CPU in seconds (CI): BadNets only (add
``--attack badnets --attack blended`` for both), synthetic 16×16 data
(``hk.make_synthetic_dataset``), a width-8 ``small-cnn``, 10 training epochs, tiny scan and
strategy schedules; results go to ``--out`` (default: a temporary directory), never to the
committed results.

Time estimate of the default run on one H100/H200 — not measured yet (no GPU was lent to this
work). Unit: one "epoch-equivalent" (EE) = 50,000 PreAct-ResNet18 images forward + backward,
about 2-3 s at bf16 with batch 256, channels-last and the data on the device (~20k images/s).
Per attack: training 12 EE (~35 s with the first epoch's cuDNN autotuning); scan (Neural
Cleanse: <= 80 epochs x 800 images x 10 labels, input gradients only, early stopping) <= 9 EE,
~25 s; ``auto`` ~3-4 EE (``mcl`` on a recovered trigger, 20 epochs; ``finetune`` 100
epochs otherwise), 15-20 s; ``mcl`` ~3 EE in 700 steps of batch 64, ~15-20 s; ``d3`` and
``fine-pruning`` ~4 EE each (800 / 700 steps over 2,025 images plus a validation pass per
epoch), ~13 s each; ``shapley-pruning`` (its own 300-epoch few-shot scan, then forward passes
only: ~3,900 BatchNorm channels, 5 full permutations before discarding, ~1,000 images per
pass) 5-15 EE, 15-40 s; six test-set evaluations ~6 s; export (dynamo, on the host CPU) +
verification over 19,000 images ~20 s. About 170 s per attack; with two attacks, start-up and
the first CIFAR-10 decode (~30 s, cached afterwards) ~6-6.5 minutes. The uncertain parts are
``shapley-pruning`` and the scan; if the estimate is off, the budget check stops the run
and lists what did not run rather than overrunning 8 minutes.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import hardenkit as hk
from hardenkit.errors import ExecutionProviderError
from hardenkit.export import available_providers
from hardenkit.scan import ScanResult

from .cifar_fixtures import ATTACKS_10, TRAIN, _print_progress, clean_budget
from .common import DEFAULT_ARCHIVE, load_cifar10, md_table, peak_rss_mb, write_results
from .export_cpu import verify_row
from .purify_cpu import measure, purify_and_measure, uses_scan

NAME = "gpu_protocol"
ARCH = "preact-resnet18"
ATTACKS = ("badnets", "blended")
STRATEGIES = ("auto", "mcl", "d3", "shapley-pruning", "fine-pruning")
EPOCHS = 12
"""Training epochs per attack, sized with the estimate in the module docstring so that the
scans, 10 purifications and 2 exports fit in the 8-minute budget with ~1.5 minutes to spare
(BackdoorBench trains 100 epochs; a one-cycle schedule gets most of that BA in 12)."""
POISON_RATE = 0.1
TARGET = 0
CLEAN_FRACTION = 0.05
SEED = 0
RESERVE_S = 10.0
"""Seconds kept back for writing the results."""
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"

# Smoke mode: every phase on tiny synthetic data, seconds on a CPU. The strategy schedules
# are shortened (they would each run minutes on a CPU); everything else is the default.
SMOKE_DATA: dict[str, Any] = {
    "num_classes": 10,
    "train_per_class": 60,
    "test_per_class": 10,
    "image_size": 16,
}
SMOKE_ATTACKS = ("badnets",)  # every phase once; --attack blended adds the second attack
SMOKE_ARCH = "small-cnn"
SMOKE_ARCH_KW: dict[str, Any] = {"width": 8}
# 10 epochs plant both backdoors (BA ~80 %, ASR 40-90 %) and 20 Neural Cleanse epochs flag
# label 0 on both, so the trigger branches of auto, mcl and shapley-pruning run too.
SMOKE_TRAIN: dict[str, Any] = {"epochs": 10, "batch_size": 64, "lr": 0.05, "augment": False}
SMOKE_CLEAN_FRACTION = 0.25  # 150 of 600 images: the scan needs >= 5 per class
_TINY_NC: dict[str, Any] = {"detector_options": {"neural-cleanse": {"epochs": 20}}}
SMOKE_SCAN: dict[str, Any] = {"max_images": 200, **_TINY_NC}
SMOKE_STRATEGY_CONFIGS: dict[str, dict[str, Any]] = {
    "auto": {"trigger_config": {"epochs": 1}, "fallback_config": {"epochs": 1}},
    "mcl": {"epochs": 1},
    "d3": {"epochs": 1},
    "fine-pruning": {"epochs": 1},
    "shapley-pruning": {"max_permutations": 2, "scan": _TINY_NC},
    "finetune": {"epochs": 1},
    "nc-unlearn": {"epochs": 1},
}

# Published numbers (docs/BENCHMARKS.md): CIFAR-10, PreAct-ResNet18, 10 % poison, 5 % clean
# data; (BA %, ASR %). BackdoorBench's FP and ANP choose their pruning amount on the test set.
PUBLISHED: dict[str, dict[str, tuple[float, float]]] = {
    "BackdoorBench none": {
        "badnets": (91.32, 95.03),
        "blended": (93.47, 99.92),
        "wanet": (91.25, 89.73),
        "sig": (84.48, 98.27),
    },
    "BackdoorBench FT": {
        "badnets": (89.96, 1.48),
        "blended": (92.78, 96.11),
        "wanet": (93.48, 17.10),
        "sig": (90.80, 2.37),
    },
    "BackdoorBench FP": {
        "badnets": (91.31, 57.13),
        "blended": (93.17, 99.26),
        "wanet": (91.46, 1.09),
        "sig": (89.10, 26.20),
    },
    "BackdoorBench NAD": {
        "badnets": (89.87, 2.14),
        "blended": (92.17, 97.69),
        "wanet": (93.17, 22.98),
        "sig": (90.02, 10.66),
    },
    "BackdoorBench NC": {
        "badnets": (89.05, 1.27),
        "blended": (93.47, 99.92),
        "wanet": (91.80, 7.53),
        "sig": (84.48, 98.27),
    },
    "BackdoorBench ANP": {
        "badnets": (84.17, 0.73),
        "blended": (86.58, 2.19),
        "wanet": (85.73, 0.43),
        "sig": (77.97, 0.01),
    },
    "BackdoorBench i-BAU": {
        "blended": (87.00, 50.53),
        "wanet": (89.49, 5.21),
        "sig": (85.67, 3.68),
    },
    "D3 paper": {
        "badnets": (90.77, 0.74),
        "blended": (92.29, 0.22),
        "wanet": (93.31, 0.04),
        "sig": (89.99, 0.00),
    },
}
CLOSEST: dict[str, str] = {
    "none": "BackdoorBench none",
    "fine-pruning": "BackdoorBench FP",
    "d3": "D3 paper",
    "nc-unlearn": "BackdoorBench NC",
    "finetune": "BackdoorBench FT",
}
"""The published row compared with each of our rows (``auto``: the branch it ran)."""


class OverBudgetError(Exception):
    """The next phase does not fit in ``--max-minutes``."""

    def __init__(self, phase: str, reason: str) -> None:
        super().__init__(f"{phase}: {reason}")
        self.phase = phase
        self.reason = reason


@dataclass
class Run:
    """Wall clock, budget and the log of every phase."""

    max_seconds: float
    reserve: float
    t0: float = field(default_factory=time.perf_counter)
    phases: list[dict[str, Any]] = field(default_factory=list)
    seconds_by_kind: dict[str, float] = field(default_factory=dict)
    stopped: OverBudgetError | None = None
    _note: str | None = None

    def note(self, text: str) -> None:
        """Attach ``text`` to the record of the phase that is running."""
        self._note = text

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        """Seconds a phase may still use (the budget minus the results reserve)."""
        return self.max_seconds - self.reserve - self.elapsed()

    def log(self, msg: str) -> None:
        print(f"[{self.elapsed():7.1f}s] {msg}", flush=True)

    def phase(
        self, name: str, kind: str, fn: Callable[[float], Any], *, estimate: float | None = None
    ) -> Any:
        """Run ``fn(seconds_left)`` as phase ``name`` if it fits; log and record it.

        ``estimate`` defaults to the duration of the last phase of the same ``kind``. Raises
        :class:`OverBudgetError` when it does not fit; returns ``None`` when ``fn`` failed.
        """
        est = self.seconds_by_kind.get(kind) if estimate is None else estimate
        left = self.left()
        if left <= 0 or (est is not None and est > left):
            need = "" if est is None else f"needs ~{est:.0f} s, "
            raise OverBudgetError(
                name,
                f"{need}{max(0.0, left):.0f} s left of the {self.max_seconds:.0f} s budget "
                f"(--max-minutes) after {self.elapsed():.0f} s",
            )
        self.log(f"{name} ...")
        rec: dict[str, Any] = {"phase": name, "started_s": round(self.elapsed(), 3)}
        self._note = None
        t = time.perf_counter()
        try:
            out = fn(left)
        except OverBudgetError as stop:
            rec.update(status="stopped", seconds=time.perf_counter() - t, note=stop.reason)
            self.phases.append(rec)
            raise
        except Exception as exc:  # recorded, and the run goes on with the other phases
            traceback.print_exc()
            rec.update(status="failed", seconds=time.perf_counter() - t, note=repr(exc))
            self.phases.append(rec)
            self.log(f"{name} FAILED after {rec['seconds']:.1f} s: {exc!r}")
            return None
        secs = time.perf_counter() - t
        self.seconds_by_kind[kind] = secs
        rec.update(status="ok", seconds=secs, note=self._note)
        self.phases.append(rec)
        self.log(f"{name} done in {secs:.1f} s")
        return out

    def skip(self, name: str, why: str) -> None:
        self.phases.append({"phase": name, "status": "skipped", "seconds": 0.0, "note": why})
        self.log(f"{name} skipped: {why}")


def planned_phases(attacks: list[str], strategies: list[str]) -> list[str]:
    out = ["data"]
    for a in attacks:
        out += [f"train[{a}]", f"scan[{a}]", *(f"purify[{a}/{s}]" for s in strategies)]
        out.append(f"export[{a}]")
    return out


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """Architecture, training, scan and strategy configs of this mode (recorded in the JSON)."""
    if args.smoke:
        return {
            "arch": args.arch or SMOKE_ARCH,
            "arch_kwargs": SMOKE_ARCH_KW if (args.arch or SMOKE_ARCH) == SMOKE_ARCH else {},
            "train": {**TRAIN, **SMOKE_TRAIN, **({"epochs": args.epochs} if args.epochs else {})},
            "clean_fraction": SMOKE_CLEAN_FRACTION,
            "scan": SMOKE_SCAN,
            "strategy_configs": {s: SMOKE_STRATEGY_CONFIGS.get(s, {}) for s in args.strategy},
            "data": {"synthetic": SMOKE_DATA},
        }
    return {
        "arch": args.arch or ARCH,
        "arch_kwargs": {},
        "train": {**TRAIN, "epochs": args.epochs or EPOCHS},
        "clean_fraction": CLEAN_FRACTION,
        "scan": {},
        "strategy_configs": {s: {} for s in args.strategy},
        "data": {"archive": str(args.archive)},
    }


def resolve_device(args: argparse.Namespace) -> torch.device:
    name = args.device or ("cpu" if args.smoke else "cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(
            f"the GPU protocol needs a CUDA device, but torch {torch.__version__} sees none "
            f"(CUDA build: {torch.version.cuda}). Run it on a GPU machine with a CUDA build of "
            "torch, pass --device cpu to run the full protocol on the CPU anyway (hours), or "
            "--smoke for the seconds-long CPU check."
        )
    return torch.device(name)


def providers_for(device: torch.device) -> tuple[list[str], str | None]:
    """The ONNX Runtime providers to request, and why CUDA is not among them (if it is not)."""
    if device.type != "cuda":
        return [CPU_EP], "device is the CPU: the CPU provider was requested"
    avail = available_providers()
    if CUDA_EP not in avail:
        return [CPU_EP], (
            f"this ONNX Runtime build has no {CUDA_EP} (available: {avail}; install "
            "onnxruntime-gpu): verified on the CPU provider instead"
        )
    return [CUDA_EP, CPU_EP], None


def export_record(
    model: Any, test: hk.ImageDataset, trigger: Any, device: torch.device
) -> dict[str, Any]:
    """Export ``model`` to ONNX (a temporary directory) and verify it over ``test``.

    On a CUDA device the CUDA execution provider is requested first; when this ONNX Runtime
    has none, or the session silently fell back (``ExecutionProviderError``), the verification
    runs on the CPU provider and ``provider_fallback`` / ``provider_note`` say so.
    """
    provs, why = providers_for(device)
    rec: dict[str, Any] = {
        "providers_requested": provs,
        "provider_fallback": why is not None and device.type == "cuda",
        "provider_note": why,
    }
    with tempfile.TemporaryDirectory(prefix="hardenkit-gpu-protocol-") as tmp:
        t0 = time.perf_counter()
        exp = hk.to_onnx(model, Path(tmp) / "model.onnx", input_shape=test.image_shape)
        rec["export s"] = time.perf_counter() - t0
        try:
            cells, ver = verify_row(exp, model, test, trigger, TARGET, providers=provs)
        except ExecutionProviderError as exc:
            rec.update(
                provider_fallback=True,
                provider_note=f"{provs[0]} was requested but ONNX Runtime did not run on it "
                f"({exc}); verified on the CPU provider instead",
                providers_requested=[*provs, CPU_EP],
            )
            cells, ver = verify_row(exp, model, test, trigger, TARGET, providers=[CPU_EP])
    rec.update(cells)
    rec["providers_active"] = ver.providers_active
    rec["provider_ran"] = ver.providers_active[0] if ver.providers_active else None
    rec["profile"] = ver.profile
    rec["failed_checks"] = [c.name for c in ver.failed_checks]
    return rec


def published(source: str | None, attack: str) -> tuple[float, float] | None:
    return None if source is None else PUBLISHED.get(source, {}).get(attack)


def _finite(row: dict[str, Any]) -> bool:
    return all(math.isfinite(float(row[k])) for k in ("ba", "asr", "ra"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--smoke", action="store_true", help="CPU, synthetic data, seconds (CI)")
    p.add_argument("--device", help="cuda (default), cuda:N or cpu (--smoke: cpu)")
    p.add_argument(
        "--attack",
        action="append",
        choices=ATTACKS_10,
        help="attack(s) (default: badnets and blended; --smoke: badnets)",
    )
    p.add_argument(
        "--strategy",
        action="append",
        choices=sorted(hk.purify.STRATEGIES.names()),
        help=f"purification strategy(ies) (default: {', '.join(STRATEGIES)})",
    )
    p.add_argument("--epochs", type=int, help=f"training epochs (default {EPOCHS}; --smoke 10)")
    p.add_argument("--arch", help=f"zoo architecture (default {ARCH}; --smoke {SMOKE_ARCH})")
    p.add_argument(
        "--export-strategy",
        default="auto",
        help="whose model is exported and verified: a strategy run here, or 'none' for the "
        "backdoored model (default: auto; the backdoored model when it did not run)",
    )
    p.add_argument(
        "--max-minutes", type=float, default=8.0, help="wall-time budget (default: %(default)s)"
    )
    p.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE, help="CIFAR-10 JPEG archive")
    p.add_argument(
        "--out",
        type=Path,
        help="results directory (default: benchmarks/results/; --smoke: a temporary directory)",
    )
    p.add_argument("--name", default=NAME, help="results file name (default: %(default)s)")
    args = p.parse_args(argv)
    if args.max_minutes <= 0:
        p.error("--max-minutes must be positive")
    if args.epochs is not None and args.epochs < 1:
        p.error("--epochs must be >= 1")
    args.attack = args.attack or list(SMOKE_ATTACKS if args.smoke else ATTACKS)
    args.strategy = args.strategy or list(STRATEGIES)
    device = resolve_device(args)
    if args.out is None and args.smoke:
        args.out = Path(tempfile.mkdtemp(prefix="hardenkit-gpu-protocol-smoke-"))
    cfg = settings(args)
    runtime: dict[str, Any] = {"device": str(device), "seed": SEED, "amp": "auto"}
    amp = hk.RuntimeConfig(**runtime).use_amp(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its kernels
    run = Run(max_seconds=60 * args.max_minutes, reserve=0.5 if args.smoke else RESERVE_S)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    run.log(
        f"protocol cifar10-gpu{' (smoke)' if args.smoke else ''} on {gpu or device}, "
        f"bf16 autocast {'on' if amp else 'off'}, attacks {args.attack}, strategies "
        f"{args.strategy}, {cfg['train']['epochs']} epochs, budget {args.max_minutes:g} min"
    )

    rows: list[dict[str, Any]] = []
    trains: list[dict[str, Any]] = []
    scans: list[dict[str, Any]] = []
    exports: list[dict[str, Any]] = []
    data: dict[str, hk.ImageDataset] = {}

    def load_data(_: float) -> None:
        if args.smoke:
            splits = hk.make_synthetic_dataset(seed=SEED, **SMOKE_DATA)
            data.update(train=splits.train, test=splits.test)
        else:
            data.update(load_cifar10(args.archive))

    try:
        run.phase("data", "data", load_data)
        for attack in args.attack if data else []:
            run_attack(attack, args, cfg, runtime, device, data, run, rows, trains, scans, exports)
    except OverBudgetError as stop:
        run.stopped = stop
        run.log(f"STOPPED: {stop} — the remaining phases did not run")

    done = {ph["phase"] for ph in run.phases}
    not_run = [ph for ph in planned_phases(args.attack, args.strategy) if ph not in done]
    failed = [ph["phase"] for ph in run.phases if ph["status"] == "failed"]
    complete = run.stopped is None and not not_run and not failed
    meta = {
        "protocol": "cifar10-gpu" + (" smoke (synthetic data, CPU)" if args.smoke else ""),
        "mode": "smoke" if args.smoke else "full",
        "device": str(device),
        "gpu": gpu,
        "bf16_autocast": amp,
        "attacks": args.attack,
        "attack_config": {"poison_rate": POISON_RATE, "target": TARGET, "seed": SEED},
        "strategies": args.strategy,
        "export_strategy": args.export_strategy,
        **cfg,
        "budget": {
            "max_minutes": args.max_minutes,
            "elapsed_seconds": run.elapsed(),
            "complete": complete,
            "stopped_at": None if run.stopped is None else run.stopped.phase,
            "stop_reason": None if run.stopped is None else run.stopped.reason,
            "not_run": not_run,
            "failed": failed,
            "caps": "scan and strategy configs get max_seconds = the time left in the budget "
            "(a cap that a complete run never reaches)",
        },
        "phases": run.phases,
        "train_results": trains,
        "scans": scans,
        "exports": exports,
        "details": rows,
        "published": {k: {a: list(v) for a, v in d.items()} for k, d in PUBLISHED.items()},
        "peak_rss_mb": peak_rss_mb(),
        "command": "python -m benchmarks.gpu_protocol " + " ".join(argv or sys.argv[1:]),
    }
    table = [table_row(r) for r in rows]
    out = write_results(args.name, table, TABLE_COLUMNS, meta, results_dir=args.out)
    out.write_text(out.read_text() + markdown_sections(meta))
    print(out.read_text(), flush=True)
    run.log(f"results: {out} and {out.with_suffix('.json')}")
    if failed:
        return 1
    return 3 if run.stopped is not None or not_run else 0


def run_attack(
    attack: str,
    args: argparse.Namespace,
    cfg: dict[str, Any],
    runtime: dict[str, Any],
    device: torch.device,
    data: dict[str, hk.ImageDataset],
    run: Run,
    rows: list[dict[str, Any]],
    trains: list[dict[str, Any]],
    scans: list[dict[str, Any]],
    exports: list[dict[str, Any]],
) -> None:
    """The phases of one attack: train, scan, purify (each strategy), export + verify."""
    train, test = data["train"], data["test"]
    arch, arch_kw = cfg["arch"], cfg["arch_kwargs"]
    epochs = int(cfg["train"]["epochs"])
    state: dict[str, Any] = {}

    def do_train(left: float) -> None:
        t0 = time.perf_counter()
        last = [t0]  # end of the previous epoch

        def progress(phase: str, step: int, total: int, **info: Any) -> None:
            """Print the epoch; stop when the remaining epochs cannot fit in the budget.

            The projection uses the last epoch's time, from epoch 2 on: the first one also
            holds one-off costs (cuDNN autotuning, allocator warm-up).
            """
            _print_progress(phase, step, total, **info)
            now = time.perf_counter()
            epoch_s, last[0] = now - last[0], now
            if not phase.startswith("train") or step >= total:
                return
            remaining = left - (now - t0)
            need = epoch_s * (total - step) if step >= 2 else 0.0
            if remaining <= 0 or need > remaining:
                raise OverBudgetError(
                    f"train[{attack}]",
                    f"after epoch {step}/{total} ({epoch_s:.1f} s for the last one) the "
                    f"remaining {total - step} epochs need ~{need:.0f} s, more than the "
                    f"{max(0.0, remaining):.0f} s left of the budget",
                )

        torch.manual_seed(SEED)
        bd = hk.make_backdoored_model(
            attack,
            train,
            arch=lambda: hk.create_model(arch, train.num_classes, **arch_kw),
            attack_config={"poison_rate": POISON_RATE, "target": TARGET, "seed": SEED},
            train_config=cfg["train"],
            runtime=runtime,
            progress=progress,
        )
        train_s = time.perf_counter() - t0
        base = measure(bd.model, bd.trigger, test, device=str(device), target=TARGET)
        idx, excludes = clean_budget(bd, train.labels, seed=SEED, fraction=cfg["clean_fraction"])
        state.update(bd=bd, clean=train.subset(idx), base=base)
        trains.append(
            {
                "attack": attack,
                **base,
                "epochs": epochs,
                "train_seconds": train_s,
                "seconds_per_epoch": train_s / epochs,
                "poisoned": len(bd.poisoned.poison_indices),
                "clean_budget": len(idx),
                "clean_budget_excludes_poisoned": excludes,
                "final_loss": bd.history.final_loss,
            }
        )
        rows.append(
            {
                "attack": attack,
                "strategy": "none",
                **base,
                "der": 0.5,
                "seconds": 0.0,
                "status": "-",
                "branch": None,
            }
        )
        run.log(
            f"  {attack}: BA {100 * base['ba']:.2f} ASR {100 * base['asr']:.2f} "
            f"RA {100 * base['ra']:.2f} ({train_s / epochs:.1f} s/epoch)"
        )

    prev = run.seconds_by_kind.get("train")
    run.phase(f"train[{attack}]", "train", do_train, estimate=prev)
    if "bd" not in state:
        for ph in planned_phases([attack], args.strategy)[2:]:
            run.skip(ph, f"train[{attack}] failed")
        return
    bd, clean, base = state["bd"], state["clean"], state["base"]

    def do_scan(left: float) -> ScanResult:
        scan_cfg = {**cfg["scan"], "max_seconds": left}
        t0 = time.perf_counter()
        scan = hk.Scanner(bd.model, train.num_classes, config=scan_cfg, runtime=runtime).run(
            clean.loader(batch_size=500)
        )
        secs = time.perf_counter() - t0
        rep = scan.report
        scans.append(
            {
                "attack": attack,
                "verdict": scan.verdict,
                "score": rep.score,
                "flagged_labels": scan.flagged_labels,
                "target_found": TARGET in scan.flagged_labels,
                "triggers": sorted(scan.triggers),
                "budget_exhausted": rep.budget_exhausted,
                "seconds": secs,
                "detectors": list(rep.config.get("detectors", [])),
            }
        )
        run.log(f"  scan: {scan.verdict} (score {rep.score:.3f}), flagged {scan.flagged_labels}")
        if rep.budget_exhausted:
            run.note("cut short by max_seconds (the time left in the budget): not conclusive")
        return scan

    scan = run.phase(f"scan[{attack}]", "scan", do_scan)
    models: dict[str, Any] = {"none": bd.model}
    for strategy in args.strategy:
        name = f"purify[{attack}/{strategy}]"
        if scan is None and uses_scan(strategy):
            run.skip(name, f"scan[{attack}] failed and {strategy} repairs with the scan")
            continue

        def do_purify(left: float, strategy: str = strategy) -> None:
            scfg = {**cfg["strategy_configs"].get(strategy, {}), "max_seconds": left}
            cell, res = purify_and_measure(
                bd.model,
                strategy,
                scfg,
                clean,
                test,
                bd.trigger,
                scan if uses_scan(strategy) else None,
                runtime=runtime,
                target=TARGET,
            )
            cell["der"] = hk.der(
                ba_before=base["ba"],
                ba_after=cell["ba"],
                asr_before=base["asr"],
                asr_after=cell["asr"],
            )
            branch = res.report.details.get("branch")
            rows.append({"attack": attack, "strategy": strategy, **cell, "branch": branch})
            if res.status == "budget-exhausted":
                run.note("cut short by max_seconds (the time left in the budget)")
            models[strategy] = res.model
            run.log(
                f"  {strategy}: BA {100 * cell['ba']:.2f} ASR {100 * cell['asr']:.2f} "
                f"RA {100 * cell['ra']:.2f} DER {100 * cell['der']:.1f} {cell['status']}"
            )

        run.phase(name, f"purify/{strategy}", do_purify)

    def do_export(_: float) -> None:
        which = args.export_strategy if args.export_strategy in models else "none"
        rec = export_record(models[which], test, bd.trigger, device)
        rec = {"attack": attack, "model": which, **rec}
        if which != args.export_strategy:
            rec["model_note"] = f"{args.export_strategy} did not run: exported the backdoored model"
        exports.append(rec)
        note = f" ({rec['provider_note']})" if rec["provider_note"] else ""
        parity = "passed" if rec["parity passed"] else "FAILED"
        run.log(f"  export: parity {parity} on {rec['provider_ran']}{note}")
        if rec["provider_fallback"]:
            run.note(str(rec["provider_note"]))

    run.phase(f"export[{attack}]", "export", do_export)


TABLE_COLUMNS = [
    "attack",
    "strategy",
    "BA %",
    "ASR %",
    "RA %",
    "DER %",
    "seconds",
    "status",
    "published (closest)",
    "published BA / ASR %",
]


def table_row(r: dict[str, Any]) -> dict[str, Any]:
    key = r["branch"] if r["strategy"] == "auto" else r["strategy"]
    source = CLOSEST.get(str(key))
    pub = published(source, r["attack"])
    return {
        "attack": r["attack"],
        "strategy": r["strategy"] + (f" ({r['branch']})" if r.get("branch") else ""),
        "BA %": 100 * r["ba"],
        "ASR %": 100 * r["asr"],
        "RA %": 100 * r["ra"],
        "DER %": 100 * r["der"],
        "seconds": r["seconds"],
        "status": r["status"],
        "published (closest)": source or "-",
        "published BA / ASR %": "-" if pub is None else f"{pub[0]:.2f} / {pub[1]:.2f}",
    }


SCAN_COLUMNS = [
    "attack",
    "verdict",
    "score",
    "flagged_labels",
    "target_found",
    "budget_exhausted",
    "seconds",
]
TRAIN_COLUMNS = [
    "attack",
    "BA %",
    "ASR %",
    "RA %",
    "epochs",
    "train s",
    "s / epoch",
    "poisoned",
    "clean budget",
]


def markdown_sections(meta: dict[str, Any]) -> str:
    """Training, scan, export, phase and published-numbers sections of the markdown."""
    b = meta["budget"]
    md = (
        f"\nMode {meta['mode']}, device {meta['gpu'] or meta['device']}, bf16 autocast "
        f"{meta['bf16_autocast']}, {meta['arch']}, {meta['train']['epochs']} epochs; BA / ASR / "
        "RA on the full test set with the real trigger (ASR over non-target images), DER "
        "against the undefended model (`none`). Published rows: BackdoorBench trained 100 "
        "epochs, and its FP and ANP choose the pruning amount on the test set (oracle); ours "
        "never see the test set.\n"
    )
    status = "complete" if b["complete"] else "INCOMPLETE"
    md += (
        f"\nTotal {b['elapsed_seconds']:.1f} s of the {b['max_minutes']:g}-minute budget: "
        f"{status}.\n"
    )
    if b["stopped_at"]:
        md += f"\n**Stopped at {b['stopped_at']}**: {b['stop_reason']}.\n"
    if b["not_run"]:
        md += "\nPhases that did not run: " + ", ".join(f"`{p}`" for p in b["not_run"]) + "\n"
    if b["failed"]:
        md += "\nPhases that failed: " + ", ".join(f"`{p}`" for p in b["failed"]) + "\n"
    md += "\n## Training (undefended)\n\n" + md_table(
        [
            {
                "attack": t["attack"],
                "BA %": 100 * t["ba"],
                "ASR %": 100 * t["asr"],
                "RA %": 100 * t["ra"],
                "epochs": t["epochs"],
                "train s": t["train_seconds"],
                "s / epoch": t["seconds_per_epoch"],
                "poisoned": t["poisoned"],
                "clean budget": t["clean_budget"],
            }
            for t in meta["train_results"]
        ],
        TRAIN_COLUMNS,
    )
    md += "\n## Scan\n\n" + md_table(
        [{**s, "flagged_labels": str(s["flagged_labels"])} for s in meta["scans"]],
        SCAN_COLUMNS,
    )
    md += "\n## Export + verify (ONNX Runtime)\n\n" + md_table(
        [
            {
                **e,
                "provider ran": e["provider_ran"],
                "fallback": e["provider_fallback"],
            }
            for e in meta["exports"]
        ],
        [
            "attack",
            "model",
            "export s",
            "verify s",
            "parity passed",
            "max abs diff",
            "BA torch %",
            "BA onnx %",
            "ASR torch %",
            "ASR onnx %",
            "provider ran",
            "fallback",
        ],
    )
    for e in meta["exports"]:
        if e.get("provider_note"):
            md += f"\n{e['attack']}: {e['provider_note']}\n"
    md += "\n## Phases\n\n" + md_table(
        [{**p, "note": p.get("note") or ""} for p in meta["phases"]],
        ["phase", "status", "seconds", "note"],
    )
    attacks = meta["attacks"]
    md += "\n## Published numbers\n\nCIFAR-10, PreAct-ResNet18, 10 % poison, 5 % clean; "
    md += "BA / ASR %.\n\n"
    md += md_table(
        [
            {
                "source": src,
                **{a: "-" if a not in v else f"{v[a][0]:.2f} / {v[a][1]:.2f}" for a in attacks},
            }
            for src, v in PUBLISHED.items()
        ],
        ["source", *attacks],
    )
    md += (
        "\nMCL publishes no PreAct-ResNet18 row (reference README: WRN-16-1, BadNets 10 %: BA "
        "83.01 → 82.29, ASR 99.64 → 1.92); Shapley pruning has no BackdoorBench row.\n"
    )
    return md


if __name__ == "__main__":
    raise SystemExit(main())
