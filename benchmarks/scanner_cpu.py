"""Scanner protocol on the `cifar10-cpu` fixtures: detection TPR/FPR, target accuracy, AUROC,
seconds per model, and the batched-vs-sequential Neural Cleanse speed-up measured side by side.

    python -m benchmarks.scanner_cpu                 # every built fixture (backdoored + clean)
    python -m benchmarks.scanner_cpu --speedup-only  # only the batched vs sequential timing
                                                     # (-> results/scanner_cpu_speedup.*)

Models: the backdoored 10 % fixtures (BadNets, Blended, WaNet, SIG; seeds 0 and 1) and the clean
reference models trained with the same recipe (``clean-s*``); build them with
``python -m benchmarks.cifar_fixtures --only NAME``. Fixtures not built yet are skipped and
listed in the result. Each model is scanned with its fixture's clean budget (2,500 clean
training images; the Scanner uses ``--max-images`` of them for inversion and holds out 20 %,
capped at 1,000, to measure the recovered trigger's ASR), with Neural Cleanse (batched) and the
data-free MM-BD, combined with ``any``. Per-model scan results are cached under
``benchmarks/cache/scans/`` (keyed by the scan config) so a run can be resumed.
Writes ``benchmarks/results/scanner_cpu.{json,md}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

import hardenkit as hk

from .cifar_fixtures import ATTACKS_10, FIXTURES, fixture_dir, fixture_key, is_clean, load_fixture
from .common import CACHE, config_hash, load_cifar10, peak_rss_mb, write_results

BACKDOORED = [f"{a}-0.1{s}" for s in ("", "-s1") for a in ATTACKS_10]
CLEAN = [f"clean-s{i}" for i in range(8)]


def scan_config(epochs: int, max_images: int, batch_size: int, mode: str = "batched") -> dict:
    return {
        "detectors": ["neural-cleanse", "mm-bd"],
        "combine": "any",
        "max_images": max_images,
        "detector_options": {
            "neural-cleanse": {"epochs": epochs, "batch_size": batch_size, "mode": mode}
        },
    }


def auroc(pos: list[float], neg: list[float]) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with ties counted half)."""
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def scan_cache(name: str, cfg: dict) -> Path:
    """``<cache>/scans/<fixture>-<hash>.json`` (the row); the ScanResult is saved beside it."""
    key = config_hash({"fixture": fixture_key(name), "scan": cfg, "v": 1})
    return CACHE / "scans" / f"{name}-{key}.json"


def scan_fixture(name: str, cfg: dict, data: dict[str, hk.ImageDataset]) -> dict[str, Any]:
    cache = scan_cache(name, cfg)
    if cache.is_file():
        row: dict[str, Any] = json.loads(cache.read_text())
        row["cached"] = True
        return row
    model, _, idx, info = load_fixture(name)
    clean = data["train"].subset(idx["clean_indices"])
    t0 = time.perf_counter()
    scan = hk.Scanner(model, 10, config=cfg, runtime={"device": "cpu", "seed": 0}).run(
        clean.loader(batch_size=500)
    )
    seconds = time.perf_counter() - t0
    scan.save(cache.with_suffix(""))  # report + recovered triggers, reused by purify_cpu
    rep = scan.report
    nc, mm = rep.detectors
    target = None if is_clean(name) else int(info["config"]["attack_config"]["target"])
    row = {
        "model": name,
        "attack": info["config"]["attack"],
        "backdoored": not is_clean(name),
        "target": target,
        "verdict": rep.verdict,
        "score": rep.score,
        "flagged": rep.flagged_labels,
        "nc_verdict": nc.verdict,
        "nc_index": nc.anomaly_index,
        "nc_score": nc.score,
        "nc_flagged": nc.flagged_labels,
        "nc_target_l1": None if target is None else rep.classes[target].mask_l1,
        "nc_target_trigger_asr": None if target is None else rep.classes[target].trigger_asr,
        "nc_seconds": nc.seconds,
        "mm_verdict": mm.verdict,
        "mm_p": mm.p_value,
        "mm_score": mm.score,
        "mm_flagged": mm.flagged_labels,
        "mm_seconds": mm.seconds,
        "seconds": seconds,
        "cached": False,
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(row, indent=2))
    return row


