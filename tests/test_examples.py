"""Every script in examples/ runs to completion (exit 0) in a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("[0-9][0-9]_*.py"))


def test_examples_exist() -> None:
    names = [p.name for p in EXAMPLES]
    assert names == [
        "01_backdoor_and_validate.py",
        "02_custom_model_and_loader.py",
        "03_data_sources.py",
        "04_export_onnx.py",
        "05_scan_model.py",
        "06_purify_model.py",
        "07_trigger_free_d3.py",
        "08_prune_model.py",
        "09_train_untrusted.py",
        "10_gate.py",
    ]


@dataclass
class ExampleRun:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    cwd: Path
    out: Path


CONCURRENT = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2
"""Examples run single-threaded (``OMP_NUM_THREADS=1``), two at a time: one per core — one at
a time under pytest-xdist, whose other worker already has the second core."""


def _run_example(script: Path, base: Path) -> ExampleRun:
    env = {
        **os.environ,
        "TQDM_DISABLE": "1",
        "HARDENKIT_DISABLE_PLUGINS": "1",
        # tiny models on a shared 2-core machine run several times faster single-threaded
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    cwd = base / script.stem / "cwd"
    cwd.mkdir(parents=True)
    out = base / script.stem / "out"
    args = [sys.executable, str(script)]
    if '"--out"' in script.read_text():
        args += ["--out", str(out)]  # keep the outputs inside the test's folder
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            args,
            cwd=cwd,  # examples must not depend on (or write to) the working directory
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, stdout, stderr = -9, str(exc.stdout or ""), f"timed out after {exc.timeout}s"
    return ExampleRun(rc, stdout, stderr, time.perf_counter() - t0, cwd, out)


@pytest.fixture(scope="session")
def example_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, ExampleRun]:
    """The selected examples, run once per session, :data:`CONCURRENT` at a time."""
    base = tmp_path_factory.mktemp("examples")
    selected = {
        item.callspec.params["script"]
        for item in request.session.items
        if isinstance(item, pytest.Function) and item.originalname == "test_example_runs"
    }
    # 08, 07, 06 are the slow ones: start them first
    order = sorted(selected, key=lambda p: p.name, reverse=True)
    with ThreadPoolExecutor(max_workers=CONCURRENT) as pool:
        futures = {p.stem: pool.submit(_run_example, p, base) for p in order}
        return {name: f.result() for name, f in futures.items()}


@pytest.mark.slow
@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(script: Path, example_runs: dict[str, ExampleRun]) -> None:
    run = example_runs[script.stem]
    assert run.returncode == 0, (
        f"{script.name} exited {run.returncode} after {run.seconds:.1f}s\n"
        f"--- stdout ---\n{run.stdout[-4000:]}\n--- stderr ---\n{run.stderr[-4000:]}"
    )
    assert list(run.cwd.iterdir()) == [], f"{script.name} wrote into the working directory"
    if '"--out"' in script.read_text():
        assert any(run.out.rglob("*.json")), f"{script.name} wrote no JSON report"


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_has_docstring_and_quick_flag(script: Path) -> None:
    text = script.read_text()
    assert text.startswith('"""'), f"{script.name} needs a module docstring"
    assert "def main(" in text
    assert '"--quick"' in text
    assert 'if __name__ == "__main__":' in text
