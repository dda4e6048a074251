"""Render the gate's HTML report and screenshot it in a real headless browser.

    python docs/render_gate_report.py                     # run a real gate, then screenshot
    python docs/render_gate_report.py --from gate-out/    # screenshot a saved gate directory

Without ``--from`` this trains the synthetic BadNets ``small-cnn`` of the tests (10 classes,
target 0, a 3x3 patch; ``tests/conftest.py``), runs the gate with the ``quick`` scan budget on
100 non-poisoned training images per class with the 1,000 test images held out and the real
trigger as a red team's known trigger, and saves it to ``--out`` (``GateResult.save`` writes
``report.html``). It takes minutes on a 2-core CPU. With ``--from`` it uses the
``report.html`` of a saved gate directory, or renders one with
:func:`hardenkit.gate.render_saved` when ``--rerender`` is given (or the directory has none).

The page is opened with Debian's ``chromium`` (``apt-get install chromium``) in headless mode
with networking features off, the screenshot is written to ``--screenshot`` and shrunk to a
256-colour PNG (the docs embed ``docs/images/gate-report.png``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def run_gate(out: Path) -> Path:
    """Train the synthetic BadNets model, run the gate on it and save it to ``out``."""
    sys.path.insert(0, str(ROOT))
    import hardenkit as hk
    from hardenkit.gate import Gate
    from tests.conftest import train_backdoored

    t0 = time.perf_counter()
    data = hk.make_synthetic_dataset(num_classes=10, train_per_class=500, test_per_class=100)
    bd = train_backdoored("badnets", data)
    idx = hk.data.stratified_indices(
        data.train.labels, per_class=100, exclude=bd.poisoned.poison_indices
    )
    res = Gate({"scan_budget": "quick"}, runtime={"device": "cpu", "seed": 0}).run(
        bd.model,
        data.train.subset(idx).loader(),
        data.test.loader(),
        known_triggers={"red-team": (bd.trigger, bd.target)},
    )
    print(res.report.summary())
    res.save(out)
    print(f"gate saved to {out} in {time.perf_counter() - t0:.0f} s")
    return out / "report.html"


def screenshot(html_file: Path, png: Path, window: str) -> None:
    """Open ``html_file`` in headless chromium and save a ``window``-sized screenshot."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("chromium not found: apt-get install chromium")
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                f"--screenshot={png}",
                f"--window-size={window}",
                html_file.resolve().as_uri(),
            ],
            capture_output=True,
            timeout=180,
            check=False,
        )
    if not png.is_file():
        raise SystemExit(f"chromium wrote no screenshot:\n{proc.stderr.decode()[-2000:]}")
    with Image.open(png) as shot:
        small = shot.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(png, optimize=True)
    print(f"screenshot {png} ({png.stat().st_size / 1024:.0f} KiB)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--from", dest="source", type=Path, help="a saved gate directory")
    p.add_argument("--rerender", action="store_true", help="render the page with render_saved")
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "hardenkit-gate-demo")
    p.add_argument("--screenshot", type=Path, default=ROOT / "docs/images/gate-report.png")
    p.add_argument("--window-size", default="1200,2600", help="width,height in pixels")
    p.add_argument("--figures", choices=["auto", "matplotlib", "pillow"], default="auto")
    args = p.parse_args(argv)
    if args.source is None:
        html_file = run_gate(args.out)
    else:
        html_file = args.source / "report.html"
        if args.rerender or not html_file.is_file():
            from hardenkit.gate import render_saved

            html_file = Path(tempfile.mkdtemp()) / "report.html"
            html_file.write_text(render_saved(args.source, figures=args.figures), "utf-8")
    print(f"report {html_file} ({html_file.stat().st_size / 1024:.0f} KiB)")
    screenshot(html_file, args.screenshot, args.window_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
