"""Scan a fleet of models as independent tasks on a process pool or a Ray cluster.

:func:`plan_fleet` validates a manifest against the files it names (all problems at once, one
:class:`~hardenkit.errors.ConfigError`), resolves every model's architecture, data and
:class:`~hardenkit.scan.ScanConfig` in the calling process, and decides which models an
earlier run already scanned. :func:`run_fleet` sends the others, one task per model, to an
existing engine — :class:`concurrent.futures.ProcessPoolExecutor` (``spawn``) or Ray — and
writes each ``scan.json`` as its task returns. A model whose task fails is listed with its
error and never stops the fleet. :func:`scan_fleet` does both.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import multiprocessing
import os
import socket
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .._utils.progress import HeartbeatProgress, ProgressCallback, make_progress
from ..errors import ConfigError, DataError, DependencyError, HardenkitError, IntegrationError
from ..logging import get_logger
from .manifest import FleetManifest, FleetModel, load_manifest
from .report import (
    ERROR_FILE,
    SCAN_FILE,
    TASK_FILE,
    FailOn,
    FleetModelResult,
    FleetReport,
    FleetResult,
    atomic_write_json,
    atomic_write_text,
    fleet_exit_code,
    write_summary,
)

if TYPE_CHECKING:
    from types import ModuleType

    from ..data import ImageDataset
    from ..scan import ScanReport

__all__ = [
    "FleetPlan",
    "FleetStart",
    "FleetTask",
    "cpu_count",
    "is_flagged",
    "plan_fleet",
    "require_ray",
    "run_fleet",
    "run_task",
    "scan_fleet",
]

_log = get_logger("hardenkit.fleet")

Backend = Literal["process", "ray"]
RAY_INSTALL_HINT = 'pip install "hardenkit[ray]"'
MAX_ERROR_CHARS = 2000
"""Characters of a failed model's error message kept in the summary (``error.json`` has all)."""
MAX_PROBLEMS_SHOWN = 20
_ESTIMATED_ARCHS = 8
"""Distinct architectures/settings timed for the up-front estimate (the rest use their mean)."""


@dataclass(frozen=True)
class FleetTask:
    """One model's scan, fully resolved: what a worker needs and nothing else (picklable).

    Paths are absolute; ``scan_config`` is a :class:`~hardenkit.scan.ScanConfig` dump with the
    budget preset already applied.
    """

    id: str
    weights: str
    arch: str
    arch_args: dict[str, Any]
    num_classes: int
    data: str | None
    """A ``synthetic[:...]`` spec or an absolute path; ``None`` for a data-free scan."""
    split: str
    image_size: tuple[int, int] | None
    input_shape: tuple[int, int, int]
    scan_config: dict[str, Any]
    budget: str
    seed: int
    device: str
    weights_sha256: str
    settings_sha256: str
    settings: dict[str, Any] = field(default_factory=dict)
    """What ``settings_sha256`` hashes (written to ``fleet-task.json`` for people)."""


@dataclass
class FleetPlan:
    """A validated fleet: the tasks to run, the models skipped (already scanned) and the
    models that failed while planning (unreadable weights header). Made by :func:`plan_fleet`.
    """

    manifest: FleetManifest
    manifest_path: Path | None
    out_dir: Path
    force: bool
    order: list[str]
    tasks: list[FleetTask]
    skipped: list[FleetModelResult]
    failed: list[FleetModelResult]
    seconds: float = 0.0
    """Time spent planning (reading the manifest and its weights' headers, hashing weights):
    part of the fleet's wall time."""

    @property
    def num_models(self) -> int:
        return len(self.order)

    def estimate_seconds(self, workers: int, threads: int = 1) -> float | None:
        """Upper estimate of the wall time of the tasks on ``workers`` parallel workers with
        ``threads`` torch threads each, from :func:`hardenkit.scan.estimate_scan_seconds`
        (a timed forward/backward pass per distinct architecture; worker start-up not
        counted). ``None`` when a model's input size cannot be known without loading its
        data (an archive without ``image_size``) or a model cannot be built here."""
        if not self.tasks:
            return 0.0
        import torch

        from ..config import RuntimeConfig
        from ..models import build_model
        from ..scan import ScanConfig, estimate_scan_seconds

        cache: dict[str, float] = {}
        total = 0.0
        old_threads = torch.get_num_threads()
        torch.set_num_threads(max(1, threads))
        try:
            for t in self.tasks:
                geometry = _data_geometry(t)
                if geometry is None:
                    return None
                shape, images = geometry
                key = json.dumps(
                    [t.arch, t.arch_args, t.num_classes, shape, images, t.scan_config],
                    sort_keys=True,
                    default=str,
                )
                if key not in cache:
                    if len(cache) >= _ESTIMATED_ARCHS:
                        total += sum(cache.values()) / len(cache)
                        continue
                    try:
                        device = RuntimeConfig(device=t.device).resolve_device()
                    except HardenkitError:
                        device = torch.device("cpu")
                    model = build_model(t.arch, t.num_classes, **t.arch_args)
                    cfg = ScanConfig(**t.scan_config)
                    cache[key] = estimate_scan_seconds(
                        model.to(device),
                        cfg,
                        num_classes=t.num_classes,
                        input_shape=shape,
                        clean_images=images,
                        device=device,
                    )
                total += cache[key]
        except Exception as exc:  # an estimate never stops the fleet
            _log.debug("fleet.no_estimate", error=type(exc).__name__, detail=str(exc))
            return None
        finally:
            torch.set_num_threads(old_threads)
        return total / max(1, workers)


