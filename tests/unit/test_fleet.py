"""Fleet scanning: the manifest, the process pool and Ray, failures, resuming, exit codes.

Four tiny models (three ``small-cnn`` of width 4 on 16x16 synthetic images, one whose weights
have 5 classes where the manifest says 4) are scanned with two Neural Cleanse epochs: three
``scan.json`` and one listed failure, on a ``spawn`` process pool and on a local Ray cluster.
"""

from __future__ import annotations

import csv
import io
import json
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from hardenkit.cli import main
from hardenkit.errors import ConfigError, DependencyError
from hardenkit.fleet import (
    FleetManifest,
    FleetModelResult,
    fleet_exit_code,
    load_manifest,
    plan_fleet,
    scan_fleet,
)
from hardenkit.io import model_metadata, save_state_dict
from hardenkit.models import build_model
from hardenkit.scan import ScanReport, ScanResult
from hardenkit.triggers import PatchTrigger

from .fleet_helpers import tiny_net

DATA = "synthetic:num_classes=4,train_per_class=10,test_per_class=2,image_size=16"
TINY_SCAN: dict[str, Any] = {
    "detectors": ["neural-cleanse"],  # the random tiny models are clean to it (seed 0)
    "max_images": 32,
    "max_holdout_images": 8,
    "detector_options": {"neural-cleanse": {"epochs": 2}},
    "require_above_chance": False,  # random models: the mechanics of the fleet, not a verdict
}
GOOD = ["m0", "m1", "m2"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``models/m{0,1,2}.safetensors`` (architecture recorded) and ``models/broken...``."""
    root = tmp_path_factory.mktemp("fleet")
    torch.manual_seed(0)
    for name in GOOD:
        save_state_dict(
            build_model("small-cnn", 4, width=4),
            root / "models" / f"{name}.safetensors",
            metadata=model_metadata("small-cnn", 4, {"width": 4}),
        )
    # 5 output classes where the manifest says 4: the load fails in the worker
    save_state_dict(build_model("small-cnn", 5, width=4), root / "models" / "broken.safetensors")
    save_state_dict(tiny_net(4), root / "models" / "tiny.safetensors")
    return root


def _entries(broken: bool = True) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"id": "m0", "weights": "models/m0.safetensors"},  # arch + classes from the file
        {"id": "m1", "weights": "models/m1.safetensors", "arch": "small-cnn", "num_classes": 4},
        {"id": "m2", "weights": "models/m2.safetensors"},
    ]
    if broken:
        out.append(
            {
                "id": "broken",
                "weights": "models/broken.safetensors",
                "arch": "small-cnn",
                "num_classes": 4,
                "arch_args": {"width": 4},
            }
        )
    return out


def _manifest(
    folder: Path, models: list[dict[str, Any]], name: str = "fleet.yaml", **defaults: Any
) -> Path:
    doc = {
        "defaults": {"data": DATA, "budget": "quick", "scan": TINY_SCAN, **defaults},
        "models": models,
    }
    path = folder / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _csv(out: Path) -> dict[str, dict[str, str]]:
    rows = csv.DictReader(io.StringIO((out / "fleet.csv").read_text()))
    return {r["id"]: r for r in rows}


def _check_first_run(out: Path, backend: str) -> None:
    for name in GOOD:
        report = ScanReport.model_validate_json((out / name / "scan.json").read_text())
        assert report.num_classes == 4
        assert report.verdict in {"clean", "suspicious", "backdoored"}
        task = json.loads((out / name / "fleet-task.json").read_text())
        assert task["report_id"] == report.report_id
    assert not (out / "broken" / "scan.json").exists()
    error = json.loads((out / "broken" / "error.json").read_text())
    assert error["error_type"] == "ModelCompatibilityError"
    assert "Traceback" in error["traceback"]
    fleet = json.loads((out / "fleet.json").read_text())
    assert fleet["report_type"] == "fleet"
    assert fleet["backend"] == backend
    assert fleet["counts"] == {"models": 4, "ok": 3, "failed": 1, "skipped": 0, "flagged": 0}
    assert fleet["exit_code"] == 3
    assert fleet["models_per_minute"] > 0
    assert [m["id"] for m in fleet["models"]] == [*GOOD, "broken"]  # manifest order
    broken = fleet["models"][3]
    assert broken["status"] == "failed"
    assert broken["scan_report"] is None
    assert "Weight shapes do not match" in broken["error_message"]
    rows = _csv(out)
    assert [rows[n]["status"] for n in GOOD] == ["ok"] * 3
    assert rows["broken"]["error"].startswith("ModelCompatibilityError: Weight shapes")
    md = (out / "fleet.md").read_text()
    assert "| `broken` | failed |" in md
    assert "exit code: 3" in md


# --------------------------------------------------------------------------- the process pool


@pytest.mark.slow
def test_cli_process_pool_failures_resume_and_exit_codes(
    models: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TQDM_DISABLE", raising=False)  # heartbeat lines (stderr is no TTY)
    monkeypatch.chdir(tmp_path)  # relative paths come from the manifest's folder, not here
    manifest = _manifest(models, _entries(), name="fleet-a.yaml")
    out = tmp_path / "out"

    # 1. three scans and one failure that does not stop them: exit 3
    assert main(["scan-fleet", str(manifest), "--out", str(out), "--workers", "2"]) == 3
    err = capsys.readouterr().err
    first = err.strip().splitlines()[0]
    assert first.startswith("scan-fleet: 4 models: 4 to scan; process backend, 2 workers x 1")
    assert "estimated at most ~" in first
    assert "[hardenkit] scan-fleet 4/4 (100%)" in err
    assert "status=failed error=ModelCompatibilityError" in err
    assert "broken: FAILED ModelCompatibilityError" in err
    _check_first_run(out, "process")
    scanned = {n: (out / n / "scan.json").read_text() for n in GOOD}

    # 2. re-run: the three are skipped (untouched), the failure is retried: still exit 3
    assert main(["scan-fleet", str(manifest), "--out", str(out)]) == 3
    err = capsys.readouterr().err
    assert "4 models: 1 to scan; 3 skipped" in err
    assert {n: (out / n / "scan.json").read_text() for n in GOOD} == scanned
    rows = _csv(out)
    assert [rows[n]["status"] for n in GOOD] == ["skipped"] * 3
    assert rows["broken"]["status"] == "failed"

    # 3. without the broken model, everything is already scanned: exit 0, no worker started
    clean = _manifest(models, _entries(broken=False), name="fleet-b.yaml")
    assert main(["scan-fleet", str(clean), "--out", str(out), "--report", "-"]) == 0
    captured = capsys.readouterr()
    assert "3 models: 0 to scan; 3 skipped" in captured.err
    report = json.loads(captured.out)
    assert report["counts"]["skipped"] == 3
    assert report["models_per_minute"] is None
    assert report["exit_code"] == 0

    # 4. m0's settings change (a 1 ms budget cuts its scan short: not conclusive) -> rescanned,
    #    flagged as `hardenkit scan` would exit 1; the other two stay skipped
    entries = _entries(broken=False)
    entries[0]["budget"] = 0.001
    cut = _manifest(models, entries, name="fleet-c.yaml")
    assert main(["scan-fleet", str(cut), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "3 models: 1 to scan; 2 skipped" in err
    fleet = json.loads((out / "fleet.json").read_text())
    m0 = fleet["models"][0]
    assert (m0["status"], m0["conclusive"], m0["flagged"]) == ("ok", False, True)
    assert "(not conclusive)" in (out / "fleet.md").read_text()
    assert (out / "m0" / "scan.json").read_text() != scanned["m0"]


def test_resume_is_keyed_on_weights_sha256_settings_and_report_id(
    models: Path, tmp_path: Path
) -> None:
    """Which models a re-run skips (planning only: no scan runs here)."""
    out = tmp_path / "out"
    manifest = _manifest(models, _entries(broken=False))
    task = {t.id: t for t in plan_fleet(manifest, out).tasks}["m1"]
    # an earlier run's scan.json of m1 (a report made without scanning)
    report = ScanResult.from_triggers(
        {1: PatchTrigger.square(3)}, model=tiny_net(4), num_classes=4
    ).report
    (out / "m1").mkdir(parents=True)
    (out / "m1" / "scan.json").write_text(report.to_json())
    record = {
        "report_id": report.report_id,
        "weights_sha256": task.weights_sha256,
        "settings_sha256": task.settings_sha256,
        "seconds": 1.5,
    }

    def plan_with(**changes: Any) -> list[str]:
        (out / "m1" / "fleet-task.json").write_text(json.dumps({**record, **changes}))
        return [t.id for t in plan_fleet(manifest, out).tasks]

    assert plan_with() == ["m0", "m2"]
    skipped = plan_fleet(manifest, out).skipped[0]
    assert (skipped.id, skipped.status, skipped.verdict, skipped.seconds) == (
        "m1",
        "skipped",
        "backdoored",
        1.5,
    )
    assert plan_with(weights_sha256="0" * 64) == GOOD  # other weights
    assert plan_with(settings_sha256="0" * 64) == GOOD  # other settings (budget, data, ...)
    assert plan_with(report_id="other") == GOOD  # scan.json replaced by hand
    plan_with()
    assert [t.id for t in plan_fleet(manifest, out, force=True).tasks] == GOOD
    (out / "m1" / "scan.json").write_text("{}")  # not a ScanReport
    assert [t.id for t in plan_fleet(manifest, out).tasks] == GOOD


@pytest.mark.slow
def test_a_dead_worker_fails_only_its_model(models: Path, tmp_path: Path) -> None:
    """A worker killed mid-task (segfault, OOM killer) breaks the pool; the tasks in it are
    rerun one per process, so only the model that kills its worker is listed as failed."""
    entries = [
        {
            "id": "tiny",
            "weights": "models/tiny.safetensors",
            "factory": "tests.unit.fleet_helpers:tiny_net",
            "num_classes": 4,
        },
        {
            "id": "crash",
            "weights": "models/tiny.safetensors",
            "factory": "tests.unit.fleet_helpers:crashing_net",
            "num_classes": 4,
        },
    ]
    result = scan_fleet(_manifest(models, entries), tmp_path / "out", workers=2, progress="off")
    by_id = {m.id: m for m in result.models}
    assert by_id["tiny"].status == "ok"
    assert by_id["crash"].status == "failed"
    assert by_id["crash"].error_type == "BrokenProcessPool"
    assert "worker process scanning this model died" in (by_id["crash"].error_message or "")
    assert result.exit_code == 3
    assert (tmp_path / "out" / "tiny" / "scan.json").is_file()
    assert not (tmp_path / "out" / "crash" / "scan.json").exists()


# ------------------------------------------------------------------------------------------ Ray


@pytest.mark.slow
def test_ray_backend_scans_the_same_fleet(models: Path, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        manifest = _manifest(models, _entries())
        out = tmp_path / "out"
        result = scan_fleet(manifest, out, backend="ray", progress="off")
        assert result.exit_code == 3
        assert result.report.workers == 2
        assert result.report.ray_address
        _check_first_run(out, "ray")
        again = scan_fleet(manifest, out, backend="ray", progress="off")
        assert [m.status for m in again.models] == ["skipped"] * 3 + ["failed"]
        assert ray.is_initialized()  # a session the caller started is left running
    finally:
        ray.shutdown()


def test_missing_ray_is_a_dependency_error(
    models: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    manifest = _manifest(models, _entries())
    with pytest.raises(DependencyError, match="ray"):
        scan_fleet(manifest, tmp_path / "out", backend="ray")
    assert main(["scan-fleet", str(manifest), "--out", str(tmp_path / "o"), "--ray"]) == 3
    assert 'pip install "hardenkit[ray]"' in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # failed before any work


def test_unreachable_ray_address_fails_fast(
    models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("ray")
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    manifest = _manifest(models, _entries())
    argv = ["scan-fleet", str(manifest), "--out", str(tmp_path / "o")]
    assert main([*argv, "--ray-address", f"127.0.0.1:{port}"]) == 3
    assert "cannot reach the Ray cluster at '127.0.0.1:" in capsys.readouterr().err


# ------------------------------------------------------------------------ manifest validation


def _bad(models: Path, entries: list[dict[str, Any]], **defaults: Any) -> str:
    with pytest.raises(ConfigError) as info:
        plan_fleet(_manifest(models, entries, name="bad.yaml", **defaults), models / "out")
    return str(info.value)


M1 = {"id": "m1", "weights": "models/m1.safetensors"}


@pytest.mark.parametrize(
    ("entries", "defaults", "expected"),
    [
        ([M1, {**M1, "id": "M1"}], {}, "models[1] repeats the id 'M1' of models[0]"),
        ([{**M1, "id": "a/b"}], {}, "id 'a/b' is not a safe folder name"),
        ([{**M1, "id": "fleet.json"}], {}, "would overwrite the fleet summary file"),
        ([{**M1, "arch": "small-cnn", "factory": "m:f"}], {}, "not both"),
        ([{**M1, "arch": "pkg.mod:fn"}], {}, "write it as factory"),
        ([{**M1, "factory": "not a spec"}], {}, "factory must look like"),
        ([{**M1, "wieghts": "x"}], {}, "did you mean 'weights'"),
        ([{"id": "m1"}], {}, "models[0] (id 'm1'): weights: Field required"),
        ([], {}, "models: List should have at least 1 item"),
        ([{**M1, "num_classes": 1}], {}, "num_classes"),
        ([M1], {"budget": "fast"}, "models[0] (id 'm1'): scan: unknown scan budget 'fast'"),
        ([M1], {"scan": {"max_imgs": 3}}, "did you mean 'max_images'"),
        ([M1], {"scan": {"detectors": ["nope"]}}, "unknown detector(s) ['nope']"),
        (
            [{**M1, "data_free": True, "scan": {"detectors": ["neural-cleanse"]}}],
            {},
            "need clean images, but the model is data_free",
        ),
        ([M1], {"scan": {"detector_options": [1]}}, "must map detector names"),
        ([M1], {"scan": {"detector_options": {"neural-cleanse": 3}}}, "must map detector names"),
        ([M1], {"scan": {"detectors": ["mm-bd"], "holdout_fraction": 2}}, "holdout_fraction"),
        ([M1], {"data": None}, "models[0] (id 'm1'): no data"),
        ([M1], {"data": "no-such-folder"}, "data path"),
        ([M1], {"device": "tpu"}, "device 'tpu'"),
        ([{**M1, "weights": "models/none.safetensors"}], {}, "does not exist"),
        ([{**M1, "arch": "resnet-9000"}], {}, "arch 'resnet-9000' is not in the zoo"),
        (
            [{"id": "b", "weights": "models/broken.safetensors"}],
            {},
            "no architecture: give arch",
        ),
        (
            [{"id": "b", "weights": "models/broken.safetensors", "arch": "small-cnn"}],
            {},
            "no num_classes",
        ),
    ],
)
def test_manifest_errors_name_the_entry(
    models: Path, entries: list[dict[str, Any]], defaults: dict[str, Any], expected: str
) -> None:
    message = _bad(models, entries, **defaults)
    assert expected in message
    assert "bad.yaml" in message


def test_every_bad_entry_is_listed_at_once(models: Path) -> None:
    (models / "models" / "m1.pt").write_bytes(b"a pickle, never loaded")
    entries = [
        {"id": "a", "weights": "models/a.safetensors"},
        M1,
        {"id": "b", "weights": "models/m1.pt"},
    ]
    message = _bad(models, entries)
    assert "2 bad entries" in message
    assert "models[0] (id 'a'): weights file" in message
    assert "models[2] (id 'b'): weights file" in message
    assert "is not .safetensors" in message


def test_manifest_syntax_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text("models:\n  - id: a\n    id: b\n")
    with pytest.raises(ConfigError, match=r"fleet manifest file .*fleet\.yaml.* duplicate key"):
        load_manifest(path)
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_manifest(path)


def test_cli_bad_manifest_exits_2(
    models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = _manifest(models, [M1, M1])
    assert main(["scan-fleet", str(manifest), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hardenkit: error: Invalid fleet manifest")
    assert "repeats the id 'm1'" in err


def test_plan_resolves_paths_settings_and_inheritance(
    models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    entries = [
        {"id": "m0", "weights": "models/m0.safetensors"},
        {
            "id": "m1",
            "weights": str(models / "models" / "m1.safetensors"),
            "arch": "small-cnn",
            "num_classes": 4,
            "data_free": True,
            "scan": {"detector_options": {"mm-bd": {"steps": 5}}},
            "seed": 3,
        },
    ]
    plan = plan_fleet(_manifest(models, entries), tmp_path / "out")
    m0, m1 = plan.tasks
    assert m0.weights == str(models / "models" / "m0.safetensors")
    assert (m0.arch, m0.num_classes, m0.arch_args) == ("small-cnn", 4, {"width": 4})  # recorded
    assert m0.data == DATA
    assert m0.scan_config["detectors"] == ["neural-cleanse"]
    assert m0.scan_config["detector_options"]["neural-cleanse"]["epochs"] == 2
    assert m0.scan_config["max_images"] == 32  # the manifest wins over the quick preset
    # data-free: mm-bd as `hardenkit scan --data-free`; inherited Neural Cleanse options dropped
    assert m1.data is None
    assert m1.arch_args == {"width": 4}  # the same arch as recorded: its recorded arguments
    assert m1.scan_config["detectors"] == ["mm-bd"]
    assert set(m1.scan_config["detector_options"]) == {"mm-bd"}
    assert m1.seed == 3
    assert m0.settings_sha256 != m1.settings_sha256
    assert plan.estimate_seconds(workers=2) is not None


def test_exit_code_precedence() -> None:
    def r(status: str, flagged: bool = False) -> FleetModelResult:
        return FleetModelResult(id="x", status=status, flagged=flagged, weights="w")  # type: ignore[arg-type]

    assert fleet_exit_code([r("ok"), r("skipped")]) == 0
    assert fleet_exit_code([r("ok"), r("skipped", flagged=True)]) == 1
    assert fleet_exit_code([r("ok", flagged=True), r("failed")]) == 3  # 3 wins over 1
    assert FleetManifest(models=[M1]).defaults.budget == "quick"  # as `hardenkit scan`
