"""MLflow adapter of the gate: log the evidence, register the model only when the gate passed.

:func:`log_gate` takes a saved gate (the ``--out`` directory of ``hardenkit gate``, or a
:class:`~hardenkit.gate.GateResult`) and, in one MLflow run:

* logs the policy as params (``policy.<field>``, nested fields dotted), ``strategy`` and
  ``repaired``; the numbers as metrics (``ba.input``, ``ba.output``, ``ba.drop``, the highest
  ASR per trigger source ``asr.output_max.<source>``, each rule's numeric value
  ``rule.<RULE-ID>``, ``gate.passed`` 0/1, ``time.<phase>_seconds``); tags
  (``hardenkit.report_id``, ``hardenkit.input_sha256``, ``hardenkit.output_sha256``,
  ``hardenkit.gate`` = ``passed``/``failed``, ``hardenkit.version``, one
  ``hardenkit.rule.<RULE-ID>`` per rule) and ``summary.md`` as the run's description;
* logs the evidence under ``gate/`` (``gate.json``, ``junit.xml``, ``gate.sarif``,
  ``summary.md``, every file ``gate.json`` lists, ``report.html``, ``scan/``, ``rescan/``,
  ``rescan-<round>/``);
* when the gate passed, logs the ONNX model under ``model/`` as an MLflow ``onnx`` flavour
  model whose ``model.onnx`` is byte for byte the file the gate verified, and registers a
  version of it when a ``registered_model_name`` is given, tagged ``hardenkit.report_id``,
  ``hardenkit.output_sha256``, ``hardenkit.onnx_sha256`` and ``hardenkit.gate=passed``;
* when the gate failed, logs the run (tagged ``hardenkit.gate=failed``) with its ONNX file
  as plain evidence under ``gate/`` (no MLflow model, nothing deployable) and registers no
  version.

Every file is checked against the sha256 ``gate.json`` recorded before anything is logged:
an edited output is refused (:class:`~hardenkit.errors.DataError`), never registered. An
MLflow failure raises :class:`~hardenkit.errors.IntegrationError` (CLI exit 3); a missing
``mlflow`` package raises :class:`~hardenkit.errors.DependencyError` naming ``pip install
"hardenkit[mlflow]"``.

Example:
    >>> from hardenkit.integrations.mlflow import MlflowGateRecord
    >>> rec = MlflowGateRecord(
    ...     run_id="r1", experiment_id="1", tracking_uri="sqlite:///mlflow.db",
    ...     report_id="abc", passed=True, registered_model_name="classifier",
    ...     registered_version="3", reason="gate passed: registered classifier version 3",
    ... )
    >>> rec.registered, rec.model_uri
    (True, 'models:/classifier/3')
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import ConfigError, DataError, DependencyError, HardenkitError, IntegrationError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

    from ..gate import GateReport, GateResult

__all__ = ["MlflowGateRecord", "gate_metrics", "gate_params", "log_gate", "require_mlflow"]

EVIDENCE_PATH = "gate"
"""Artifact folder of the gate's evidence in the run."""
MODEL_PATH = "model"
"""Artifact folder of the ONNX model (an MLflow ``onnx`` flavour model) in the run."""
INSTALL_HINT = 'pip install "hardenkit[mlflow]"'

# MLflow's limits (mlflow.utils.validation): keys, param and tag values, batch sizes
_MAX_KEY = 250
_MAX_PARAM_VALUE = 6000
_MAX_TAG_VALUE = 8000
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000
_EXTRA_EVIDENCE = ("gate.json", "report.html", "scan", "rescan")
"""Evidence logged when present besides the files ``gate.json`` lists (and every
``rescan-<round>/`` directory)."""

_T = TypeVar("_T")