@dataclass(frozen=True)
class FleetStart:
    """What :func:`run_fleet` tells ``on_start`` before the first task is sent."""

    plan: FleetPlan
    backend: Backend
    workers: int
    threads: int
    ray_address: str | None


# ----------------------------------------------------------------------------------- planning


def plan_fleet(
    manifest: str | Path | FleetManifest | Mapping[str, Any],
    out_dir: str | Path,
    *,
    force: bool = False,
    base_dir: str | Path | None = None,
) -> FleetPlan:
    """Validate ``manifest`` against its files and decide what to scan.

    Args:
        manifest: a manifest file (YAML/JSON), a :class:`FleetManifest` or its fields.
        out_dir: the output folder (``<id>/scan.json`` per model, ``fleet.*`` summaries).
        force: rescan every model, even those with a valid ``scan.json`` from an earlier run.
        base_dir: the folder relative ``weights``/``data`` paths are read from; default: the
            manifest file's folder, or the current directory for an in-memory manifest.

    Raises:
        ConfigError: listing every bad entry (missing or non-safetensors weights, unknown
            zoo architecture, no data, a missing data path, an invalid scan config or
            budget, a number of classes nobody gives) — nothing is scanned then.
    """
    t0 = time.perf_counter()
    path: Path | None = None
    if isinstance(manifest, str | Path):
        path = Path(manifest)
        m = load_manifest(path)
    elif isinstance(manifest, FleetManifest):
        m = manifest
    else:
        m = FleetManifest(**dict(manifest))
    base = Path(base_dir) if base_dir is not None else (path.parent if path else Path.cwd())
    base = base.resolve()
    out = Path(out_dir)
    problems: list[str] = []
    tasks: list[FleetTask] = []
    failed: list[FleetModelResult] = []
    for i, entry in enumerate(m.models):
        where = f"models[{i}] (id {entry.id!r})"
        try:
            task = _resolve(entry, m, base)
        except _EntryError as exc:
            problems.append(f"{where}: {exc}")
            continue
        except (DataError, OSError) as exc:  # an unreadable weights file: this model fails
            failed.append(
                FleetModelResult(
                    id=entry.id,
                    status="failed",
                    error_type=type(exc).__name__,
                    error_message=_clip(str(exc)),
                    weights=str(_resolve_path(entry.weights, base)),
                )
            )
            continue
        tasks.append(task)
    if problems:
        shown = "; ".join(problems[:MAX_PROBLEMS_SHOWN])
        more = len(problems) - MAX_PROBLEMS_SHOWN
        name = f"fleet manifest {str(path)!r}" if path else "fleet manifest"
        raise ConfigError(
            f"{name}: {len(problems)} bad {'entry' if len(problems) == 1 else 'entries'}: "
            f"{shown}{f' (and {more} more)' if more > 0 else ''}.",
            hint=f"fix those entries; relative paths are read from {str(base)!r}",
        )
    skipped: list[FleetModelResult] = []
    to_run: list[FleetTask] = []
    for task in tasks:
        done = None if force else _previous_result(task, out)
        if done is None:
            to_run.append(task)
        else:
            skipped.append(done)
    return FleetPlan(
        manifest=m,
        manifest_path=path,
        out_dir=out,
        force=force,
        order=[e.id for e in m.models],
        tasks=to_run,
        skipped=skipped,
        failed=failed,
        seconds=time.perf_counter() - t0,
    )


class _EntryError(Exception):
    """A manifest entry that cannot be scanned as written (collected into one ConfigError)."""


def _resolve_path(spec: str, base: Path) -> Path:
    p = Path(spec).expanduser()
    return p if p.is_absolute() else base / p