def speedup(
    cfg: dict,
    name: str,
    data: dict[str, hk.ImageDataset],
    epochs: int,
    repeats: int,
    max_images_per_step: int | None = None,
) -> dict[str, Any]:
    """Batched vs sequential Neural Cleanse on the same model, data, seed and config.

    The two modes run alternately ``repeats`` times each (``epochs`` epochs per label, early
    stopping off so both do exactly the same work) and the fastest run of each mode is
    compared, which damps the noise of a shared machine. The recovered mask norms must agree.
    """
    model, _, idx, _ = load_fixture(name)
    clean = data["train"].subset(idx["clean_indices"])
    nc = dict(cfg["detector_options"]["neural-cleanse"], epochs=epochs, early_stop=False)
    if max_images_per_step is not None:
        nc["max_images_per_step"] = max_images_per_step
    out: dict[str, Any] = {
        "model": name,
        "epochs": epochs,
        "repeats": repeats,
        "max_images_per_step": nc.get("max_images_per_step", "default"),
    }
    l1: dict[str, list[float]] = {}
    times: dict[str, list[float]] = {"batched": [], "sequential": []}
    for _ in range(repeats):
        for mode in ("batched", "sequential"):
            run_cfg = {
                **cfg,
                "detectors": ["neural-cleanse"],
                "detector_options": {"neural-cleanse": {**nc, "mode": mode}},
            }
            scan = hk.Scanner(model, 10, config=run_cfg, runtime={"device": "cpu", "seed": 0})
            res = scan.run(clean.loader(batch_size=500))
            times[mode].append(res.report.detectors[0].seconds)
            l1[mode] = [float(c.mask_l1 or 0.0) for c in res.report.classes]
            out[f"{mode}_index"] = res.report.detectors[0].anomaly_index
            print(f"  {mode}: {times[mode][-1]:.1f}s", flush=True)
    for mode, ts in times.items():
        out[f"{mode}_seconds"] = min(ts)
        out[f"{mode}_all_seconds"] = ts
    out["speedup"] = out["sequential_seconds"] / out["batched_seconds"]
    out["max_rel_l1_diff"] = max(
        abs(a - b) / max(abs(b), 1e-9) for a, b in zip(l1["batched"], l1["sequential"], strict=True)
    )
    out["throughput_by_batch"] = throughput(model)
    return out