@dataclass(frozen=True)
class MlflowGateRecord:
    """What :func:`log_gate` did: the run it wrote and the version it registered, if any.

    Attributes:
        run_id / experiment_id: the MLflow run holding the evidence and the model.
        tracking_uri: the tracking server or store the run went to.
        report_id: the gate report's id (also the run's ``hardenkit.report_id`` tag).
        passed: the gate's decision.
        registered_model_name / registered_version: the version created (None when none was:
            the gate failed, or no registered model name was given).
        reason: one sentence saying why a version was or was not registered.
    """

    run_id: str
    experiment_id: str
    tracking_uri: str
    report_id: str
    passed: bool
    registered_model_name: str | None
    registered_version: str | None
    reason: str

    @property
    def registered(self) -> bool:
        """True when a model version was created."""
        return self.registered_version is not None

    @property
    def model_uri(self) -> str | None:
        """``models:/NAME/VERSION`` of the registered version (None when none was)."""
        if self.registered_model_name is None or self.registered_version is None:
            return None
        return f"models:/{self.registered_model_name}/{self.registered_version}"


def require_mlflow() -> ModuleType:
    """Import and return ``mlflow``, or raise :class:`DependencyError` naming the extra.

    The CLI calls it before a gate runs, so a missing package fails in seconds, not after
    the scans.
    """
    try:
        import mlflow
    except ImportError as exc:
        raise DependencyError(
            f"logging to MLflow needs the 'mlflow' package, which is not installed ({exc}).",
            hint=INSTALL_HINT,
        ) from exc
    return mlflow


def log_gate(
    source: GateResult | str | Path,
    *,
    directory: str | Path | None = None,
    tracking_uri: str | None = None,
    experiment: str = "hardenkit-gate",
    run_name: str | None = None,
    registered_model_name: str | None = None,
    artifact_location: str | Path | None = None,
) -> MlflowGateRecord:
    """Log a saved gate to an MLflow run; register its ONNX model only when the gate passed.

    Args:
        source: the output directory of ``hardenkit gate --out`` / :meth:`GateResult.save`
            (or its ``gate.json``), or a :class:`~hardenkit.gate.GateResult`.
        directory: for a ``GateResult``, the directory it was saved to; None saves it to a
            temporary directory first (removed afterwards).
        tracking_uri: MLflow tracking URI (``http://host:5000``, ``sqlite:///mlflow.db``,
            ...); None uses MLflow's own resolution (``$MLFLOW_TRACKING_URI``, else its
            default). The model registry follows ``$MLFLOW_REGISTRY_URI`` when set, else this.
        experiment: experiment name, created when missing.
        run_name: the run's name; default ``gate-<first 8 characters of the report id>``.
        registered_model_name: register a version of this model when the gate passed
            (created when missing); None registers nothing.
        artifact_location: artifact root of the experiment when this call creates it (a
            local path or a URI); ignored for an existing experiment.

    Returns:
        An :class:`MlflowGateRecord`.

    Raises:
        DependencyError: ``mlflow`` is not installed.
        DataError: no readable ``gate.json``, or a file differs from the sha256 it records.
        ConfigError: an empty name, or a registration asked for a passed gate that exported
            no ONNX model (policy ``export_onnx: false``).
        IntegrationError: MLflow failed (unreachable server, refused request); a passed
            gate's model is then not registered.
    """
    if registered_model_name is not None and not registered_model_name.strip():
        raise ConfigError(
            "registered_model_name is empty.",
            hint="pass a model name, or None to register nothing",
        )
    if not experiment.strip():
        raise ConfigError("experiment is empty.", hint="pass an experiment name")
    mlflow = require_mlflow()
    with contextlib.ExitStack() as stack:
        report, gate_dir = _read_gate(source, directory, stack)
        onnx_files = _verified_files(report, gate_dir)
        register_as = registered_model_name if report.passed else None
        if register_as is not None and not onnx_files:
            raise ConfigError(
                f"the gate {report.report_id} passed but exported no ONNX model, so there is "
                "no model to register.",
                hint="keep export_onnx: true in the gate policy (the default) and re-run the "
                "gate, or log without a registered model name",
            )
        uri = str(tracking_uri or mlflow.get_tracking_uri())
        what = f"MLflow at {uri!r}"
        try:
            client = mlflow.MlflowClient(tracking_uri=uri)
            experiment_id = _experiment_id(client, experiment, artifact_location)
            run = client.create_run(
                experiment_id,
                run_name=run_name or f"gate-{report.report_id[:8]}",
                tags=_run_tags(report, gate_dir, onnx_files),
            )
        except HardenkitError:
            raise
        except Exception as exc:
            raise IntegrationError(
                f"{what} could not start a run for gate report {report.report_id}: "
                f"{type(exc).__name__}: {exc}",
                hint="check the tracking URI and that the server is reachable; the gate's "
                "outputs are unchanged on disk, log them again with log_gate(DIR)",
            ) from exc
        run_id = run.info.run_id
        try:
            _log_run(client, run_id, report, gate_dir, onnx_files, stack)
            version: str | None = None
            if register_as is not None:
                version = _register(client, register_as, run, report)
                client.set_tag(
                    run_id, "hardenkit.registered_model", f"models:/{register_as}/{version}"
                )
            client.set_terminated(run_id, "FINISHED")
        except Exception as exc:
            with contextlib.suppress(Exception):
                client.set_terminated(run_id, "FAILED")
            if isinstance(exc, HardenkitError):
                raise
            lost = " No model version was registered." if register_as is not None else ""
            raise IntegrationError(
                f"{what} failed while logging gate report {report.report_id} to run {run_id}: "
                f"{type(exc).__name__}: {exc}.{lost}",
                hint="fix the MLflow error above and log the gate again with log_gate(DIR) "
                "(the run is marked FAILED)",
            ) from exc
    if version is not None:
        reason = f"gate passed: registered {register_as} version {version}"
    elif report.passed:
        reason = "gate passed; no registered model name was given, so nothing was registered"
    else:
        failed = ", ".join(r.rule_id for r in report.failed_rules) or "no rule listed"
        reason = f"gate failed ({failed}): no model version registered"
    return MlflowGateRecord(
        run_id=run_id,
        experiment_id=experiment_id,
        tracking_uri=uri,
        report_id=report.report_id,
        passed=report.passed,
        registered_model_name=register_as if version is not None else None,
        registered_version=version,
        reason=reason,
    )


