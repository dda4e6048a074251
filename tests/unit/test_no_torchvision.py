"""hardenkit works without torchvision: it is never imported, even when it is installed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Runs in a fresh interpreter. A meta-path finder records and refuses every attempt to import
# torchvision (or a submodule), even ones wrapped in try/except. In "sentinel" mode
# sys.modules['torchvision'] = None is set as well, which makes any import fail outright
# (without reaching the finder), like an environment where torchvision is unusable.
_PRELUDE = r"""
import importlib.abc
import json
import sys

MODE = sys.argv[1]

attempts = []


class BlockTorchvision(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            attempts.append(fullname)
            raise ModuleNotFoundError(f"No module named {fullname!r} (blocked by test)")
        return None


sys.meta_path.insert(0, BlockTorchvision())
if MODE == "sentinel":
    sys.modules["torchvision"] = None
"""

_SCRIPT = (
    _PRELUDE
    + r"""
import torch

import hardenkit

model = hardenkit.create_model("small-cnn", num_classes=3, width=4)
with torch.no_grad():
    out = model(torch.rand(2, 3, 32, 32))
names = hardenkit.list_models()

loaded = sorted(m for m in sys.modules if m.split(".")[0] == "torchvision")
print(json.dumps({
    "shape": list(out.shape),
    "attempts": attempts,
    "sentinel": sys.modules.get("torchvision", "missing") is None,
    "loaded": [m for m in loaded if sys.modules[m] is not None],
    "models": names,
    "type": type(model).__name__,
}))
"""
)


@pytest.mark.parametrize("mode", ["finder", "sentinel"])
def test_hardenkit_never_imports_torchvision(mode: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["shape"] == [2, 3]
    assert result["type"] == "NormalizedModel"
    assert "small-cnn" in result["models"]
    assert result["attempts"] == [], "hardenkit tried to import torchvision"
    assert result["loaded"] == [], "a torchvision module ended up in sys.modules"
    assert result["sentinel"] is (mode == "sentinel")


def test_blocker_actually_blocks() -> None:
    """Guard the guard: the finder refuses `import torchvision.models` and records it."""
    script = _PRELUDE + (
        "try:\n"
        "    import torchvision.models\n"
        "except ImportError as exc:\n"
        "    print(json.dumps([type(exc).__name__, attempts]))\n"
        "else:\n"
        "    print(json.dumps(['imported', attempts]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, "finder"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads(proc.stdout) == ["ModuleNotFoundError", ["torchvision"]]
