"""Every script in examples/ runs to completion (exit 0) in a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
import time
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
    ]


@pytest.mark.slow
@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(script: Path, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "TQDM_DISABLE": "1",
        "HARDENKIT_DISABLE_PLUGINS": "1",
        # tiny models on a shared 2-core machine run several times faster single-threaded
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    args = [sys.executable, str(script)]
    if '"--out"' in script.read_text():
        args += ["--out", str(tmp_path / "out")]  # keep the outputs inside tmp_path
    t0 = time.perf_counter()
    proc = subprocess.run(
        args,
        cwd=cwd,  # examples must not depend on (or write to) the working directory
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, (
        f"{script.name} exited {proc.returncode} after {seconds:.1f}s\n"
        f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
    )
    assert list(cwd.iterdir()) == [], f"{script.name} wrote into the working directory"
    if '"--out"' in script.read_text():
        assert any((tmp_path / "out").rglob("*.json")), f"{script.name} wrote no JSON report"


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_has_docstring_and_quick_flag(script: Path) -> None:
    text = script.read_text()
    assert text.startswith('"""'), f"{script.name} needs a module docstring"
    assert "def main(" in text
    assert '"--quick"' in text
    assert 'if __name__ == "__main__":' in text