def _resolve(entry: FleetModel, m: FleetManifest, base: Path) -> FleetTask:
    from ..io import META_ARCH, META_ARCH_ARGS, META_NUM_CLASSES, file_sha256, read_model_metadata
    from ..models import MODELS

    d = m.defaults
    weights = _resolve_path(entry.weights, base)
    if not weights.is_file():
        what = "is a folder" if weights.is_dir() else "does not exist"
        raise _EntryError(f"weights file {str(weights)!r} {what}")
    if weights.suffix != ".safetensors":
        raise _EntryError(
            f"weights file {str(weights)!r} is not .safetensors (fleet scans load safetensors "
            "only; convert it with hardenkit.io.save_state_dict)"
        )
    meta = read_model_metadata(weights)  # DataError: an unreadable header fails this model
    recorded = meta.get(META_ARCH) or None
    arch = entry.architecture or recorded
    if arch is None:
        raise _EntryError(
            "no architecture: give arch (a zoo name, see `hardenkit models`) or factory "
            "('package.module:function'); the weights file does not record one"
        )
    if ":" not in arch and arch not in MODELS:
        raise _EntryError(f"arch {arch!r} is not in the zoo {MODELS.names()}")
    num_classes = entry.num_classes
    if num_classes is None:
        try:
            num_classes = int(meta[META_NUM_CLASSES])
        except (KeyError, ValueError):
            raise _EntryError(
                "no num_classes: give it; the weights file does not record it"
            ) from None
        if num_classes < 2:
            raise _EntryError(f"the weights file records num_classes={num_classes}; give it")
    arch_args = dict(entry.arch_args)
    if not arch_args and recorded == arch and meta.get(META_ARCH_ARGS):
        try:
            arch_args = dict(json.loads(meta[META_ARCH_ARGS]))
        except (ValueError, TypeError):
            raise _EntryError(
                f"the weights file records invalid arch_args {meta[META_ARCH_ARGS]!r}; give "
                "arch_args"
            ) from None

    data_free = entry.data_free
    if data_free is None:
        data_free = False if entry.data is not None else d.data_free
    spec = None if data_free else (entry.data if entry.data is not None else d.data)
    if not data_free and spec is None:
        raise _EntryError(
            "no data: give data (an ImageFolder folder, a .tar.gz archive or 'synthetic') "
            "here or in defaults, or data_free: true"
        )
    split = entry.split if entry.split is not None else d.split
    image_size = entry.image_size if entry.image_size is not None else d.image_size
    data = None if spec is None else _resolve_data(spec, split, base)
    input_shape = entry.input_shape if entry.input_shape is not None else d.input_shape
    budget = entry.budget if entry.budget is not None else d.budget
    seed = entry.seed if entry.seed is not None else d.seed
    device = entry.device if entry.device is not None else d.device
    scan_config = _scan_config(d.scan, entry.scan, budget, data_free)
    try:
        from ..config import RuntimeConfig

        RuntimeConfig(device=device, seed=seed)
    except ConfigError as exc:
        raise _EntryError(f"device {device!r}: {exc.message}") from None
    settings: dict[str, Any] = {
        "arch": arch,
        "arch_args": arch_args,
        "num_classes": num_classes,
        "data": spec,
        "split": split,
        "image_size": image_size,
        "input_shape": input_shape if data_free else None,
        "scan_config": scan_config,
        "seed": seed,
    }
    settings_sha = hashlib.sha256(
        json.dumps(settings, sort_keys=True, default=str).encode()
    ).hexdigest()
    return FleetTask(
        id=entry.id,
        weights=str(weights),
        arch=arch,
        arch_args=arch_args,
        num_classes=num_classes,
        data=data,
        split=split,
        image_size=None if image_size is None else (int(image_size[0]), int(image_size[1])),
        input_shape=(int(input_shape[0]), int(input_shape[1]), int(input_shape[2])),
        scan_config=scan_config,
        budget=str(budget),
        seed=seed,
        device=device,
        weights_sha256=file_sha256(weights),
        settings_sha256=settings_sha,
        settings=settings,
    )


def _resolve_data(spec: str, split: str, base: Path) -> str:
    """A synthetic spec (syntax checked) or the absolute path of an existing folder/archive."""
    if spec == "synthetic" or spec.startswith("synthetic:"):
        from ..cli._common import parse_kv

        try:
            parse_kv(spec.partition(":")[2], "data")
        except ConfigError as exc:
            raise _EntryError(f"data {spec!r}: {exc.message}") from None
        if split not in {"train", "test"}:
            raise _EntryError(f"synthetic data has splits 'train' and 'test', not {split!r}")
        return spec
    path = _resolve_path(spec, base)
    if not path.exists():
        raise _EntryError(
            f"data path {str(path)!r} does not exist (give an ImageFolder folder, a .tar.gz "
            "archive or 'synthetic')"
        )
    return str(path)


