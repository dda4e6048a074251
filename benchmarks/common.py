"""Shared helpers of the benchmark scripts: CIFAR-10 loading with a local cache, result files."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from hardenkit._utils.environment import environment_info
from hardenkit.data import ImageDataset, load_image_archive
from hardenkit.purify import AutoConfig, MCLConfig, PurificationReport

ROOT = Path(__file__).resolve().parent
DEFAULT_ARCHIVE = ROOT.parent.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
CACHE = Path(os.environ.get("HARDENKIT_BENCH_CACHE", ROOT / "cache"))
RESULTS = ROOT / "results"
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def config_hash(cfg: dict[str, Any]) -> str:
    """Stable short hash of a JSON-able config (the fixture cache key)."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]


def mcl_default_key(strategy: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """Cache-key fields for a cell whose result depends on a default that changed: MCL's anchor
    weight (1 -> 3 at stop 34) for ``auto`` and ``mcl`` cells whose config does not set
    ``anchor_weight``; ``auto``'s ``candidate_mcl`` (0 -> 1 at stop 38) for ``auto`` cells
    whose config does not set it (no field while it was 0: older keys stay valid); ``auto``'s
    ``candidate_mcl_detectors`` (none -> ``signal`` at stop 51) likewise; MCL's
    ``recalibrate_prior`` for ``auto`` and ``mcl`` cells whose config does not set it, should it
    become the default (opt-in since stop 46: no field, older keys stay valid); MCL's
    ``inversion_restarts`` likewise (opt-in since stop 61)."""
    key: dict[str, Any] = {}
    if strategy in ("auto", "mcl") and "anchor_weight" not in json.dumps(cfg):
        key["mcl_anchor"] = MCLConfig().anchor_weight
    if strategy == "auto" and "candidate_mcl" not in cfg and AutoConfig().candidate_mcl:
        key["candidate_mcl"] = AutoConfig().candidate_mcl
    if (  # stop 51: the smooth signal's own checked MCL run (none before: older keys valid)
        strategy == "auto"
        and "candidate_mcl_detectors" not in cfg
        and AutoConfig().candidate_mcl_detectors
    ):
        key["candidate_mcl_detectors"] = list(AutoConfig().candidate_mcl_detectors)
    if (
        strategy in ("auto", "mcl")
        and "recalibrate_prior" not in json.dumps(cfg)
        and MCLConfig().recalibrate_prior
    ):
        key["mcl_recalibrate_prior"] = True
    if (  # stop 61: opt-in (no field while the default is 0: older keys stay valid)
        strategy in ("auto", "mcl")
        and "inversion_restarts" not in json.dumps(cfg)
        and MCLConfig().inversion_restarts
    ):
        key["mcl_inversion_restarts"] = MCLConfig().inversion_restarts
    return key


def guard_fields(report: PurificationReport) -> dict[str, Any]:
    """A purification's known-trigger rows and trigger guard (stop 54), its utility guard
    with the paired interval of the BA drop (stop 55) and the recheck of the judged labels
    (stop 62), for a benchmark cell."""
    guard, utility, recheck = report.trigger_guard, report.utility_guard, report.recheck
    return {
        "trigger_asr": [t.model_dump() for t in report.trigger_asr],
        "trigger_guard": None if guard is None else guard.model_dump(),
        "utility_guard": None if utility is None else utility.model_dump(),
        "recheck": None if recheck is None else recheck.model_dump(),
    }


def recheck_cell(recheck: dict[str, Any] | None) -> str:
    """A table cell for a purification's recheck (``guard_fields(...)["recheck"]``): each
    rechecked label's anomaly index before -> after and whether it passed; ``-`` when none ran.

    >>> recheck_cell({"passed": False, "skipped": None, "rows": [{"label": 0,
    ...     "anomaly_before": 8.73, "anomaly_after": 6.2, "flagged_after": True}]})
    '0: 8.73 -> 6.20 flagged (fail)'
    >>> recheck_cell({"passed": None, "skipped": "the scan was passed in", "rows": []})
    'skipped'
    """
    if not recheck:
        return "-"
    if recheck.get("skipped"):
        return "skipped"
    parts = [
        f"{r['label']}: {r['anomaly_before']:.2f} -> {r['anomaly_after']:.2f}"
        + (" flagged" if r["flagged_after"] else "")
        for r in recheck.get("rows", [])
    ]
    verdict = {True: "pass", False: "fail", None: "n/a"}[recheck.get("passed")]
    return "; ".join(parts) + f" ({verdict})"


def save_cached(cache: Path, row: dict[str, Any]) -> dict[str, Any]:
    """Write the benchmark cell ``row`` to ``cache`` (JSON; folders made) and return it."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(row, indent=2, default=str))
    return row


def load_cached(cache: Path) -> dict[str, Any] | None:
    """The benchmark cell cached at ``cache`` (a JSON row), or ``None`` when not measured."""
    if not cache.is_file():
        return None
    row: dict[str, Any] = json.loads(cache.read_text())
    return row


def load_cifar10(archive: Path = DEFAULT_ARCHIVE) -> dict[str, ImageDataset]:
    """CIFAR-10 train/test from the JPEG archive, cached as uint8 safetensors (not committed)."""
    if not archive.is_file():
        raise SystemExit(
            f"CIFAR-10 archive not found at {archive}. Pass --archive PATH "
            "(ImageFolder layout train/<class>/*.jpg, test/<class>/*.jpg)."
        )
    stat = archive.stat()
    key = config_hash({"path": str(archive.resolve()), "size": stat.st_size})
    cache = CACHE / f"cifar10-{key}.safetensors"
    if cache.is_file():
        t = load_file(str(cache))
        return {
            s: ImageDataset(t[f"{s}_x"], t[f"{s}_y"], CIFAR10_CLASSES) for s in ("train", "test")
        }
    t0 = time.perf_counter()
    splits = load_image_archive(archive)
    print(f"decoded {archive.name} in {time.perf_counter() - t0:.1f}s", flush=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            "train_x": splits["train"].images.contiguous(),
            "train_y": splits["train"].labels.contiguous(),
            "test_x": splits["test"].images.contiguous(),
            "test_y": splits["test"].labels.contiguous(),
        },
        str(cache),
    )
    return splits


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def md_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A markdown table of ``rows`` (floats with 2 decimals, ``None`` as an empty cell)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_results(
    name: str,
    rows: list[dict[str, Any]],
    columns: list[str],
    meta: dict[str, Any],
    *,
    results_dir: Path | None = None,
    body: str | None = None,
) -> Path:
    """Write ``<results_dir>/<name>.json`` and ``<name>.md`` (markdown table).

    ``results_dir`` defaults to ``benchmarks/results/`` (the committed results); ``body``
    replaces the markdown table of ``rows`` (a page with several tables).
    """
    out = RESULTS if results_dir is None else Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "environment": environment_info(), **meta, "rows": rows}
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    md = f"# {name}\n\n" + (md_table(rows, columns) if body is None else body)
    if meta.get("command"):
        md += f"\nCommand: `{meta['command']}`\n"
    (out / f"{name}.md").write_text(md)
    return out / f"{name}.md"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.2f}"
    return "" if v is None else str(v)


def torch_threads() -> int:
    return torch.get_num_threads()
