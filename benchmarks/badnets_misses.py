"""Why BadNets ASR stops near 95%: where the 3x3 white patch is invisible.

    python -m benchmarks.badnets_misses [--fixture badnets-0.1]

Loads the cached fixture, stamps the trigger on every non-target test image and splits the
images by how white their bottom-right 3x3 corner already is *before* stamping. A patch
stamped on an already-white corner changes (almost) nothing, so no model can react to it.
Writes ``benchmarks/results/badnets_misses.{json,md}``.
"""

from __future__ import annotations

import argparse

from hardenkit.training import predict

from .cifar_fixtures import FIXTURES, load_fixture
from .common import load_cifar10, write_results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--fixture", default="badnets-0.1", choices=sorted(FIXTURES))
    args = p.parse_args(argv)
    model, trigger, _, info = load_fixture(args.fixture)
    test = load_cifar10()["test"]
    target = int(info["config"]["attack_config"]["target"])
    keep = test.labels != target
    x = test.pixels()[keep]
    corner = x[:, :, -3:, -3:]
    # distance of the clean corner from the white patch: mean |1 - pixel| over the 27 values
    change = (1.0 - corner).abs().mean(dim=(1, 2, 3))
    hit = predict(model, x, transform=trigger).argmax(1) == target
    rows = []
    bins = [(0.0, 0.05), (0.05, 0.15), (0.15, 0.3), (0.3, 1.01)]
    for lo, hi in bins:
        m = (change >= lo) & (change < hi)
        n = int(m.sum())
        rows.append(
            {
                "corner change by the patch (mean 1 - pixel)": f"[{lo:.2f}, {hi:.2f})",
                "images": n,
                "share %": 100 * n / len(change),
                "ASR %": 100 * float(hit[m].float().mean()) if n else None,
            }
        )
    overall = 100 * float(hit.float().mean())
    visible = change >= 0.05
    rows.append(
        {
            "corner change by the patch (mean 1 - pixel)": "all",
            "images": len(change),
            "share %": 100.0,
            "ASR %": overall,
        }
    )
    rows.append(
        {
            "corner change by the patch (mean 1 - pixel)": "patch visible (>= 0.05)",
            "images": int(visible.sum()),
            "share %": 100 * float(visible.float().mean()),
            "ASR %": 100 * float(hit[visible].float().mean()),
        }
    )
    cols = ["corner change by the patch (mean 1 - pixel)", "images", "share %", "ASR %"]
    out = write_results(
        "badnets_misses",
        rows,
        cols,
        {"fixture": args.fixture, "command": "python -m benchmarks.badnets_misses"},
    )
    print(out.read_text())
    print(
        f"misses: {int((~hit).sum())} of {len(hit)}; "
        f"{int(((~hit) & ~visible).sum())} of them have a near-white corner already"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