def throughput(model: torch.nn.Module) -> dict[int, float]:
    """Images/s of one forward+backward (input gradient only) by batch size: why batching
    over labels does (not) pay off on this device."""
    m = copy.deepcopy(model).eval().requires_grad_(False)
    m.to(memory_format=torch.channels_last)  # as the Scanner does
    out = {}
    for bs in (32, 64, 128, 256, 640, 1280):
        x = torch.rand(bs, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)
        m(x).sum().backward()
        reps = max(3, 3840 // bs)
        t0 = time.perf_counter()
        for _ in range(reps):
            x.grad = None
            m(x).sum().backward()
        out[bs] = reps * bs / (time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--epochs", type=int, default=40, help="Neural Cleanse epochs per label")
    p.add_argument("--max-images", type=int, default=500, help="inversion images")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--speedup-model", default="badnets-0.1", choices=sorted(FIXTURES))
    p.add_argument("--speedup-only", action="store_true")
    p.add_argument("--speedup-epochs", type=int, default=10)
    p.add_argument("--speedup-repeats", type=int, default=2)
    p.add_argument(
        "--speedup-max-images-per-step",
        type=int,
        help="neural-cleanse max_images_per_step of the batched mode in the speed-up runs",
    )
    p.add_argument("--no-speedup", action="store_true")
    p.add_argument("--only", action="append", help="scan only these fixtures")
    args = p.parse_args(argv)
    data = load_cifar10()
    cfg = scan_config(args.epochs, args.max_images, args.batch_size)
    names = args.only or [*BACKDOORED, *CLEAN]
    built = [n for n in names if (fixture_dir(n) / "fixture.json").is_file()]
    missing = [n for n in names if n not in built]
    rows: list[dict[str, Any]] = []
    if not args.speedup_only:
        for name in built:
            print(f"[{time.strftime('%H:%M:%S')}] scan {name} ...", flush=True)
            rows.append(scan_fixture(name, cfg, data))
            r = rows[-1]
            print(
                f"  {r['verdict']} flagged={r['flagged']} nc={r['nc_index']:.2f} "
                f"mm_p={r['mm_p']:.3g} {r['seconds']:.0f}s cached={r['cached']}",
                flush=True,
            )
    sp = None
    if not args.no_speedup:
        print(f"[{time.strftime('%H:%M:%S')}] speed-up on {args.speedup_model} ...", flush=True)
        sp = speedup(
            cfg,
            args.speedup_model,
            data,
            args.speedup_epochs,
            args.speedup_repeats,
            args.speedup_max_images_per_step,
        )
    summary = summarize(rows)
    table = rows
    cols = [
        "model",
        "attack",
        "verdict",
        "flagged",
        "nc_index",
        "nc_flagged",
        "nc_target_l1",
        "nc_target_trigger_asr",
        "mm_p",
        "mm_flagged",
        "nc_seconds",
        "mm_seconds",
        "seconds",
    ]
    meta = {
        "protocol": "cifar10-cpu scanner",
        "scan_config": cfg,
        "missing_fixtures": missing,
        "speedup": sp,
        "summary": summary,
        "torch_threads": torch.get_num_threads(),
        "peak_rss_mb": peak_rss_mb(),
        "command": "python -m benchmarks.scanner_cpu " + " ".join(argv or sys.argv[1:]),
    }
    name = "scanner_cpu_speedup" if args.speedup_only else "scanner_cpu"
    out = write_results(name, table, cols, meta)
    md = out.read_text()
    md += "\n## Detection summary\n\n" + _summary_md(summary) + "\n"
    if sp is not None:
        md += (
            f"\n## Batched vs sequential Neural Cleanse ({sp['model']}, same data/seed/config, "
            f"{sp['epochs']} epochs per label, early stopping off, fastest of {sp['repeats']} "
            f"alternating runs, max_images_per_step {sp['max_images_per_step']})\n\n"
            f"| mode | seconds (fastest) | all runs | anomaly index |\n|---|---|---|---|\n"
            f"| batched | {sp['batched_seconds']:.1f} | "
            f"{', '.join(f'{t:.1f}' for t in sp['batched_all_seconds'])} | "
            f"{sp['batched_index']:.2f} |\n"
            f"| sequential | {sp['sequential_seconds']:.1f} | "
            f"{', '.join(f'{t:.1f}' for t in sp['sequential_all_seconds'])} | "
            f"{sp['sequential_index']:.2f} |\n\n"
            f"Speed-up: **{sp['speedup']:.2f}x**; largest relative difference of a label's mask "
            f"L1 between the modes: {sp['max_rel_l1_diff']:.2e}.\n\n"
            "Forward+backward throughput of this model by batch size (images/s, "
            f"{torch.get_num_threads()} thread(s)): "
            + ", ".join(f"{b}: {v:.0f}" for b, v in sp["throughput_by_batch"].items())
            + "\n"
        )
    if missing:
        md += f"\nNot built (skipped): {', '.join(missing)}\n"
    out.write_text(md)
    print(md)
    return 0


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per detector (nc, mm-bd, combined): TPR, FPR, target accuracy, AUROC, seconds."""
    pos = [r for r in rows if r["backdoored"]]
    neg = [r for r in rows if not r["backdoored"]]
    out = []
    for label, verdict, score, flagged, secs in (
        ("neural-cleanse", "nc_verdict", "nc_score", "nc_flagged", "nc_seconds"),
        ("mm-bd", "mm_verdict", "mm_score", "mm_flagged", "mm_seconds"),
        ("combined (any)", "verdict", "score", "flagged", "seconds"),
    ):
        detected = [r for r in pos if r[verdict] == "backdoored"]
        out.append(
            {
                "detector": label,
                "backdoored_models": len(pos),
                "clean_models": len(neg),
                "tpr": len(detected) / len(pos) if pos else None,
                "fpr": sum(r[verdict] == "backdoored" for r in neg) / len(neg) if neg else None,
                "target_accuracy": (
                    sum(r[flagged][:1] == [r["target"]] for r in detected) / len(detected)
                    if detected
                    else None
                ),
                "auroc": auroc([r[score] for r in pos], [r[score] for r in neg]),
                "mean_seconds": sum(r[secs] for r in rows) / len(rows) if rows else None,
                "per_attack_detected": {
                    a: f"{sum(r[verdict] == 'backdoored' for r in pos if r['attack'] == a)}/"
                    f"{sum(r['attack'] == a for r in pos)}"
                    for a in ATTACKS_10
                },
            }
        )
    return out


def _summary_md(summary: list[dict[str, Any]]) -> str:
    def f(v: Any, pct: bool = False) -> str:
        if v is None:
            return "n/a"
        return f"{100 * v:.0f}%" if pct else f"{v:.2f}"

    lines = [
        "| detector | TPR | FPR | target acc. | AUROC | s/model "
        "| BadNets | Blended | WaNet | SIG |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        pa = s["per_attack_detected"]
        lines.append(
            f"| {s['detector']} | {f(s['tpr'], True)} ({s['backdoored_models']}) | "
            f"{f(s['fpr'], True)} ({s['clean_models']}) | {f(s['target_accuracy'], True)} | "
            f"{f(s['auroc'])} | {f(s['mean_seconds'])} | {pa['badnets']} | {pa['blended']} | "
            f"{pa['wanet']} | {pa['sig']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