# ---------------------------------------------------------------------------- what is logged


def gate_params(report: GateReport) -> dict[str, str]:
    """The run's params: the policy flattened (``policy.scan.detectors``), ``strategy``,
    ``repaired`` and ``purification_status``; values longer than MLflow's limit are cut."""
    out: dict[str, str] = {}
    _flatten("policy", report.policy, out)
    out["strategy"] = report.strategy or "none"
    out["repaired"] = str(report.repaired).lower()
    out["purification_status"] = report.purification_status or "none"
    return {_key(k): _cut(v, _MAX_PARAM_VALUE) for k, v in out.items()}


def gate_metrics(report: GateReport) -> dict[str, float]:
    """The run's metrics (finite values only).

    ``gate.passed`` (0/1), ``gate.exit_code``, ``gate.rules``, ``gate.failed_rules``;
    ``ba.input``, ``ba.output``, ``ba.drop`` (as rule HK-BA-002 computes it),
    ``ba.output_ci_low``/``_high``, ``ba.largest_class_drop`` (the largest per-class accuracy
    loss, :attr:`GateReport.class_accuracy`); per trigger source (``scan``, ``rescan``,
    ``known.<name>``) ``asr.input_max.<source>`` and ``asr.output_max.<source>``, and
    ``asr.output_max`` over all; ``rule.<RULE-ID>`` for each rule with a numeric value;
    ``onnx.ba``/``onnx.torch_ba``; ``data.<field>`` image counts; ``time.<phase>_seconds``.
    """
    m: dict[str, float] = {
        "gate.passed": float(report.passed),
        "gate.exit_code": float(report.exit_code),
        "gate.rules": float(len(report.rules)),
        "gate.failed_rules": float(len(report.failed_rules)),
    }
    if report.input_ba is not None:
        m["ba.input"] = report.input_ba
    if report.output_ba is not None:
        m["ba.output"] = report.output_ba
    if report.input_ba is not None and report.output_ba is not None:
        m["ba.drop"] = max(0.0, report.input_ba - report.output_ba)
    if report.output_ba_ci is not None:
        m["ba.output_ci_low"], m["ba.output_ci_high"] = report.output_ba_ci
    if report.class_accuracy:
        m["ba.largest_class_drop"] = max(c.drop for c in report.class_accuracy)
    sources: dict[str, list[tuple[float | None, float | None]]] = {}
    for t in report.triggers:
        sources.setdefault(t.source.replace(":", "."), []).append((t.input_asr, t.output_asr))
    for src, rows in sources.items():
        ins = [a for a, _ in rows if a is not None]
        outs = [b for _, b in rows if b is not None]
        if ins:
            m[f"asr.input_max.{src}"] = max(ins)
        if outs:
            m[f"asr.output_max.{src}"] = max(outs)
    all_out = [t.output_asr for t in report.triggers if t.output_asr is not None]
    if all_out:
        m["asr.output_max"] = max(all_out)
    for r in report.rules:
        if isinstance(r.value, int | float) and not isinstance(r.value, bool):
            m[f"rule.{r.rule_id}"] = float(r.value)
    onnx = report.onnx or {}
    for name, key in (("onnx_ba", "onnx.ba"), ("torch_ba", "onnx.torch_ba")):
        if isinstance(onnx.get(name), int | float):
            m[key] = float(onnx[name])
    for name, value in report.data.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            m[f"data.{name}"] = float(value)
    for name, value in report.timings.items():
        m[f"time.{name}"] = float(value)
    return {_key(k): v for k, v in m.items() if math.isfinite(v)}