def _scan_config(
    defaults: Mapping[str, Any],
    own: Mapping[str, Any],
    budget: str | float,
    data_free: bool,
) -> dict[str, Any]:
    """The model's ScanConfig (defaults' fields, then its own, then the budget preset) as a
    JSON dump; inherited ``detector_options`` of detectors the model does not run are
    dropped."""
    from ..scan import DETECTORS, ScanConfig, scan_config_for_budget

    fields: dict[str, Any] = {**dict(defaults), **dict(own)}
    if data_free and "detectors" not in own:
        # as `hardenkit scan --data-free`: mm-bd, or the inherited detectors that need no data
        inherited_detectors = defaults.get("detectors")
        keep = []
        if isinstance(inherited_detectors, list | tuple):
            keep = [
                d
                for d in inherited_detectors
                if isinstance(d, str) and d in DETECTORS and not DETECTORS.get(d).needs_data
            ]
        fields["detectors"] = keep or ["mm-bd"]
    inherited = defaults.get("detector_options") or {}
    mine = own.get("detector_options") or {}
    for opts in (inherited, mine):
        if not isinstance(opts, Mapping) or not all(isinstance(v, Mapping) for v in opts.values()):
            raise _EntryError(
                "scan.detector_options must map detector names to option mappings, e.g. "
                "{neural-cleanse: {epochs: 10}}"
            )
    try:
        # the detectors this model runs: its own/inherited list, else the budget preset's
        plain = {k: v for k, v in fields.items() if k != "detector_options"}
        detectors = list(scan_config_for_budget(budget, ScanConfig(**plain)).detectors)
        options: dict[str, dict[str, Any]] = {
            k: dict(v) for k, v in inherited.items() if k in detectors
        }
        for k, v in mine.items():
            options.setdefault(k, {}).update(dict(v))
        if options or "detector_options" in fields:
            fields["detector_options"] = options
        cfg = scan_config_for_budget(budget, ScanConfig(**fields))
    except ConfigError as exc:
        raise _EntryError(f"scan: {exc.message}") from None
    except (TypeError, ValueError) as exc:
        raise _EntryError(f"scan: {exc}") from None
    unknown = [name for name in cfg.detectors if name not in DETECTORS]
    if unknown:
        raise _EntryError(f"scan: unknown detector(s) {unknown}; registered: {DETECTORS.names()}")
    needs = [name for name in cfg.detectors if DETECTORS.get(name).needs_data]
    if data_free and needs:
        raise _EntryError(
            f"scan: detector(s) {needs} need clean images, but the model is data_free: give "
            "it data, or data-free detectors (mm-bd)"
        )
    extra = sorted(set(cfg.detector_options) - set(cfg.detectors))
    if extra:
        raise _EntryError(
            f"scan: detector_options given for {extra}, which are not in detectors "
            f"{list(cfg.detectors)}"
        )
    dumped: dict[str, Any] = cfg.model_dump(mode="json")
    return dumped


