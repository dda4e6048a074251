"""The fleet's summary: :class:`FleetReport` (``fleet.json``), ``fleet.csv`` and ``fleet.md``."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..reports import BaseReport

__all__ = [
    "EXIT_FAILED",
    "EXIT_FLAGGED",
    "EXIT_OK",
    "FleetModelResult",
    "FleetReport",
    "FleetResult",
    "fleet_exit_code",
]

EXIT_OK = 0
"""Every model was scanned (now or in an earlier run) and none was flagged."""
EXIT_FLAGGED = 1
"""A model was flagged (verdict at or above ``fail_on``, or a cut-short scan that flagged
nothing), and none failed."""
EXIT_FAILED = 3
"""A model could not be scanned: wins over :data:`EXIT_FLAGGED` (the fleet's answer is
incomplete)."""

Status = Literal["ok", "failed", "skipped"]
FailOn = Literal["backdoored", "suspicious"]

SCAN_FILE = "scan.json"
TASK_FILE = "fleet-task.json"
ERROR_FILE = "error.json"
CSV_COLUMNS = (
    "id",
    "status",
    "verdict",
    "score",
    "flagged_labels",
    "flagged",
    "seconds",
    "error",
)


class FleetModelResult(BaseModel):
    """One model's line of the fleet summary.

    ``status``: ``ok`` (scanned in this run; ``DIR/<id>/scan.json`` written), ``skipped``
    (its ``scan.json`` from an earlier run is valid for the same weights and settings) or
    ``failed`` (no ``scan.json``; ``error_type``/``error_message`` say why).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    status: Status
    verdict: Literal["clean", "suspicious", "backdoored"] | None = None
    score: float | None = None
    flagged_labels: list[int] = Field(default_factory=list)
    conclusive: bool | None = None
    """False when a time budget cut the scan short and it flagged nothing."""
    flagged: bool = False
    """Counts towards exit code 1: the verdict is at or above ``fail_on``, or not conclusive."""
    seconds: float | None = None
    """Wall time of the model's task (loading, scanning) in the run that scanned it."""
    error_type: str | None = None
    error_message: str | None = None
    weights: str
    weights_sha256: str | None = None
    scan_report: str | None = None
    """``<id>/scan.json``, relative to the output folder (None when failed)."""
    report_id: str | None = None