def _run_tags(report: GateReport, gate_dir: Path, onnx_files: Sequence[Path]) -> dict[str, str]:
    tags = {
        "hardenkit.report_id": report.report_id,
        "hardenkit.gate": "passed" if report.passed else "failed",
        "hardenkit.exit_code": str(report.exit_code),
        "hardenkit.input_sha256": report.input_model.sha256,
        "hardenkit.output_sha256": report.output_model.sha256,
        "hardenkit.repaired": str(report.repaired).lower(),
        "hardenkit.version": report.hardenkit_version,
    }
    if report.failed_rules:
        tags["hardenkit.failed_rules"] = ",".join(r.rule_id for r in report.failed_rules)
    if onnx_files and report.onnx is not None:
        tags["hardenkit.onnx_sha256"] = str(report.onnx["sha256"])
    for r in report.rules:
        tags[_key(f"hardenkit.rule.{r.rule_id}")] = r.status
    summary = gate_dir / "summary.md"
    if summary.is_file():  # MLflow shows this tag as the run's description
        tags["mlflow.note.content"] = _cut(summary.read_text(encoding="utf-8"), _MAX_TAG_VALUE)
    return tags


# ---------------------------------------------------------------------------------- reading


def _read_gate(
    source: GateResult | str | Path,
    directory: str | Path | None,
    stack: contextlib.ExitStack,
) -> tuple[GateReport, Path]:
    from ..gate import GateReport, GateResult

    if isinstance(source, GateResult):
        if directory is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="hardenkit-mlflow-"))
            source.save(tmp)
            directory = tmp
        gate_dir = Path(directory)
    elif isinstance(source, str | Path):
        if directory is not None:
            raise ConfigError(
                "directory= is only for a GateResult source.",
                hint="pass the saved directory itself as the first argument",
            )
        p = Path(source)
        gate_dir = p.parent if p.name == "gate.json" and p.is_file() else p
    else:
        raise ConfigError(
            f"log_gate needs a GateResult or the directory a gate was saved to, got "
            f"{type(source).__name__}.",
            hint="e.g. log_gate('gate-out/') after `hardenkit gate --out gate-out`",
        )
    path = gate_dir / "gate.json"
    if not path.is_file():
        raise DataError(
            f"{path} not found: {gate_dir} is not a saved gate.",
            hint="pass the --out directory of `hardenkit gate` (or of GateResult.save)",
        )
    try:
        report = GateReport.model_validate_json(path.read_text(encoding="utf-8"))
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise DataError(
            f"{path} is not a gate report this hardenkit can read: {exc}",
            hint="log it with the hardenkit version that wrote it, or re-run the gate",
        ) from exc
    if isinstance(source, GateResult) and report.report_id != source.report.report_id:
        raise DataError(
            f"{path} holds gate report {report.report_id}, not the GateResult's report "
            f"{source.report.report_id}.",
            hint="pass the directory this GateResult was saved to (or directory=None)",
        )
    return report, gate_dir