def _previous_result(task: FleetTask, out: Path) -> FleetModelResult | None:
    """The model's earlier result when ``scan.json`` is valid for the same weights (sha256)
    and settings; ``None`` means scan it."""
    from ..scan import ScanReport

    folder = out / task.id
    try:
        record = json.loads((folder / TASK_FILE).read_text(encoding="utf-8"))
        report = ScanReport.model_validate_json((folder / SCAN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or (
        record.get("weights_sha256") != task.weights_sha256
        or record.get("settings_sha256") != task.settings_sha256
        or record.get("report_id") != report.report_id
    ):
        return None
    seconds = record.get("seconds")
    return _ok_result(
        task,
        report,
        status="skipped",
        seconds=float(seconds) if isinstance(seconds, int | float) else None,
        sha256=task.weights_sha256,
    )


def _ok_result(
    task: FleetTask,
    report: ScanReport,
    *,
    status: Literal["ok", "skipped"],
    seconds: float | None,
    sha256: str,
) -> FleetModelResult:
    return FleetModelResult(
        id=task.id,
        status=status,
        verdict=report.verdict,
        score=report.score,
        flagged_labels=list(report.flagged_labels),
        conclusive=report.conclusive,
        seconds=seconds,
        weights=task.weights,
        weights_sha256=sha256,
        scan_report=f"{task.id}/{SCAN_FILE}",
        report_id=report.report_id,
    )


def _data_geometry(task: FleetTask) -> tuple[tuple[int, int, int], int | None] | None:
    """``(C, H, W)`` of the model input and the number of clean images (None: unknown) of a
    task, without loading its data; ``None`` when the input size is unknown."""
    if task.data is None:
        return task.input_shape, None
    size = task.image_size
    if task.data.startswith("synthetic"):
        from ..cli._common import parse_kv

        kv = parse_kv(task.data.partition(":")[2])
        side = int(kv.get("image_size", 32)) if size is None else int(size[0])
        test = task.split == "test"
        key, default = ("test_per_class", 100) if test else ("train_per_class", 500)
        per_class = int(kv.get(key, default))
        n = int(kv.get("num_classes", 10)) * per_class
        return (int(kv.get("channels", 3)), side, side), n
    if size is not None:
        return (3, size[0], size[1]), None
    path = Path(task.data)
    if path.is_dir():
        root = path / task.split if (path / task.split).is_dir() else path
        first = _first_image(root)
        if first is None:
            return None
        from PIL import Image

        with Image.open(first) as im:
            w, h = im.size
        return (3, h, w), None
    return None


_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def _first_image(root: Path) -> Path | None:
    """The first image file under ``root`` in sorted order (stops there: no full listing)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if Path(name).suffix.lower() in _IMAGE_SUFFIXES:
                return Path(dirpath) / name
    return None


# ------------------------------------------------------------------------------------ workers


def cpu_count() -> int:
    """CPUs this process may use (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def _init_worker(threads: int) -> None:
    """Process-pool initializer: ``threads`` torch threads per worker (set once)."""
    import torch

    torch.set_num_threads(max(1, threads))


@functools.lru_cache(maxsize=1)
def _load_data(spec: str, split: str, image_size: tuple[int, int] | None) -> ImageDataset:
    """The clean images of a task, through ``hardenkit scan``'s own loader; the last one is
    kept, so a worker scanning several models on the same data decodes it once."""
    from ..cli._common import load_data_arg

    return load_data_arg(spec, split=split, image_size=image_size)


def run_task(task: FleetTask, threads: int | None = None) -> dict[str, Any]:
    """Scan one model (in a worker): never raises for the model's own problems.

    Returns a plain dict: ``status`` (``ok``/``failed``), ``report_json`` (the ScanReport
    JSON), ``weights_sha256`` (of the file it loaded), ``seconds``, and for a failure
    ``error_type``, ``error_message``, ``traceback``.
    """
    t0 = time.perf_counter()
    out: dict[str, Any] = {"id": task.id}
    try:
        import torch

        if threads is not None:
            torch.set_num_threads(max(1, threads))
        from ..config import RuntimeConfig
        from ..io import file_sha256, load_model_weights
        from ..models import build_model
        from ..scan import ScanConfig, Scanner

        out["weights_sha256"] = file_sha256(task.weights)
        model = build_model(task.arch, task.num_classes, **task.arch_args)
        load_model_weights(model, task.weights)
        model.eval()
        scanner = Scanner(
            model,
            task.num_classes,
            config=ScanConfig(**task.scan_config),
            # an independent scan: never join a torchrun process group of the parent
            runtime=RuntimeConfig(
                device=task.device, seed=task.seed, progress="off", distributed="off"
            ),
            input_shape=task.input_shape,
        )
        if task.data is None:
            result = scanner.run()
        else:
            from ..cli._common import match_channels  # a grayscale model: 1-channel images

            data = match_channels(model, _load_data(task.data, task.split, task.image_size))
            result = scanner.run(data.loader(batch_size=512))
        out.update(status="ok", report_json=result.report.to_json())
    except Exception as exc:
        out.update(
            status="failed",
            error_type=type(exc).__name__,
            error_message=str(exc) or type(exc).__name__,
            traceback="".join(traceback.format_exception(exc)),
        )
    out["seconds"] = time.perf_counter() - t0
    return out


# ---------------------------------------------------------------------------------- execution


def scan_fleet(
    manifest: str | Path | FleetManifest | Mapping[str, Any],
    out_dir: str | Path,
    *,
    backend: Backend = "process",
    workers: int | None = None,
    threads: int | None = None,
    force: bool = False,
    fail_on: FailOn = "backdoored",
    ray_address: str | None = None,
    ray_num_gpus: float = 0.0,
    base_dir: str | Path | None = None,
    progress: Literal["auto", "on", "off"] = "auto",
    callback: ProgressCallback | None = None,
) -> FleetResult:
    """Scan every model of a fleet manifest; one independent task per model.

    Args:
        manifest: a YAML/JSON manifest file, a :class:`FleetManifest` or its fields.
        out_dir: writes ``<id>/scan.json`` per scanned model and ``fleet.json``,
            ``fleet.csv``, ``fleet.md``.
        backend: ``process`` (a local ``spawn`` process pool) or ``ray`` (a Ray cluster;
            needs ``pip install "hardenkit[ray]"``).
        workers: parallel scans; default ``min(CPUs, models to scan)`` (the cluster's CPUs
            for Ray).
        threads: torch threads per scan; default ``max(1, CPUs // workers)``.
        force: rescan models whose ``scan.json`` is valid for the same weights and settings.
        fail_on: the lowest verdict that counts as flagged (exit code 1).
        ray_address: the Ray cluster to connect to (``auto``, ``ray://host:10001``); default:
            the running Ray session, else a new local one (shut down at the end).
        ray_num_gpus: GPUs each Ray task requests (Ray hides GPUs from tasks that ask none).
        base_dir: where relative paths of the manifest are read from (default: its folder).
        progress: ``auto`` a tqdm bar on a terminal, else one heartbeat line per finished
            model on stderr; ``off`` nothing.
        callback: a progress callback instead (``phase="scan-fleet"``, step, total).

    Returns:
        A :class:`FleetResult`; its ``exit_code`` is 0 (nothing flagged), 1 (a model flagged)
        or 3 (a model failed, which wins over 1).

    Raises:
        ConfigError: a bad manifest (every bad entry listed); nothing is scanned.
        DependencyError: ``backend="ray"`` without the ``ray`` package.
    """
    plan = plan_fleet(manifest, out_dir, force=force, base_dir=base_dir)
    return run_fleet(
        plan,
        backend=backend,
        workers=workers,
        threads=threads,
        fail_on=fail_on,
        ray_address=ray_address,
        ray_num_gpus=ray_num_gpus,
        progress=progress,
        callback=callback,
    )


def run_fleet(
    plan: FleetPlan,
    *,
    backend: Backend = "process",
    workers: int | None = None,
    threads: int | None = None,
    fail_on: FailOn = "backdoored",
    ray_address: str | None = None,
    ray_num_gpus: float = 0.0,
    progress: Literal["auto", "on", "off"] = "auto",
    callback: ProgressCallback | None = None,
    on_start: Callable[[FleetStart], None] | None = None,
) -> FleetResult:
    """Run a :class:`FleetPlan` (see :func:`scan_fleet` for the arguments); ``on_start`` is
    called once the backend is up, before the first task is sent (the CLI prints its time
    estimate there)."""
    if backend not in ("process", "ray"):
        raise ConfigError(f"backend must be 'process' or 'ray', got {backend!r}.")
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}.")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}.")
    if ray_num_gpus < 0:
        raise ConfigError(f"ray_num_gpus must be >= 0, got {ray_num_gpus}.")
    t0 = time.perf_counter()
    out = plan.out_dir
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, FleetModelResult] = {r.id: r for r in plan.failed}
    for r in plan.skipped:
        flagged = is_flagged(r.verdict, r.conclusive, fail_on)
        results[r.id] = r.model_copy(update={"flagged": flagged})
    for r in plan.failed:
        _clear_outputs(out / r.id)
        atomic_write_json(
            out / r.id / ERROR_FILE,
            {"id": r.id, "error_type": r.error_type, "error_message": r.error_message},
        )
    for task in plan.tasks:  # a model being (re)scanned has no scan.json until it succeeds
        _clear_outputs(out / task.id)
    sink = make_progress(progress, callback)
    if isinstance(sink, HeartbeatProgress) and callback is None:
        sink = HeartbeatProgress(interval=0)  # one line per finished model
    total = len(plan.tasks)
    done = 0

    def finished(task: FleetTask, outcome: dict[str, Any]) -> None:
        nonlocal done
        res = _record(task, outcome, out, fail_on)
        results[task.id] = res
        done += 1
        _log.info(
            "fleet.model_done",
            id=res.id,
            status=res.status,
            verdict=res.verdict,
            score=res.score,
            seconds=res.seconds,
            error=res.error_type,
        )
        info: dict[str, Any] = {"id": res.id, "status": res.status}
        if res.status == "ok":
            info["verdict"] = res.verdict
        else:
            info["error"] = res.error_type
        sink("scan-fleet", done, total, **info)

    resolved_workers, resolved_threads, address = 0, 0, ray_address
    try:
        if not total:  # every model skipped or failed while planning: start no worker
            _log.info("fleet.start", backend=backend, models=plan.num_models, to_scan=0, workers=0)
            if on_start is not None:
                on_start(FleetStart(plan, backend, 0, 0, None))
        elif backend == "process":
            cpus = cpu_count()
            resolved_workers = max(1, min(workers or cpus, total))
            resolved_threads = threads or max(1, cpus // resolved_workers)
            _log.info(
                "fleet.start",
                backend=backend,
                models=plan.num_models,
                to_scan=total,
                skipped=len(plan.skipped),
                workers=resolved_workers,
                threads=resolved_threads,
            )
            if on_start is not None:
                on_start(FleetStart(plan, backend, resolved_workers, resolved_threads, None))
            sink("scan-fleet", 0, total)
            _run_process(plan.tasks, resolved_workers, resolved_threads, finished)
        else:
            ray = require_ray()
            with _ray_session(ray, ray_address) as address:
                cpus, node_cpus = _ray_cpus(ray)
                resolved_workers = max(1, min(workers or cpus, total))
                resolved_threads = threads or max(1, cpus // resolved_workers)
                resolved_threads = min(resolved_threads, node_cpus)  # a task fits on a node
                resolved_workers = max(1, min(resolved_workers, cpus // resolved_threads))
                _log.info(
                    "fleet.start",
                    backend=backend,
                    models=plan.num_models,
                    to_scan=total,
                    skipped=len(plan.skipped),
                    workers=resolved_workers,
                    threads=resolved_threads,
                    ray_address=address,
                )
                if on_start is not None:
                    on_start(FleetStart(plan, backend, resolved_workers, resolved_threads, address))
                sink("scan-fleet", 0, total)
                _run_ray(ray, plan.tasks, resolved_threads, ray_num_gpus, finished)
    finally:
        close = getattr(sink, "close", None)
        if callable(close):
            close()
    wall = plan.seconds + time.perf_counter() - t0
    models = [results[i] for i in plan.order]
    scanned = sum(1 for r in models if r.status != "skipped")
    failed_now = [r for r in models if r.status == "failed"]
    report = FleetReport(
        manifest=None if plan.manifest_path is None else str(plan.manifest_path),
        out_dir=str(out),
        backend=backend,
        workers=resolved_workers,
        threads_per_worker=resolved_threads,
        ray_address=address if backend == "ray" else None,
        fail_on=fail_on,
        force=plan.force,
        exit_code=fleet_exit_code(models),
        counts={
            "models": len(models),
            "ok": sum(1 for r in models if r.status == "ok"),
            "failed": len(failed_now),
            "skipped": sum(1 for r in models if r.status == "skipped"),
            "flagged": sum(1 for r in models if r.flagged),
        },
        wall_seconds=wall,
        models_per_minute=(scanned / wall * 60.0) if total and wall > 0 else None,
        models=models,
    )
    write_summary(report, out)
    _log.info(
        "fleet.done",
        models=report.counts["models"],
        ok=report.counts["ok"],
        skipped=report.counts["skipped"],
        failed=report.counts["failed"],
        flagged=report.counts["flagged"],
        wall_seconds=round(wall, 3),
        models_per_minute=report.models_per_minute,
        exit_code=report.exit_code,
    )
    return FleetResult(report, out)


def _clear_outputs(folder: Path) -> None:
    for name in (SCAN_FILE, TASK_FILE, ERROR_FILE):
        (folder / name).unlink(missing_ok=True)


def is_flagged(verdict: str | None, conclusive: bool | None, fail_on: FailOn) -> bool:
    """As ``hardenkit scan`` exits 1: a verdict at or above ``fail_on``, or a scan that a time
    budget cut short and that flagged nothing (not conclusive)."""
    failing = {"backdoored"} if fail_on == "backdoored" else {"backdoored", "suspicious"}
    return verdict in failing or conclusive is False


def _record(
    task: FleetTask, outcome: dict[str, Any], out: Path, fail_on: FailOn
) -> FleetModelResult:
    """Write a finished task's files (driver side) and return its summary line."""
    from ..scan import ScanReport

    folder = out / task.id
    seconds = outcome.get("seconds")
    secs = float(seconds) if isinstance(seconds, int | float) else None
    sha = str(outcome.get("weights_sha256") or task.weights_sha256)
    if outcome.get("status") == "ok":
        try:
            report = ScanReport.model_validate_json(str(outcome["report_json"]))
        except (KeyError, ValueError) as exc:
            outcome = {
                **outcome,
                "status": "failed",
                "error_type": type(exc).__name__,
                "error_message": f"the worker returned no valid scan report: {exc}",
            }
        else:
            atomic_write_text(folder / SCAN_FILE, str(outcome["report_json"]) + "\n")
            atomic_write_json(
                folder / TASK_FILE,
                {
                    "id": task.id,
                    "weights": task.weights,
                    "weights_sha256": sha,
                    "settings_sha256": task.settings_sha256,
                    "settings": task.settings,
                    "report_id": report.report_id,
                    "seconds": secs,
                },
            )
            (folder / ERROR_FILE).unlink(missing_ok=True)
            res = _ok_result(task, report, status="ok", seconds=secs, sha256=sha)
            flagged = is_flagged(report.verdict, report.conclusive, fail_on)
            return res.model_copy(update={"flagged": flagged})
    error_type = str(outcome.get("error_type") or "Error")
    message = str(outcome.get("error_message") or "")
    _clear_outputs(folder)
    atomic_write_json(
        folder / ERROR_FILE,
        {
            "id": task.id,
            "error_type": error_type,
            "error_message": message,
            "traceback": outcome.get("traceback"),
        },
    )
    _log.debug("fleet.model_failed", id=task.id, traceback=outcome.get("traceback"))
    return FleetModelResult(
        id=task.id,
        status="failed",
        seconds=secs,
        error_type=error_type,
        error_message=_clip(message),
        weights=task.weights,
        weights_sha256=sha,
    )


def _clip(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _crash(task: FleetTask, exc: BaseException) -> dict[str, Any]:
    """The outcome of a task whose worker died or whose result never came back."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, BrokenProcessPool):
        message = (
            "the worker process scanning this model died (killed by the OS, e.g. for memory, "
            f"or a crash in native code): {message}"
        )
    return {
        "id": task.id,
        "status": "failed",
        "error_type": type(exc).__name__,
        "error_message": message,
        "traceback": "".join(traceback.format_exception(exc)),
    }


def _run_process(
    tasks: list[FleetTask],
    workers: int,
    threads: int,
    finished: Callable[[FleetTask, dict[str, Any]], None],
) -> None:
    """The tasks on a ``spawn`` process pool. A dead worker breaks the pool and every task in
    it; those are then rerun one per fresh process, so only the model that kills its worker
    fails."""
    ctx = multiprocessing.get_context("spawn")
    broken: list[FleetTask] = []
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(threads,)
    )
    try:
        futures: dict[Future[dict[str, Any]], FleetTask] = {
            pool.submit(run_task, t): t for t in tasks
        }
        for fut in as_completed(futures):
            task = futures[fut]
            try:
                outcome = fut.result()
            except BrokenProcessPool:
                broken.append(task)
                continue
            except Exception as exc:  # e.g. a result that cannot be unpickled
                outcome = _crash(task, exc)
            finished(task, outcome)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    if broken:
        _log.warning("fleet.worker_died", tasks=len(broken), retry="one process per model")
        _run_isolated(broken, workers, threads, finished)


def _run_isolated(
    tasks: list[FleetTask],
    workers: int,
    threads: int,
    finished: Callable[[FleetTask, dict[str, Any]], None],
) -> None:
    """Each task in its own one-worker process pool, ``workers`` at a time."""
    ctx = multiprocessing.get_context("spawn")

    def one(task: FleetTask) -> dict[str, Any]:
        with ProcessPoolExecutor(
            max_workers=1, mp_context=ctx, initializer=_init_worker, initargs=(threads,)
        ) as pool:
            try:
                return pool.submit(run_task, task).result()
            except Exception as exc:
                return _crash(task, exc)

    with ThreadPoolExecutor(max_workers=workers) as threads_pool:
        futures = {threads_pool.submit(one, t): t for t in tasks}
        for fut in as_completed(futures):
            finished(futures[fut], fut.result())


def require_ray() -> ModuleType:
    """Import and return ``ray``, or raise :class:`DependencyError` naming the extra."""
    try:
        import ray
    except ImportError as exc:
        raise DependencyError(
            f"scanning on Ray needs the 'ray' package, which is not installed ({exc}).",
            hint=RAY_INSTALL_HINT,
        ) from exc
    return ray


@contextlib.contextmanager
def _ray_session(ray: Any, address: str | None) -> Iterator[str | None]:
    """Use the running Ray session, or connect to ``address`` (a new local cluster when it
    is None and ``RAY_ADDRESS`` is unset) and shut that connection down afterwards."""
    if ray.is_initialized():
        yield address or _ray_gcs_address(ray)
        return
    kwargs: dict[str, Any] = {
        "address": address,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
    }
    if address is None and not os.environ.get("RAY_ADDRESS"):
        kwargs["include_dashboard"] = False
    _check_reachable(address or os.environ.get("RAY_ADDRESS"))
    try:
        ray.init(**kwargs)
    except ConnectionError as exc:
        raise IntegrationError(
            f"cannot connect to the Ray cluster {address or 'of $RAY_ADDRESS'!r}: {exc}",
            hint="start one with `ray start --head` (then --ray-address auto), or drop "
            "--ray-address to start a local Ray for this run",
        ) from exc
    try:
        yield address or _ray_gcs_address(ray)
    finally:
        ray.shutdown()


RAY_CONNECT_TIMEOUT = 10.0
"""Seconds to wait for a ``HOST:PORT`` Ray address to accept a connection (Ray itself would
retry for minutes)."""


def _check_reachable(address: str | None) -> None:
    """Fail fast, with :class:`IntegrationError`, when a ``HOST:PORT`` address (a Ray head's
    GCS) does not accept a TCP connection; ``auto``, ``local`` and ``ray://`` addresses are
    left to Ray, which answers those quickly."""
    if not address or "://" in address or address in {"auto", "local"}:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), RAY_CONNECT_TIMEOUT):
            pass
    except OSError as exc:
        raise IntegrationError(
            f"cannot reach the Ray cluster at {address!r} ({exc}).",
            hint="check the address `ray start --head` printed (HOST:6379), or use "
            "--ray-address auto on the head node",
        ) from exc


def _ray_gcs_address(ray: Any) -> str | None:
    try:
        ctx = ray.get_runtime_context()
        gcs = getattr(ctx, "gcs_address", None)
        return str(gcs) if gcs else None
    except Exception:
        return None


def _ray_cpus(ray: Any) -> tuple[int, int]:
    """The cluster's CPUs, and the most CPUs of one alive node."""
    total = int(ray.cluster_resources().get("CPU", 1)) or 1
    per_node = [
        int(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive", True)
    ]
    return max(1, total), max(1, max(per_node, default=total))


def _run_ray(
    ray: Any,
    tasks: list[FleetTask],
    threads: int,
    num_gpus: float,
    finished: Callable[[FleetTask, dict[str, Any]], None],
) -> None:
    """One Ray task per model (``num_cpus=threads``, no retries); results as they finish."""
    remote = ray.remote(run_task).options(num_cpus=threads, num_gpus=num_gpus, max_retries=0)
    refs = {remote.remote(t, threads): t for t in tasks}
    pending = list(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                task = refs[ref]
                try:
                    outcome = ray.get(ref)
                except Exception as exc:  # WorkerCrashedError, TaskCancelledError, ...
                    outcome = _crash(task, exc)
                finished(task, outcome)
    except BaseException:
        for ref in pending:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        raise