class FleetReport(BaseReport):
    """``fleet.json``: every model's status, verdict and error, plus throughput and exit code."""

    report_type: str = "fleet"
    manifest: str | None
    out_dir: str
    backend: Literal["process", "ray"]
    workers: int
    """Parallel scans (0 when nothing was left to scan)."""
    threads_per_worker: int
    ray_address: str | None = None
    fail_on: FailOn
    force: bool
    exit_code: int
    counts: dict[str, int]
    """``models``, ``ok``, ``failed``, ``skipped``, ``flagged``."""
    wall_seconds: float
    """From reading the manifest to the last task's result (planning, worker start-up and
    the scans)."""
    models_per_minute: float | None
    """Models scanned in this run (ok + failed) per minute of wall time; None when every
    model was skipped."""
    models: list[FleetModelResult]

    def summary(self) -> str:
        """A few human-readable lines (what the CLI prints at the end)."""
        c = self.counts
        rate = (
            "" if self.models_per_minute is None else f", {self.models_per_minute:.2f} models/min"
        )
        where = f"on {self.backend} x{self.workers} workers" if self.workers else "(no scan)"
        lines = [
            f"fleet: {c['models']} models: {c['ok']} scanned, {c['skipped']} skipped (already "
            f"scanned), {c['failed']} failed; {c['flagged']} flagged; {self.wall_seconds:.1f}s "
            f"{where}{rate}"
        ]
        for m in self.models:
            if m.status == "failed":
                lines.append(f"  {m.id}: FAILED {m.error_type}: {_one_line(m.error_message)}")
            elif m.flagged:
                what = m.verdict if m.conclusive is not False else f"{m.verdict}, NOT conclusive"
                lines.append(
                    f"  {m.id}: flagged ({what}, score {m.score:.3f}, labels "
                    f"{m.flagged_labels or 'none'})"
                )
        return "\n".join(lines)

    def to_csv(self) -> str:
        """``fleet.csv``: one row per model (:data:`CSV_COLUMNS`)."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        for m in self.models:
            error = "" if m.error_type is None else f"{m.error_type}: {m.error_message or ''}"
            w.writerow(
                [
                    m.id,
                    m.status,
                    m.verdict or "",
                    "" if m.score is None else f"{m.score:.4f}",
                    ";".join(str(y) for y in m.flagged_labels),
                    str(m.flagged).lower(),
                    "" if m.seconds is None else f"{m.seconds:.2f}",
                    error,
                ]
            )
        return buf.getvalue()

    def to_markdown(self) -> str:
        """``fleet.md``: totals, then a table of the models (failed and flagged first)."""
        c = self.counts
        rate = "n/a" if self.models_per_minute is None else f"{self.models_per_minute:.2f}"
        lines = [
            "# Fleet scan",
            "",
            f"- models: {c['models']} (scanned {c['ok']}, skipped {c['skipped']}, "
            f"failed {c['failed']}); flagged: {c['flagged']} (fail on {self.fail_on})",
            f"- exit code: {self.exit_code}",
            f"- backend: {self.backend}, {self.workers} worker(s) x {self.threads_per_worker} "
            "torch thread(s)"
            + (f", Ray at {self.ray_address}" if self.ray_address else "")
            + (" (nothing to scan: no worker started)" if not self.workers else ""),
            f"- wall time: {self.wall_seconds:.1f} s; throughput: {rate} models/min",
            "",
            "| id | status | verdict | score | flagged labels | seconds | error |",
            "|---|---|---|---|---|---|---|",
        ]

        def order(m: FleetModelResult) -> int:
            return 0 if m.status == "failed" else 1 if m.flagged else 2

        for m in sorted(self.models, key=order):
            error = "" if m.error_type is None else f"{m.error_type}: {m.error_message or ''}"
            verdict: str = m.verdict or ""
            if m.conclusive is False:
                verdict += " (not conclusive)"
            cells = [
                f"`{m.id}`",
                m.status,
                verdict,
                "" if m.score is None else f"{m.score:.3f}",
                ", ".join(str(y) for y in m.flagged_labels),
                "" if m.seconds is None else f"{m.seconds:.1f}",
                _md_cell(error),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


class FleetResult:
    """What :func:`~hardenkit.fleet.scan_fleet` returns: the :class:`FleetReport` and where
    the files are.

    Attributes:
        report: the summary (also in ``out_dir/fleet.json``).
        out_dir: the output folder: ``<id>/scan.json`` per scanned model, ``fleet.json``,
            ``fleet.csv``, ``fleet.md``.
    """

    def __init__(self, report: FleetReport, out_dir: Path) -> None:
        self.report = report
        self.out_dir = out_dir

    @property
    def exit_code(self) -> int:
        """0 nothing flagged, 1 a model flagged, 3 a model failed (3 wins over 1)."""
        return self.report.exit_code

    @property
    def models(self) -> list[FleetModelResult]:
        return list(self.report.models)

    @property
    def failed(self) -> list[FleetModelResult]:
        return [m for m in self.report.models if m.status == "failed"]

    @property
    def flagged(self) -> list[FleetModelResult]:
        return [m for m in self.report.models if m.flagged]

    def scan_report_path(self, model_id: str) -> Path | None:
        """``out_dir/<id>/scan.json`` when that model has one."""
        m = next((m for m in self.report.models if m.id == model_id), None)
        if m is None or m.scan_report is None:
            return None
        return self.out_dir / m.scan_report

    def __repr__(self) -> str:
        c = self.report.counts
        return (
            f"FleetResult(models={c['models']}, ok={c['ok']}, skipped={c['skipped']}, "
            f"failed={c['failed']}, flagged={c['flagged']}, exit_code={self.exit_code})"
        )


def fleet_exit_code(models: list[FleetModelResult]) -> int:
    """3 when a model failed, else 1 when one is flagged, else 0."""
    if any(m.status == "failed" for m in models):
        return EXIT_FAILED
    if any(m.flagged for m in models):
        return EXIT_FLAGGED
    return EXIT_OK


def write_summary(report: FleetReport, out_dir: Path) -> None:
    """Write ``fleet.json``, ``fleet.csv`` and ``fleet.md`` (each atomically)."""
    atomic_write_text(out_dir / "fleet.json", report.to_json() + "\n")
    atomic_write_text(out_dir / "fleet.csv", report.to_csv())
    atomic_write_text(out_dir / "fleet.md", report.to_markdown())


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, then ``os.replace`` it over ``path``
    (readers see the old file or the new one, never half of one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: Path, payload: object) -> Path:
    return atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")


def _one_line(text: str | None, limit: int = 300) -> str:
    first = " ".join((text or "").split())
    return first if len(first) <= limit else first[: limit - 3] + "..."


def _md_cell(text: str) -> str:
    return _one_line(text).replace("|", "\\|")