def _verified_files(report: GateReport, gate_dir: Path) -> list[Path]:
    """Check every file against ``gate.json``; return the ONNX files (main file first)."""
    from ..io import file_sha256

    expected = dict(report.files)
    onnx_files: list[Path] = []
    if report.onnx is not None:  # the export ran: GateResult.save copied its files
        main = str(report.onnx.get("path", "model.onnx"))
        listed = report.onnx.get("files", {})
        onnx_sha = {str(k): str(v) for k, v in listed.items()}
        onnx_sha[main] = str(report.onnx["sha256"])
        for name in [main, *sorted(n for n in onnx_sha if n != main)]:
            if expected.setdefault(name, onnx_sha[name]) != onnx_sha[name]:
                raise DataError(
                    f"{gate_dir / 'gate.json'} records two different sha256 for {name}.",
                    hint="re-run the gate; do not edit gate.json",
                )
            onnx_files.append(gate_dir / name)
    for name, sha in sorted(expected.items()):
        p = gate_dir / name
        if not p.is_file():
            raise DataError(
                f"{p} is missing: gate.json lists it with its sha256.",
                hint="log the directory GateResult.save wrote, unchanged",
            )
        got = file_sha256(p)
        if got != sha:
            raise DataError(
                f"{p} has sha256 {got[:12]}..., not the {sha[:12]}... gate.json recorded: the "
                "file changed after the gate decided, so it is neither logged nor registered.",
                hint="re-run the gate on the model you mean to ship",
            )
    return onnx_files


# ---------------------------------------------------------------------------------- logging


