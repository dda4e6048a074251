"""The purification benchmark's seed summary: mean and worst case over the fixtures' seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import hardenkit as hk
import hardenkit.purify.purifier as purifier_mod
from benchmarks.purify_cpu import _scans_missed, seed_summary, seeds_markdown
from hardenkit.scan import scan_config_for_budget
from hardenkit.testing import tiny_backdoored_model


def _row(fixture: str, defence: str, ba: float, asr: float, der: float) -> dict[str, Any]:
    return {
        "fixture": fixture,
        "model": "preact-resnet18",
        "attack": "badnets",
        "defence": defence,
        "ba": ba,
        "asr": asr,
        "ra": 0.5,
        "der": der,
        "ba_drop": 0.80 - ba,
        "seconds": 10.0,
        "status": "purified",
    }


def test_seed_summary_mean_worst_and_best() -> None:
    rows = [
        _row("preact-badnets-0.1", "none", 0.80, 0.95, 0.5),
        _row("preact-badnets-0.1", "auto", 0.79, 0.01, 0.97),
        _row("preact-badnets-0.1", "d3", 0.77, 0.00, 0.96),
        _row("preact-badnets-0.1-s1", "none", 0.80, 0.95, 0.5),
        _row("preact-badnets-0.1-s1", "auto", 0.78, 0.03, 0.95),
        _row("preact-badnets-0.1-s1", "d3", 0.76, 0.10, 0.90),
        # one seed only: not summarised
        _row("preact-badnets-0.1", "mcl", 0.80, 0.0, 0.99),
    ]
    out = {o["defence"]: o for o in seed_summary(rows)}
    assert set(out) == {"auto", "d3"}
    auto = out["auto"]
    assert auto["seeds"] == 2
    assert auto["mean BA drop"] == pytest.approx(1.5)
    assert auto["worst BA drop"] == pytest.approx(2.0)
    assert auto["worst ASR %"] == pytest.approx(3.0)
    assert auto["mean DER %"] == pytest.approx(96.0)
    assert auto["worst DER %"] == pytest.approx(95.0)
    assert auto.get("best") is True
    assert "best" not in out["d3"]
    md = seeds_markdown(list(out.values()))
    assert "**auto** (best)" in md
    assert "| 1.50 / 2.00 |" in md


def test_user_script_triggers_and_model() -> None:
    """The user-script benchmark's own triggers touch what they say, and its model is a
    plain ``nn.Sequential`` taking [0, 1] pixels (the normalisation is its first layer)."""
    import torch

    from benchmarks.user_script import MODELS, stamp, user_model

    x = torch.rand(4, 3, 32, 32)
    tl = stamp(x, MODELS["patch-tl"])
    changed = (tl != x).any(dim=(0, 1))
    assert changed[2:6, 2:6].all()
    assert changed.sum() == 16
    mid = stamp(x, MODELS["patch-mid"])
    assert ((mid != x).any(dim=(0, 1))).sum() == 25
    blend = stamp(x, MODELS["blend-smooth"])
    assert (blend != x).any(dim=(0, 1)).all()
    assert float((blend - x).abs().max()) <= 0.15
    assert torch.equal(stamp(x, MODELS["patch-tl"]), tl)  # a fixed trigger
    stripes = stamp(x, MODELS["stripes"])  # additive, bounded by its amplitude, in [0, 1]
    assert float((stripes - x).abs().max()) <= MODELS["stripes"]["amplitude"] + 1e-6
    assert stripes.min() >= 0
    assert stripes.max() <= 1
    assert (stripes != x).float().mean() > 0.5
    ripple = stamp(x, MODELS["ripple"])  # additive rings, bounded by their amplitude
    assert float((ripple - x).abs().max()) <= MODELS["ripple"]["amplitude"] + 1e-6
    assert ripple.min() >= 0
    assert ripple.max() <= 1
    assert (ripple != x).float().mean() > 0.5
    smooth = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(4, 3, 32, 32)
    warped = stamp(smooth, MODELS["warp"])  # moves pixels by at most ~1.5 px, no dark border
    assert 0 < float((warped - smooth).abs().max()) <= 1.6 / 31
    assert torch.equal(stamp(x, MODELS["warp"]), stamp(x, MODELS["warp"]))
    model = user_model()
    assert isinstance(model, torch.nn.Sequential)
    assert model(x).shape == (4, 10)
    # the held-out residual models (stop 53): the script's own nn.Module, its own triggers
    from benchmarks.user_script import ARCHS, CLEAN_MODELS, UserResNet, build_model

    patch = stamp(x, MODELS["res-patch"])
    where = (patch != x).any(dim=(0, 1))
    assert where[25:30, 13:18].all()
    assert where.sum() <= 25
    checker = stamp(x, MODELS["res-blend"])  # a global blend bounded by alpha
    assert (checker != x).any(dim=(0, 1)).all()
    assert float((checker - x).abs().max()) <= MODELS["res-blend"]["alpha"] + 1e-6
    for name in ("res-patch", "res-blend"):
        assert isinstance(build_model(MODELS[name]), UserResNet)
    assert isinstance(build_model(CLEAN_MODELS["res-clean"]), UserResNet)
    assert isinstance(build_model(MODELS["patch-tl"]), torch.nn.Sequential)
    res = ARCHS["resnet"][1]()
    assert res(x).shape == (4, 10)
    assert ARCHS["resnet"][0] == "benchmarks.user_script:user_resnet"
    # the held-out grayscale models (stop 55): luma input, the trigger in luma, a 1-channel net
    from benchmarks.user_script import to_gray, user_input

    gray = user_input(x, MODELS["gray-patch"])
    assert gray.shape == (4, 1, 32, 32)
    assert torch.allclose(gray[:, 0], 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])
    assert torch.equal(user_input(x, MODELS["patch-tl"]), x)
    gpatch = stamp(gray, MODELS["gray-patch"])
    where = (gpatch != gray).any(dim=(0, 1))
    assert where[26:30, 24:28].all()
    assert where.sum() == 16
    assert torch.equal(gpatch[0, :, 26:30, 24:28], gpatch[1, :, 26:30, 24:28])  # a fixed patch
    gblend = stamp(gray, MODELS["gray-blend"])
    assert (gblend != gray).any(dim=(0, 1)).all()
    assert float((gblend - gray).abs().max()) <= MODELS["gray-blend"]["alpha"] + 1e-6
    assert to_gray(torch.ones(3, 2, 2)).allclose(torch.ones(1, 2, 2))
    net = build_model(MODELS["gray-patch"])
    assert isinstance(net, torch.nn.Sequential)
    assert net(gray).shape == (4, 10)
    assert ARCHS["sequential-gray"][0] == "benchmarks.user_script:user_model_gray"
    # the held-out BatchNorm-free network and the frame trigger (stop 56)
    from benchmarks.user_script import UserGNNet, model_spec

    solid = stamp(x, MODELS["gn-patch"])
    where = (solid != x).any(dim=(0, 1))
    assert where[5:8, 20:23].all()
    assert where.sum() == 9
    assert torch.equal(solid[:, :, 5:8, 20:23], torch.tensor([1.0, 0.0, 1.0]).view(1, 3, 1, 1)
                       .expand(4, 3, 3, 3))  # fmt: skip
    framed = stamp(x, MODELS["frame"])
    where = (framed != x).any(dim=(0, 1))
    for edge in (where[0], where[-1], where[:, 0], where[:, -1]):
        assert edge.all()
    assert where.sum() == 4 * 31  # the one-pixel border and nothing inside
    assert torch.equal(framed[:, :, 1:-1, 1:-1], x[:, :, 1:-1, 1:-1])
    for name in ("gn-patch", "gn-clean"):
        net = build_model(model_spec(name))
        assert isinstance(net, UserGNNet)
        assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
        assert net.eval()(x).shape == (4, 10)
    assert ARCHS["gn"][0] == "benchmarks.user_script:user_gn_net"
    # the held-out 64x64 models (stop 58): upsampled as their PNG files are, stamped at 64x64
    from benchmarks.user_script import upsample_uint8

    q = (x * 255).round() / 255  # pixels as loaded from uint8 files
    big = user_input(q, MODELS["hr-patch"])
    assert big.shape == (4, 3, 64, 64)
    u8 = upsample_uint8((q * 255).round().to(torch.uint8), 64)
    assert torch.equal(big, u8.float() / 255)  # the model sees exactly the files' pixels
    assert torch.equal(user_input(q, model_spec("hr-clean")), big)
    hp = stamp(big, MODELS["hr-patch"])
    where = (hp != big).any(dim=(0, 1))
    assert where[44:51, 50:57].all()
    assert where.sum() <= 49
    hb = stamp(big, MODELS["hr-blend"])
    assert (hb != big).any(dim=(0, 1)).all()
    assert float((hb - big).abs().max()) <= MODELS["hr-blend"]["alpha"] + 1e-6
    assert user_model()(big).shape == (4, 10)
    # the held-out invisible triggers (stop 59): FTrojan-style DCT coefficients of U and V ...
    from benchmarks.user_script import _dct_basis, _dither

    basis = torch.stack([_dct_basis(32, k) for k in range(32)])
    assert torch.allclose(basis @ basis.T, torch.eye(32), atol=1e-5)  # orthonormal
    mid = torch.full((4, 3, 32, 32), 0.5)
    freq = stamp(mid, MODELS["res-freq"]) - mid
    assert 8 / 255 < float(freq.abs().max()) < 18 / 255  # a faint texture
    rgb_to_uv = torch.tensor([[-0.14713, -0.28886, 0.436], [0.615, -0.51499, -0.10001]])
    uv = torch.einsum("kc,chw->khw", rgb_to_uv, freq[0]) * 255
    coef = basis @ uv @ basis.T  # the 2-D DCT of each plane: only the two positions moved
    assert torch.allclose(coef[:, 15, 15], torch.full((2,), 80.0), atol=0.5)
    assert torch.allclose(coef[:, 31, 31], torch.full((2,), 80.0), atol=0.5)
    coef[:, 15, 15] = coef[:, 31, 31] = 0
    assert float(coef.abs().max()) < 0.5
    assert torch.equal(stamp(mid, MODELS["freq"]), stamp(mid, MODELS["res-freq"]))
    # ... and BppAttack-style colour quantisation with dithering: 8 levels, the local mean kept
    quant = stamp(x, MODELS["quant"])
    assert torch.allclose(quant * 7, (quant * 7).round(), atol=1e-5)
    assert not torch.equal(quant, (x * 7).round() / 7)  # the error is diffused, not rounded
    flat = _dither(torch.full((1, 3, 32, 32), 0.3), 8)
    assert abs(float(flat.mean()) - 0.3) < 0.01
    # the script's own forms and hardenkit's red-team attacks, written apart, agree
    assert torch.allclose(quant, hk.build_attack("bpp").trigger(x), atol=1e-6)
    ft = hk.build_attack("ftrojan", magnitude=80 / 255).trigger(mid) - mid
    assert torch.allclose(ft, freq, atol=1e-6)


def test_auto_quick_miss_hides_the_purifiers_own_scan_flags() -> None:
    """``auto-quick-miss``: the Purifier's own scan comes back with its flags removed, and
    the Scanner is restored afterwards."""
    fx = tiny_backdoored_model(seed=0)
    original = purifier_mod.Scanner
    with _scans_missed(True):
        assert purifier_mod.Scanner is not original
        res = hk.Purifier(fx.backdoored.model, "auto", config={"max_steps": 2}).run(
            fx.data.test.loader(batch_size=64)
        )
    assert purifier_mod.Scanner is original
    assert res.scan is not None
    assert res.scan.verdict == "clean"
    assert res.scan.flagged_labels == []
    assert res.report.details["branch"] == "nc-unlearn (smallest masks)"  # the miss branch
    quick = scan_config_for_budget("quick")  # the Purifier's own scan settings
    real = hk.Scanner(fx.backdoored.model, 4, config=quick).run(fx.data.test.loader(batch_size=64))
    assert real.verdict == "backdoored"  # the same scan, unpatched, flags the target
    with _scans_missed(False):
        assert purifier_mod.Scanner is original


def test_gate_user_script_folders_are_pixel_exact_and_verdicts(tmp_path: Any) -> None:
    """The gate benchmark's ImageFolder export loads back bit-identical (PNG, the class
    folders in CIFAR-10 order), and a gate that passed a model whose real trigger still
    works is counted WRONG, a failed clean model a false alarm."""
    import torch

    from benchmarks.gate_user_script import _write_folder, verdict
    from hardenkit.data import load_image_folder

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.tensor([0, 3, 9, 3, 0, 9])
    _write_folder(tmp_path / "train", x, y)
    back = load_image_folder(tmp_path / "train")
    assert back.classes == ("airplane", "cat", "truck")
    names = {"airplane": 0, "cat": 3, "truck": 9}
    labels = torch.tensor([names[back.classes[int(i)]] for i in back.labels])
    order = torch.argsort(labels * 100 + torch.arange(6), stable=True)
    ref = torch.argsort(y * 100 + torch.arange(6), stable=True)
    assert torch.equal(back.images[order], x[ref])
    pol = {"max_asr": 0.10, "max_ba_drop": 0.03}
    kw: dict[str, Any] = {"policy": pol}
    assert verdict(passed=True, backdoored=True, asr_after=0.02, ba_lost=0.01, **kw) == "right"
    assert verdict(passed=True, backdoored=True, asr_after=0.11, ba_lost=0.0, **kw) == "WRONG"
    assert verdict(passed=True, backdoored=True, asr_after=0.0, ba_lost=0.04, **kw) == "WRONG"
    assert verdict(passed=False, backdoored=True, asr_after=0.9, ba_lost=0.0, **kw) == (
        "right (failed closed)"
    )
    assert verdict(passed=True, backdoored=False, asr_after=None, ba_lost=0.0, **kw) == "right"
    assert verdict(passed=False, backdoored=False, asr_after=None, ba_lost=0.0, **kw) == (
        "false alarm"
    )


def test_issue16_table_roles_overrides_and_acceptance(tmp_path: Any) -> None:
    """The issue-16 table takes each role's cells from its named files (a later source wins),
    aggregates the seeds and judges the acceptance items on the worst seed."""
    import json

    from benchmarks import issue16_table as t

    def cell(fixture: str, defence: str, ba_drop: float, asr: float, der: float) -> dict[str, Any]:
        return {
            "fixture": fixture,
            "attack": fixture.split("-")[0],
            "defence": defence,
            "ba": 0.8 - ba_drop,
            "asr": asr,
            "ra": 0.5,
            "der": der,
            "ba_drop": ba_drop,
            "seconds": 10.0,
            "status": "purified",
        }

    def write(name: str, cells: list[dict[str, Any]]) -> None:
        (tmp_path / f"{name}.json").write_text(json.dumps({"details": cells}))

    write(
        "purify_cpu_default_s52",
        [
            cell("badnets-0.1", "auto-quick", 0.010, 0.010, 0.97),
            cell("badnets-0.1-s1", "auto-quick", 0.012, 0.030, 0.94),
            cell("sig-0.1", "auto-quick", -0.01, 0.001, 0.99),
            cell("sig-0.1-s1", "auto-quick", 0.005, 0.002, 0.99),
            cell("badnets-0.1", "none", 0.0, 0.95, 0.5),
        ],
    )
    write(
        "purify_cpu_checked_mcl",
        [
            cell("sig-0.1", "auto-quick-miss-cmcl", 0.0, 0.5, 0.7),
            cell("sig-0.1-s1", "auto-quick-miss-cmcl", 0.0, 0.5, 0.7),
        ],
    )
    # a later source overrides an earlier one: stop 51's re-measured cells win
    write(
        "purify_cpu_signal_miss",
        [
            cell("sig-0.1", "auto-quick-miss", -0.01, 0.001, 0.99),
            cell("sig-0.1-s1", "auto-quick-miss", 0.005, 0.002, 0.99),
            cell("badnets-0.1", "auto-quick-cmcl", 0.5, 0.5, 0.1),  # another defence: ignored
        ],
    )
    write(
        "purify_cpu_d3_head",
        [
            cell("badnets-0.1", "d3-0.5", 0.02, 0.04, 0.95),
            cell("badnets-0.1-s1", "d3-0.5", 0.031, 0.01, 0.95),
        ],
    )
    table = t.build(tmp_path)
    rows = {(r["family"], r["attack"], r["role"]): r for r in table["rows"]}
    bad = rows[("cifar-cnn", "badnets", "default")]
    assert bad["seeds"] == 2
    assert bad["mean BA drop"] == pytest.approx(1.1)
    assert bad["worst ASR %"] == pytest.approx(3.0)
    assert bad["worst DER %"] == pytest.approx(94.0)
    sig = rows[("cifar-cnn", "sig", "default, scan misses")]
    assert sig["sources"] == "purify_cpu_signal_miss"
    assert sig["worst ASR %"] == pytest.approx(0.2)
    assert rows[("cifar-cnn", "sig", "default")]["sources"] == "purify_cpu_default_s52"
    acc = {(a["item"], a["family"], a["attack"]): a["met"] for a in table["acceptance"]}
    assert acc[("default: DER >= 95", "cifar-cnn", "badnets")] is False  # 94.0 on seed 1
    assert acc[("default: DER >= 95", "cifar-cnn", "sig")] is True
    # worst drop 3.1 points: D3's aim (<= 3) is missed although the mean (2.55) is within it
    assert acc[("D3 default: ASR <= 5 %, drop <= 3", "cifar-cnn", "badnets")] is False
    assert acc[("some strategy: ASR <= 2 %, drop <= 1.5", "cifar-cnn", "sig")] is True
    assert "purify_cpu_cifar_cnn_seeds" in table["missing_files"]
    assert "mcl / badnets-0.1" in table["missing_cells"]
    assert "## Acceptance" in t.markdown(table)


def test_scan_detail_table_lists_the_labels_no_inversion_reached() -> None:
    from benchmarks.scan_detail_table import summarise

    def row(model: str, det: str, label: int, reached: bool | None, rate: float | None) -> dict:
        return {"model": model, "detector": det, "label": label, "reached": reached,
                "attack rate": rate}  # fmt: skip

    rows = [
        row("m", "signal", 0, False, 0.764),
        row("m", "signal", 1, True, 1.0),
        row("m", "neural-cleanse", 0, True, 1.0),
        row("m", "neural-cleanse", 1, True, 1.0),
        row("m", "prediction-share", 0, None, None),
        row("c", "signal", 0, True, 1.0),
        row("c", "signal", 1, False, 0.5),
    ]
    table = summarise(rows, {"m": 0, "c": None})
    by = {(r["model"], r["detector"]): r for r in table}
    assert ("m", "prediction-share") not in by  # inverts nothing
    assert by[("m", "signal")]["which"] == [0]
    assert by[("m", "signal")]["target not reached"] is True
    assert by[("m", "signal")]["their attack rates"] == [0.76]
    assert by[("m", "neural-cleanse")]["labels not reached"] == 0
    assert by[("m", "neural-cleanse")]["target not reached"] is False
    assert by[("c", "signal")]["target"] == "clean"
    assert by[("c", "signal")]["target not reached"] is None


def test_trigger_floor_compares_repairs_with_the_clean_models_rate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from benchmarks import trigger_floor

    floors = [
        {"model": "weak", "asr": 0.7374, "floor": 0.0187, "der_max": 0.8687},
        {"model": "full", "asr": 1.0, "floor": 0.03, "der_max": 1.0},
    ]

    def repair(model: str, defence: str, asr: float) -> dict[str, Any]:
        return {"model": model, "defence": defence, "asr": asr, "ba_drop": 0.01, "der": 0.5,
                "status": "purified"}  # fmt: skip

    old = [repair("weak", "default", 0.5), repair("full", "none", 1.0)]
    new = [repair("weak", "default", 0.1302), repair("full", "default", 0.01),
           repair("other", "default", 0.0)]  # fmt: skip
    (tmp_path / "old.json").write_text(json.dumps({"rows": old}))
    (tmp_path / "new.json").write_text(json.dumps({"rows": new}))
    monkeypatch.setattr(trigger_floor, "RESULTS", tmp_path)
    rows = trigger_floor.compare(floors, ["old", "new"])
    by = {(r["model"], r["defence"]): r for r in rows}
    assert set(by) == {("weak", "default"), ("full", "default")}  # no "none", no unknown model
    weak = by[("weak", "default")]
    assert weak["source"] == "new"  # a later file wins
    assert weak["excess"] == pytest.approx(11.15)
    assert weak["removed %"] == pytest.approx(100 * (0.7374 - 0.1302) / (0.7374 - 0.0187))
    assert weak["DER max %"] == pytest.approx(86.87)
    assert by[("full", "default")]["removed %"] == 100.0  # below the floor: capped
    assert by[("full", "default")]["excess"] == pytest.approx(-2.0)