def _experiment_id(client: MlflowClient, name: str, artifact_location: str | Path | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        location = None
        if artifact_location is not None:
            loc = str(artifact_location)
            location = loc if "://" in loc else Path(loc).resolve().as_uri()
        try:
            return str(client.create_experiment(name, artifact_location=location))
        except Exception:  # created meanwhile by another process
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        raise IntegrationError(
            f"the MLflow experiment {name!r} is deleted.",
            hint=f"restore it (`mlflow experiments restore --experiment-id "
            f"{exp.experiment_id}`) or pass another experiment name",
        )
    return str(exp.experiment_id)


def _log_run(
    client: MlflowClient,
    run_id: str,
    report: GateReport,
    gate_dir: Path,
    onnx_files: Sequence[Path],
    stack: contextlib.ExitStack,
) -> None:
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    params = [Param(k, v) for k, v in gate_params(report).items()]
    for param_batch in _chunks(params, _PARAMS_PER_BATCH):
        client.log_batch(run_id, params=param_batch)
    metrics = [Metric(k, v, now, 0) for k, v in gate_metrics(report).items()]
    for metric_batch in _chunks(metrics, _METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metric_batch)
    for rel in _evidence(report, gate_dir, onnx_files):
        p = gate_dir / rel
        parent = rel.parent.as_posix()
        dest = EVIDENCE_PATH if parent == "." else f"{EVIDENCE_PATH}/{parent}"
        if p.is_dir():
            client.log_artifacts(run_id, str(p), f"{dest}/{p.name}")
        else:
            client.log_artifact(run_id, str(p), dest)
    if onnx_files and report.passed:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hardenkit-mlflow-")))
        model_dir = _onnx_model(report, onnx_files, tmp / MODEL_PATH)
        client.log_artifacts(run_id, str(model_dir), MODEL_PATH)


def _evidence(report: GateReport, gate_dir: Path, onnx_files: Sequence[Path]) -> list[Path]:
    """Paths (relative to ``gate_dir``) logged under ``gate/``: every output but the ONNX
    files of a passed gate (those go to ``model/``)."""
    skip = {p.name for p in onnx_files} if report.passed else set()
    names = set(report.files) | {n for n in _EXTRA_EVIDENCE if (gate_dir / n).exists()}
    # the re-scans that started another repair round (``rescan-<round>/``, stop 58)
    names |= {p.name for p in gate_dir.glob("rescan-*") if p.is_dir()}
    return sorted(Path(n) for n in names if n not in skip)


def _onnx_model(report: GateReport, onnx_files: Sequence[Path], model_dir: Path) -> Path:
    """An MLflow ``onnx`` flavour model whose ONNX file is the gate's file, byte for byte."""
    import onnx
    from mlflow.models import Model
    from mlflow.onnx import save_model

    from ..io import file_sha256

    main = onnx_files[0]
    active = (report.onnx or {}).get("provider")
    providers = None
    if isinstance(active, str) and active.endswith("ExecutionProvider"):
        providers = [active] + (
            [] if active == "CPUExecutionProvider" else ["CPUExecutionProvider"]
        )
    save_model(
        onnx.load(str(main)),
        str(model_dir),
        onnx_execution_providers=providers,
        save_as_external_data=len(onnx_files) > 1,
        metadata={"hardenkit_report_id": report.report_id},
    )
    data = str(Model.load(str(model_dir)).flavors["onnx"]["data"])
    # MLflow re-serialises the model; the registry must hold the very bytes the gate
    # verified, so its copy (and any external data it wrote) is replaced by the gate's files
    for f in model_dir.iterdir():
        if f.name == data or f.suffix == ".data":
            f.unlink()
    shutil.copy2(main, model_dir / data)
    for extra in onnx_files[1:]:
        shutil.copy2(extra, model_dir / extra.name)
    if report.onnx is not None and file_sha256(model_dir / data) != report.onnx["sha256"]:
        raise IntegrationError(
            f"the ONNX file prepared for MLflow ({model_dir / data}) differs from the one the "
            "gate verified.",
            hint="check the disk the temporary directory lives on, and log again",
        )
    return model_dir


def _register(client: MlflowClient, name: str, run: Run, report: GateReport) -> str:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        try:
            client.create_registered_model(
                name, description="Registered by the hardenkit gate (docs/gate.md)."
            )
        except MlflowException as exc2:  # created meanwhile by another process
            if exc2.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    tags = {
        "hardenkit.report_id": report.report_id,
        "hardenkit.gate": "passed",
        "hardenkit.input_sha256": report.input_model.sha256,
        "hardenkit.output_sha256": report.output_model.sha256,
        "hardenkit.onnx_sha256": str((report.onnx or {}).get("sha256")),
        "hardenkit.version": report.hardenkit_version,
    }
    mv = client.create_model_version(
        name,
        source=f"{run.info.artifact_uri}/{MODEL_PATH}",
        run_id=run.info.run_id,
        tags=tags,
        description=f"hardenkit gate report {report.report_id}: passed "
        f"{len(report.rules)} rules"
        + (f", repaired with {report.strategy}" if report.repaired else ", not repaired"),
    )
    if str(mv.status) != "READY":
        raise IntegrationError(
            f"MLflow created {name} version {mv.version} but its status is {mv.status} "
            f"({mv.status_message or 'no message'}), not READY.",
            hint="check the model registry; do not deploy that version",
        )
    return str(mv.version)


# ---------------------------------------------------------------------------------- helpers


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flatten(f"{prefix}.{k}", v, out)
    elif isinstance(value, str):
        out[prefix] = value
    else:
        out[prefix] = json.dumps(value, sort_keys=True)


def _key(name: str) -> str:
    """A key MLflow accepts (letters, digits, ``_ - . /``; at most 250 characters)."""
    return re.sub(r"[^\w.\-/]", "_", name)[:_MAX_KEY]


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _chunks(items: Sequence[_T], size: int) -> Iterator[list[_T]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])
