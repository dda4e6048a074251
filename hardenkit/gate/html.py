"""A self-contained HTML report of a gate run, for a person to read.

:func:`html_report` renders a :class:`~hardenkit.gate.GateReport` (with the
:class:`~hardenkit.scan.ScanResult` objects of the input scan and the re-scan when given) as
one HTML file: inline CSS, every figure a ``data:image/png`` URI, no script and no external
address, so it opens offline, from a CI artifact or an e-mail attachment. Its sections, in
order: the verdict banner, the rule table, benign accuracy and attack success rates before →
after with 95 % Wilson intervals, the per-label anomaly charts of both scans, the recovered
triggers, the ONNX verification, notes, repair rounds, data counts, timings and the policy.

Figures are drawn with matplotlib when it is installed (``pip install "hardenkit[report]"``)
and with Pillow otherwise (the charts of :mod:`hardenkit.scan.figures`); the footer says which.
:meth:`GateResult.save <hardenkit.gate.GateResult.save>` writes the page as ``report.html``;
:func:`render_saved` renders it again from a saved gate directory.

Example:
    >>> from hardenkit.gate import GateReport, GateRule
    >>> from hardenkit.gate.html import html_report
    >>> from hardenkit.reports import ModelFingerprint
    >>> fp = ModelFingerprint(sha256="ab" * 32, num_parameters=1, num_tensors=1, model_class="M")
    >>> rule = GateRule(rule_id="HK-DATA-001", description="held-out images", status="pass",
    ...                 value=120.0, threshold=100.0, comparison=">=", message="120 images")
    >>> rep = GateReport(passed=True, exit_code=0, rules=[rule], policy={}, input_model=fp,
    ...                  output_model=fp, repaired=False, data={"holdout_images": 120},
    ...                  timings={"total_seconds": 1.0})
    >>> page = html_report(rep, figures="pillow")
    >>> page.startswith("<!DOCTYPE html>"), "Gate PASSED" in page, "https://" in page
    (True, True, False)
"""

from __future__ import annotations

import base64
import html
import importlib
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from PIL import Image, ImageDraw
from torch import Tensor

from ..errors import ConfigError, DataError
from ..validate.metrics import wilson_interval
from .outputs import _value

if TYPE_CHECKING:
    from ..scan import ScanResult
    from ..triggers import Trigger
    from .gate import GateReport

__all__ = ["FigureBackend", "html_report", "render_saved"]

FigureBackend = Literal["auto", "matplotlib", "pillow"]

_INPUT_COLOUR = "#9aa5b1"
_SHIPPED_COLOUR = "#2b6cb0"
_BAR_COLOUR = "#4c78a8"
_FLAGGED_COLOUR = "#d62728"
_THRESHOLD_COLOUR = "#e67800"
_MEDIAN_COLOUR = "#6e6e6e"


def _e(value: object) -> str:
    """``value`` as escaped HTML text (quotes too: safe inside attributes)."""
    return html.escape(str(value), quote=True)


# ------------------------------------------------------------------------------ rates


@dataclass(frozen=True)
class _Rate:
    """A rate measured on ``total`` images with its 95 % Wilson interval."""

    value: float | None
    low: float
    high: float
    total: int

    @classmethod
    def of(cls, value: float | None, total: int | None) -> _Rate | None:
        if value is None or not math.isfinite(value):
            return None
        n = int(total or 0)
        if n <= 0:
            return cls(value, value, value, 0)
        lo, hi = wilson_interval(round(value * n), n)
        return cls(value, lo, hi, n)

    def text(self) -> str:
        if self.value is None:
            return "n/a"
        ci = f" [{100 * self.low:.1f}, {100 * self.high:.1f}]" if self.total else ""
        return f"{100 * self.value:.2f}%{ci}"


@dataclass(frozen=True)
class _RatePair:
    """One group of the rate chart: a rate on the input and on the shipped model."""

    name: str
    kind: Literal["ba", "asr"]
    before: _Rate | None
    after: _Rate | None


def _rate_pairs(report: GateReport) -> list[_RatePair]:
    n_hold = report.data.get("holdout_images")
    n = int(n_hold) if isinstance(n_hold, int | float) else 0
    pairs: list[_RatePair] = []
    if report.input_ba is not None or report.output_ba is not None:
        after = _Rate.of(report.output_ba, n)
        if after is not None and report.output_ba_ci is not None and n > 0:
            lo, hi = report.output_ba_ci
            after = _Rate(after.value, lo, hi, n)
        pairs.append(_RatePair("benign accuracy", "ba", _Rate.of(report.input_ba, n), after))
    for m in report.triggers:
        pairs.append(
            _RatePair(
                f"ASR · {m.source} · label {m.label}",
                "asr",
                _Rate.of(m.input_asr, m.images),
                _Rate.of(m.output_asr, m.images),
            )
        )
    return pairs


# ---------------------------------------------------------------------------- drawing


class _Drawer(Protocol):
    name: str

    def rates(
        self, pairs: Sequence[_RatePair], max_asr: float | None, min_ba: float | None
    ) -> bytes:
        """PNG of the before → after bar chart with 95 % intervals."""

    def anomaly(self, spec: dict[str, Any]) -> bytes:
        """PNG of one detector's per-label chart (``detector_chart_spec``)."""

    def trigger(
        self,
        trigger: Trigger,
        example: Tensor | None,
        *,
        label: int,
        mask_l1: float | None,
        asr: float | None,
    ) -> bytes:
        """PNG of a recovered trigger's panels."""


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


class _PillowDrawer:
    """The Pillow charts of :mod:`hardenkit.scan.figures` plus a rate chart drawn here."""

    name = "pillow"

    def anomaly(self, spec: dict[str, Any]) -> bytes:
        from ..scan.figures import anomaly_chart

        return _png(anomaly_chart(**spec))

    def trigger(
        self,
        trigger: Trigger,
        example: Tensor | None,
        *,
        label: int,
        mask_l1: float | None,
        asr: float | None,
    ) -> bytes:
        from ..scan.figures import trigger_figure

        return _png(trigger_figure(trigger, example, label=label, mask_l1=mask_l1, asr=asr))

    def rates(
        self, pairs: Sequence[_RatePair], max_asr: float | None, min_ba: float | None
    ) -> bytes:
        from ..scan import figures as f

        font = f._font()
        colours = {"input": (154, 165, 177), "shipped": (43, 108, 176)}
        slot, bar_w, plot_h, strip = 150, 40, 220, f._STRIP
        left, right = 64, 24
        top = 6 + 2 * strip + 8
        bottom = 6 + 3 * strip
        width = max(360, left + slot * len(pairs) + right)
        height = top + plot_h + bottom
        canvas = Image.new("RGB", (width, height), f._WHITE)
        draw = ImageDraw.Draw(canvas)
        title = "input model -> shipped model on held-out images (95% Wilson intervals)"
        f._centred(draw, title, (0, 6, width, 6 + strip), font, f._BLACK)

        legend: list[tuple[str, str, tuple[int, int, int]]] = [
            ("input model", "box", colours["input"]),
            ("shipped model", "box", colours["shipped"]),
        ]
        if max_asr is not None and any(p.kind == "asr" for p in pairs):
            legend.append((f"max_asr {100 * max_asr:g}%", "line", f._THRESHOLD))
        if min_ba is not None and any(p.kind == "ba" for p in pairs):
            legend.append((f"min_ba {100 * min_ba:g}%", "line", f._THRESHOLD))
        legend_w = sum(f._text_width(t, font) + 26 for t, _, _ in legend) - 6
        x = (width - legend_w) // 2
        ly = 6 + strip + 2
        for text, kind, colour in legend:
            if kind == "box":
                draw.rectangle((x, ly + 3, x + 14, ly + 11), fill=colour)
            else:
                f._dashed_hline(draw, x, x + 16, ly + 7, colour)
            f._left_text(draw, text, x + 20, ly + 7, font, f._TEXT)
            x += f._text_width(text, font) + 26

        def ypix(v: float) -> int:  # 12 % headroom above 100 % for the value labels
            return round(top + plot_h * (1.12 - v) / 1.12)

        x0, x1 = left, left + slot * len(pairs)
        for t in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
            draw.line((x0, ypix(t), x1, ypix(t)), fill=f._GRID)
            f._right_text(draw, f"{100 * t:.0f}%", x0 - 6, ypix(t), font, f._TEXT)
        for i, pair in enumerate(pairs):
            cx = x0 + slot * i + slot // 2
            bound = max_asr if pair.kind == "asr" else min_ba
            if bound is not None:
                f._dashed_hline(
                    draw, x0 + slot * i + 6, x0 + slot * (i + 1) - 6, ypix(bound), f._THRESHOLD
                )
            for rate, bx, colour in (
                (pair.before, cx - bar_w - 3, colours["input"]),
                (pair.after, cx + 3, colours["shipped"]),
            ):
                mid = bx + bar_w // 2
                if rate is None or rate.value is None:
                    f._centred(
                        draw, "n/a", (bx, ypix(0) - strip, bx + bar_w, ypix(0)), font, f._MUTED
                    )
                    continue
                draw.rectangle((bx, ypix(rate.value), bx + bar_w, ypix(0)), fill=colour)
                if rate.total:
                    draw.line((mid, ypix(rate.high), mid, ypix(rate.low)), fill=f._BLACK, width=2)
                    for yv in (rate.low, rate.high):
                        draw.line((mid - 6, ypix(yv), mid + 6, ypix(yv)), fill=f._BLACK, width=2)
                text_y = ypix(max(rate.high, rate.value))
                f._centred(
                    draw,
                    f"{100 * rate.value:.1f}%",
                    (bx - 8, text_y - strip, bx + bar_w + 8, text_y),
                    font,
                    f._TEXT,
                )
            rows = [*pair.name.split(" · ", 1), f"n = {_images(pair)}"]
            if len(rows) == 2:
                rows.insert(1, "")
            for k, text in enumerate(rows):
                y = top + plot_h + 4 + k * strip
                f._centred(
                    draw,
                    text,
                    (x0 + slot * i, y, x0 + slot * (i + 1), y + strip),
                    font,
                    f._TEXT if k < 2 else f._MUTED,
                )
        draw.line((x0, top, x0, ypix(0)), fill=f._BLACK)
        draw.line((x0, ypix(0), x1, ypix(0)), fill=f._BLACK)
        return _png(canvas)


def _images(pair: _RatePair) -> str:
    totals = {r.total for r in (pair.before, pair.after) if r is not None}
    return "/".join(str(t) for t in sorted(totals)) or "?"


class _MatplotlibDrawer:
    """matplotlib figures on the Agg canvas (no pyplot, no global state)."""

    name = "matplotlib"

    def __init__(self) -> None:
        self._figure = importlib.import_module("matplotlib.figure").Figure
        self._canvas = importlib.import_module("matplotlib.backends.backend_agg").FigureCanvasAgg
        self._patch = importlib.import_module("matplotlib.patches").Patch

    def _new(self, width: float, height: float) -> Any:
        fig = self._figure(figsize=(width, height), dpi=100, layout="constrained")
        self._canvas(fig)
        return fig

    @staticmethod
    def _save(fig: Any) -> bytes:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
        return buf.getvalue()

    def rates(
        self, pairs: Sequence[_RatePair], max_asr: float | None, min_ba: float | None
    ) -> bytes:
        fig = self._new(max(6.0, 1.6 * len(pairs) + 1.6), 3.8)
        ax = fig.add_subplot()
        w = 0.38
        handles = [
            self._patch(color=_INPUT_COLOUR, label="input model"),
            self._patch(color=_SHIPPED_COLOUR, label="shipped model"),
        ]
        for offset, attr, colour in (
            (-w / 2, "before", _INPUT_COLOUR),
            (w / 2, "after", _SHIPPED_COLOUR),
        ):
            for i, pair in enumerate(pairs):
                rate: _Rate | None = getattr(pair, attr)
                x = i + offset
                if rate is None or rate.value is None:
                    ax.text(x, 1, "n/a", ha="center", va="bottom", fontsize=8, color="#666")
                    continue
                err = None
                if rate.total:
                    err = [[100 * (rate.value - rate.low)], [100 * (rate.high - rate.value)]]
                ax.bar(
                    x,
                    100 * rate.value,
                    w,
                    color=colour,
                    yerr=err,
                    capsize=4,
                    error_kw={"elinewidth": 1.2, "ecolor": "#222"},
                )
                ax.text(
                    x,
                    100 * max(rate.value, rate.high) + 1.5,
                    f"{100 * rate.value:.1f}%",
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
        for i, pair in enumerate(pairs):
            bound = max_asr if pair.kind == "asr" else min_ba
            if bound is not None:
                (line,) = ax.plot(
                    [i - 0.48, i + 0.48],
                    [100 * bound, 100 * bound],
                    color=_THRESHOLD_COLOUR,
                    ls="--",
                    lw=1.4,
                    label=f"{'max_asr' if pair.kind == 'asr' else 'min_ba'} {100 * bound:g}%",
                )
                if line.get_label() not in [h.get_label() for h in handles]:
                    handles.append(line)
        ax.set_xticks(
            range(len(pairs)),
            [p.name.replace(" · ", "\n", 1) + f"\nn = {_images(p)}" for p in pairs],
            fontsize=8,
        )
        ax.set_ylim(0, 112)
        ax.set_yticks([0, 20, 40, 60, 80, 100])
        ax.set_ylabel("% of held-out images")
        ax.set_xlim(-0.6, len(pairs) - 0.4)
        ax.grid(axis="y", color="#e5e5e5")
        ax.set_axisbelow(True)
        ax.spines[["top", "right"]].set_visible(False)
        fig.legend(handles=handles, loc="outside upper center", ncols=4, fontsize=8, frameon=False)
        return self._save(fig)

    def anomaly(self, spec: dict[str, Any]) -> bytes:
        from ..scan.figures import reference_lines

        labels = [int(y) for y in spec["labels"]]
        values = [float(v) for v in spec["values"]]
        index = spec.get("anomaly_index")
        flagged = {int(y) for y in spec["flagged"]}
        threshold = spec.get("threshold")
        n = len(labels)
        fig = self._new(max(5.2, min(11.0, 0.32 * n + 2.2)), 3.6)
        ax = fig.add_subplot()
        finite = [v if math.isfinite(v) else 0.0 for v in values]
        ax.bar(
            range(n),
            finite,
            0.7,
            color=[_FLAGGED_COLOUR if y in flagged else _BAR_COLOUR for y in labels],
        )
        median, cut = reference_lines(
            values,
            threshold,
            side=spec["side"],
            log=spec["log"],
            min_scale=float(spec.get("min_scale", 0.0)),
        )
        handles = [self._patch(color=_FLAGGED_COLOUR, label="flagged")] if flagged else []
        handles.append(self._patch(color=_BAR_COLOUR, label="not flagged" if flagged else "label"))
        if median is not None:
            handles.append(
                ax.axhline(
                    median, color=_MEDIAN_COLOUR, ls="--", lw=1.2, label=f"median {median:.3g}"
                )
            )
        if cut is not None and threshold is not None:
            handles.append(
                ax.axhline(
                    cut,
                    color=_THRESHOLD_COLOUR,
                    ls="--",
                    lw=1.4,
                    label=f"threshold {cut:.3g} (anomaly index {threshold:g})",
                )
            )
        if index is not None:
            top = max([*finite, *(v for v in (median, cut) if v is not None), 0.0])
            for i, (y, a) in enumerate(zip(labels, index, strict=True)):
                if y in flagged:
                    ax.text(
                        i,
                        finite[i] + 0.02 * top,
                        f"AI {a:.1f}" if a < 1000 else "AI >999",
                        ha="center",
                        va="bottom",
                        fontsize=7,
                        color=_FLAGGED_COLOUR,
                    )
        step = max(1, math.ceil(n / 40))
        ax.set_xticks(range(0, n, step), [str(labels[i]) for i in range(0, n, step)], fontsize=8)
        ax.set_xlabel("label")
        ax.set_ylabel(str(spec["statistic"]))
        ax.set_title(str(spec["title"]).replace(" · ", "\n", 1), fontsize=9)
        ax.spines[["top", "right"]].set_visible(False)
        fig.legend(handles=handles, fontsize=7, frameon=False, loc="outside lower center", ncols=4)
        return self._save(fig)

    def trigger(
        self,
        trigger: Trigger,
        example: Tensor | None,
        *,
        label: int,
        mask_l1: float | None,
        asr: float | None,
    ) -> bytes:
        from ..scan.figures import trigger_panels, trigger_title

        panels = trigger_panels(trigger, example)
        if mask_l1 is None and panels[0][0] == "mask":
            mask_l1 = float(panels[0][1].sum())
        fig = self._new(1.9 * len(panels), 2.35)
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (name, t) in zip(axes, panels, strict=True):
            rgb = t.detach().float().cpu().clamp(0, 1)
            if rgb.shape[0] == 1:
                rgb = rgb.expand(3, *rgb.shape[1:])
            ax.imshow(rgb[:3].permute(1, 2, 0).numpy(), interpolation="nearest", vmin=0, vmax=1)
            ax.set_title(name, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(trigger_title(trigger, label=label, mask_l1=mask_l1, asr=asr), fontsize=9)
        return self._save(fig)


def _drawer(figures: str) -> _Drawer:
    if figures not in ("auto", "matplotlib", "pillow"):
        raise ConfigError(
            f"figures must be 'auto', 'matplotlib' or 'pillow', got {figures!r}.",
            hint="'auto' uses matplotlib when it is installed, Pillow otherwise",
        )
    if figures == "pillow":
        return _PillowDrawer()
    try:
        return _MatplotlibDrawer()
    except ImportError as exc:
        if figures == "matplotlib":
            raise ModuleNotFoundError(
                "figures='matplotlib' needs matplotlib, which is not installed. "
                'Install it with: pip install "hardenkit[report]" (or use figures="auto")'
            ) from exc
        return _PillowDrawer()


def _img(png: bytes, alt: str, css: str = "") -> str:
    data = base64.b64encode(png).decode("ascii")
    cls = f' class="{css}"' if css else ""
    return f'<img{cls} alt="{_e(alt)}" src="data:image/png;base64,{data}">'


# ------------------------------------------------------------------------------ page

_CSS = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  sans-serif; color: #1f2328; background: #f6f8fa; margin: 0; line-height: 1.45; }
main { max-width: 1100px; margin: 0 auto; padding: 20px 24px 40px; background: #fff; }
h1 { font-size: 1.7rem; margin: 0 0 4px; }
h2 { font-size: 1.2rem; margin: 28px 0 8px; padding-bottom: 4px; border-bottom: 1px solid #d0d7de; }
h3 { font-size: 1rem; margin: 16px 0 6px; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font-size: 0.88em; }
.banner { border-radius: 8px; padding: 14px 18px; color: #fff; }
.banner.pass { background: #1a7f37; }
.banner.fail { background: #cf222e; }
.banner p { margin: 2px 0; }
.banner code { background: rgba(255,255,255,.18); padding: 0 4px; border-radius: 3px; }
table { border-collapse: collapse; width: 100%; font-size: 0.9rem; }
th, td { text-align: left; vertical-align: top; padding: 5px 8px;
  border-bottom: 1px solid #e6e8eb; }
th { background: #f6f8fa; font-weight: 600; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
.desc { color: #57606a; font-size: 0.85em; }
.badge { display: inline-block; min-width: 56px; text-align: center; border-radius: 10px;
  padding: 0 8px; font-size: 0.8rem; font-weight: 600; color: #fff; }
.badge.pass, .verdict.clean { background: #1a7f37; }
.badge.fail, .verdict.backdoored { background: #cf222e; }
.badge.skipped { background: #8c959f; }
.verdict { display: inline-block; border-radius: 10px; padding: 0 8px; color: #fff;
  font-weight: 600; font-size: 0.85rem; }
.verdict.suspicious { background: #bf8700; }
tr.fail td { background: #fff5f5; }
figure { margin: 10px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #e6e8eb; }
figcaption { color: #57606a; font-size: 0.85rem; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(460px, 1fr)); gap: 12px; }
.muted { color: #57606a; }
.kv { width: auto; }
.kv th { width: 220px; }
footer { margin-top: 32px; color: #57606a; font-size: 0.85rem; border-top: 1px solid #d0d7de;
  padding-top: 8px; }
details summary { cursor: pointer; color: #57606a; }
"""


def _sha(sha: str) -> str:
    return f'<code title="{_e(sha)}">{_e(sha[:12])}</code>'


def _banner(report: GateReport) -> str:
    failed = report.failed_rules
    head = "Gate PASSED" if report.passed else "Gate FAILED"
    detail = (
        f"all {len(report.rules)} rules passed"
        if not failed
        else f"{len(failed)} of {len(report.rules)} rules failed: "
        + ", ".join(r.rule_id for r in failed)
    )
    if report.repaired:
        repaired = (
            f"repaired with <code>{_e(report.strategy)}</code>, status "
            f"<code>{_e(report.purification_status)}</code>"
        )
    else:
        repaired = "not repaired: the input model is the one that would ship"
    return (
        f'<header class="banner {"pass" if report.passed else "fail"}">'
        f"<h1>{head}</h1>"
        f"<p><strong>{_e(detail)}</strong> · exit code {report.exit_code}</p>"
        f"<p>input model {_sha(report.input_model.sha256)} → shipped model "
        f"{_sha(report.output_model.sha256)} · {repaired}</p>"
        f"<p>report <code>{_e(report.report_id)}</code> · {_e(report.created_at)}</p>"
        "</header>"
    )


def _rules(report: GateReport) -> str:
    rows = []
    for r in report.rules:
        threshold = ""
        if r.threshold is not None:
            threshold = f"{_e(r.comparison or '')} {_e(_value(r.threshold, r.rule_id))}"
        cause = f' <span class="desc">(cause: {_e(r.cause)})</span>' if r.cause else ""
        rows.append(
            f'<tr class="{_e(r.status)}" id="{_e(r.rule_id.lower())}">'
            f'<td><code>{_e(r.rule_id)}</code><div class="desc">{_e(r.description)}</div></td>'
            f'<td><span class="badge {_e(r.status)}">{_e(r.status)}</span></td>'
            f'<td class="num">{_e(_value(r.value, r.rule_id))}</td>'
            f'<td class="num">{threshold}</td>'
            f"<td>{_e(r.message)}{cause}</td></tr>"
        )
    return (
        "<h2>Rules</h2><table><thead><tr><th>rule</th><th>status</th><th>value</th>"
        "<th>threshold</th><th>message</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _measurements(report: GateReport, draw: _Drawer) -> str:
    pairs = _rate_pairs(report)
    out = ["<h2>Benign accuracy and attack success rates</h2>"]
    n_hold = report.data.get("holdout_images", "?")
    if not pairs:
        out.append(
            f'<p class="muted">Nothing was measured on the {_e(n_hold)} held-out images.</p>'
        )
        return "".join(out)
    max_asr = report.policy.get("max_asr")
    min_ba = report.policy.get("min_ba")
    png = draw.rates(
        pairs,
        float(max_asr) if isinstance(max_asr, int | float) else None,
        float(min_ba) if isinstance(min_ba, int | float) else None,
    )
    out.append(
        "<figure>"
        + _img(png, "bar chart: benign accuracy and attack success rates, input and shipped model")
        + f"<figcaption>Measured on {_e(n_hold)} held-out images; whiskers are 95 % Wilson "
        "intervals. An ASR counts the non-target images the trigger sends to its label "
        "(n = those images).</figcaption></figure>"
    )
    rows = "".join(
        f"<tr><td>{_e(p.name)}</td>"
        f'<td class="num">{_e(p.before.text() if p.before else "n/a")}</td>'
        f'<td class="num">{_e(p.after.text() if p.after else "n/a")}</td>'
        f'<td class="num">{_e(_images(p))}</td></tr>'
        for p in pairs
    )
    out.append(
        "<table><thead><tr><th>measurement</th><th>input model [95 % CI]</th>"
        "<th>shipped model [95 % CI]</th><th>images</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )
    floors = [m for m in report.triggers if m.output_asr_without_trigger is not None]
    if floors:
        out.append(
            "<p>Without the trigger, on the same images, the shipped model predicts: "
            + "; ".join(
                f"label {m.label} for {100 * (m.output_asr_without_trigger or 0.0):.2f} % "
                f"({_e(m.source)})"
                for m in floors
            )
            + " — the floor under each ASR (what the model does with no trigger at all).</p>"
        )
    if report.class_accuracy:
        worst = sorted(report.class_accuracy, key=lambda c: c.drop, reverse=True)
        shown = worst[:_MAX_CLASS_ROWS]
        more = len(worst) - len(shown)
        class_rows = "".join(
            f'<tr><td>{c.label}</td><td class="num">{c.images}</td>'
            f'<td class="num">{100 * c.before:.2f} %</td>'
            f'<td class="num">{100 * c.after:.2f} %</td>'
            f'<td class="num">{100 * (c.after - c.before):+.2f}</td></tr>'
            for c in shown
        )
        out.append(
            "<h3>Per class</h3><table><thead><tr><th>class</th><th>images</th>"
            "<th>input model</th><th>shipped model</th><th>change (points)</th></tr></thead>"
            f"<tbody>{class_rows}</tbody></table>"
            + (
                f'<p class="muted">{more} more classes lost less (gate.json, class_accuracy).</p>'
                if more
                else ""
            )
        )
    return "".join(out)


_MAX_CLASS_ROWS = 12
"""Classes the HTML report lists, largest drop first (all of them are in gate.json)."""


def _verdict(verdict: object) -> str:
    v = _e(verdict)
    return f'<span class="verdict {v}">{v}</span>'


def _scans(
    report: GateReport,
    scan: ScanResult | None,
    rescan: ScanResult | None,
    draw: _Drawer,
    earlier: Sequence[tuple[int, ScanResult]] = (),
) -> str:
    from ..scan.figures import detector_chart_spec
    from .gate import _scan_summary

    out = [
        "<h2>Scans: per-label anomaly</h2>",
        '<p class="muted">Each detector\'s statistic per label. Flagged labels are red; the '
        "dashed grey line is the median, the dashed orange line the threshold (the value whose "
        "MAD anomaly index equals the detector's threshold, for detectors that decide on "
        "it).</p>",
    ]
    columns = []
    # a re-scan that started another repair round judged that round's model, not the one that
    # ships: shown between the input scan and the last re-scan (stop 58)
    panels: list[tuple[str, dict[str, Any] | None, ScanResult | None]] = [
        ("Scan of the input model", report.input_scan, scan),
        *(
            (f"Re-scan after repair round {rnd} (started round {rnd + 1})", _scan_summary(r), r)
            for rnd, r in earlier
        ),
        ("Re-scan of the repaired model", report.rescan, rescan),
    ]
    for title, summary, result in panels:
        if summary is None and result is None:
            continue
        col = [f"<h3>{_e(title)}</h3>"]
        if summary is not None:
            flagged = summary.get("flagged_labels") or []
            score = summary.get("score")
            score_txt = f"{score:.3f}" if isinstance(score, int | float) else "?"
            conclusive = (
                "" if summary.get("conclusive", True) else " · <strong>not conclusive</strong>"
            )
            col.append(
                f"<p>verdict {_verdict(summary.get('verdict'))} · score {_e(score_txt)} · "
                f"flagged labels {_e(flagged or 'none')} · detectors "
                f"{_e(', '.join(map(str, summary.get('detectors') or [])) or '-')}{conclusive}</p>"
            )
        if result is None:
            col.append(
                '<p class="muted">Per-label charts need the scan itself (GateResult.save and '
                "render_saved pass it).</p>"
            )
        else:
            charts = 0
            for det in result.report.detectors:
                spec = detector_chart_spec(det)
                if spec is None:
                    continue
                charts += 1
                col.append(
                    "<figure>"
                    + _img(draw.anomaly(spec), f"{det.detector}: {det.statistic} per label")
                    + "</figure>"
                )
            if not charts:
                col.append('<p class="muted">This scan has no per-label table.</p>')
        columns.append("<div>" + "".join(col) + "</div>")
    if columns:
        out.append('<div class="grid">' + "".join(columns) + "</div>")
    else:
        out.append('<p class="muted">No scan ran.</p>')
    return "".join(out)


def _triggers(
    scan: ScanResult | None,
    rescan: ScanResult | None,
    draw: _Drawer,
    earlier: Sequence[tuple[int, ScanResult]] = (),
) -> str:
    out = ["<h2>Recovered triggers</h2>"]
    figs = []
    sources = [
        ("input scan", scan),
        *((f"re-scan after round {rnd}", r) for rnd, r in earlier),
        ("re-scan", rescan),
    ]
    for source, result in sources:
        if result is None:
            continue
        mask_l1 = {c.label: c.mask_l1 for c in result.report.classes}
        for label, trig in result.triggers.items():
            png = draw.trigger(
                trig,
                result.example,
                label=label,
                mask_l1=mask_l1.get(label),
                asr=result.trigger_asr(label),
            )
            figs.append(
                "<figure>"
                + _img(png, f"recovered trigger of label {label} ({source})")
                + f"<figcaption>{_e(source)}: label {label}, recovered "
                f"{_e(trig.kind)} trigger (ASR measured by the scan on its held-out "
                "images)</figcaption></figure>"
            )
    if figs:
        out.append('<div class="grid">' + "".join(figs) + "</div>")
    elif scan is None and rescan is None:
        out.append('<p class="muted">The scans were not passed to the renderer.</p>')
    else:
        out.append('<p class="muted">No scan recovered a trigger for a flagged label.</p>')
    return "".join(out)


def _pct(v: object) -> str:
    return f"{100 * v:.2f}%" if isinstance(v, int | float) else "n/a"


def _onnx(report: GateReport) -> str:
    out = ["<h2>ONNX export</h2>"]
    info = report.onnx
    if not info:
        out.append('<p class="muted">The shipped model was not exported to ONNX.</p>')
        return "".join(out)
    sha = str(info.get("sha256", ""))
    line = f"<code>{_e(info.get('path', 'model.onnx'))}</code> {_sha(sha)}"
    if info.get("opset") is not None:
        line += f" · opset {_e(info['opset'])}"
    if info.get("provider"):
        ok = bool(info.get("verification_passed"))
        badge = "pass" if ok else "fail"
        line += (
            f" · verified on <code>{_e(info['provider'])}</code>: "
            f'<span class="badge {badge}">{"parity passed" if ok else "FAILED"}</span>'
            f" · BA on ONNX Runtime {_e(_pct(info.get('onnx_ba')))} vs PyTorch "
            f"{_e(_pct(info.get('torch_ba')))}"
        )
    else:
        line += " · <strong>not verified on ONNX Runtime</strong> (see the ONNX rules)"
    out.append(f"<p>{line}</p>")
    checks = [c for c in info.get("checks") or [] if isinstance(c, dict)]
    if checks:
        rows = []
        for c in checks:
            status = "pass" if c.get("passed") else "fail"
            bound = ""
            if c.get("threshold") is not None:
                bound = f"{c.get('comparison') or ''} {_num(c['threshold'])}"
            rows.append(
                f"<tr><td><code>{_e(c.get('name', '?'))}</code></td>"
                f'<td><span class="badge {status}">{status}</span></td>'
                f'<td class="num">{_e(_num(c.get("value")))}</td>'
                f'<td class="num">{_e(bound)}</td><td>{_e(c.get("detail", ""))}</td></tr>'
            )
        is_open = "" if info.get("verification_passed") else " open"
        out.append(
            f"<details{is_open}><summary>parity checks ({len(checks)})</summary><table><thead>"
            "<tr><th>check</th><th>status</th><th>value</th><th>threshold</th><th>detail</th>"
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table></details>"
        )
    return "".join(out)


def _num(v: object) -> str:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return "n/a" if v is None else str(v)
    return f"{v:.4g}"


def _kv_table(items: Sequence[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in items)
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def _details(report: GateReport) -> str:
    out = []
    if report.notes:
        out.append(
            "<h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in report.notes) + "</ul>"
        )
    if report.repair_rounds:
        rows = "".join(
            f"<tr><td>{_e(r.get('round', '?'))}</td><td>{_e(r.get('against_labels', '?'))}</td>"
            f"<td>{_e(r.get('status', '?'))}</td><td>{_e(r.get('rescan_verdict', '-'))}</td></tr>"
            for r in report.repair_rounds
        )
        out.append(
            "<h2>Repair rounds</h2><table><thead><tr><th>round</th><th>against labels</th>"
            f"<th>status</th><th>re-scan verdict</th></tr></thead><tbody>{rows}</tbody></table>"
        )
    out.append("<h2>Data and timings</h2>")
    data = [(str(k), str(v)) for k, v in report.data.items()]
    timings = [
        (k.removesuffix("_seconds").replace("_", " "), f"{v:.1f} s")
        for k, v in report.timings.items()
    ]
    out.append('<div class="grid"><div><h3>Images</h3>' + _kv_table(data) + "</div>")
    out.append("<div><h3>Timings</h3>" + _kv_table(timings) + "</div></div>")
    policy = [(str(k), json.dumps(v)) for k, v in report.policy.items()]
    out.append("<details><summary>Deployment policy</summary>" + _kv_table(policy) + "</details>")
    return "".join(out)


def _footer(report: GateReport, draw: _Drawer) -> str:
    env = report.environment
    if draw.name == "matplotlib":
        version = getattr(importlib.import_module("matplotlib"), "__version__", "?")
        figs = f"Figures drawn with matplotlib {version}."
    else:
        figs = 'Figures drawn with Pillow (install "hardenkit[report]" for matplotlib figures).'
    return (
        f"<footer>hardenkit {_e(report.hardenkit_version)} · torch {_e(env.torch)} · "
        f"Python {_e(env.python)} · {_e(env.platform)}<br>{_e(figs)} The machine-readable "
        "decision is <code>gate.json</code> beside this file.</footer>"
    )


def html_report(
    report: GateReport,
    *,
    scan: ScanResult | None = None,
    rescan: ScanResult | None = None,
    earlier_rescans: Sequence[tuple[int, ScanResult]] = (),
    figures: FigureBackend = "auto",
) -> str:
    """One self-contained HTML page of a gate run (see the module docstring).

    Args:
        report: the gate's report (``GateResult.report`` or a loaded ``gate.json``).
        scan: the scan of the input model, for its per-label charts and recovered triggers
            (``GateResult.scan``; without it only the scan's verdict is shown).
        rescan: the re-scan of the repaired model (``GateResult.rescan``).
        earlier_rescans: ``(round, scan)`` of each re-scan that started another repair round
            (saved as ``rescan-<round>/``; only with the policy's ``max_repair_rounds`` > 1).
        figures: ``auto`` (matplotlib when installed, Pillow otherwise), ``matplotlib`` or
            ``pillow``.

    Returns:
        The HTML text: inline CSS, images as ``data:`` URIs, no script, no external address;
        every string from the report is escaped.

    Raises:
        ConfigError: ``figures`` is not one of the three values.
        ModuleNotFoundError: ``figures="matplotlib"`` without matplotlib installed.
    """
    draw = _drawer(figures)
    title = f"hardenkit gate {'PASSED' if report.passed else 'FAILED'} · {report.report_id[:12]}"
    body = "".join(
        (
            _banner(report),
            _rules(report),
            _measurements(report, draw),
            _scans(report, scan, rescan, draw, earlier_rescans),
            _triggers(scan, rescan, draw, earlier_rescans),
            _onnx(report),
            _details(report),
            _footer(report, draw),
        )
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "img-src data:; style-src 'unsafe-inline'\">"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )


def render_saved(directory: str | Path, *, figures: FigureBackend = "auto") -> str:
    """:func:`html_report` of a directory written by ``GateResult.save``.

    Reads ``gate.json`` and the scans in ``scan/``, ``rescan-<round>/`` and ``rescan/`` (when
    present). A loaded scan has no clean example image: its triggers are stamped on a grey
    image.

    Raises:
        DataError: ``gate.json`` is missing or not a gate report.
    """
    from ..scan import ScanResult
    from .gate import GateReport

    d = Path(directory)
    path = d / "gate.json"
    if not path.is_file():
        raise DataError(f"{path} not found.", hint="pass a directory written by GateResult.save")
    try:
        report = GateReport.model_validate_json(path.read_text())
    except ValueError as exc:
        raise DataError(f"{path} is not a valid gate report: {exc}") from exc
    scans = {
        name: ScanResult.load(d / name) if (d / name / "report.json").is_file() else None
        for name in ("scan", "rescan")
    }
    earlier = []
    for sub in d.glob("rescan-*"):
        rnd = sub.name.removeprefix("rescan-")
        if rnd.isdigit() and (sub / "report.json").is_file():
            earlier.append((int(rnd), ScanResult.load(sub)))
    return html_report(
        report,
        scan=scans["scan"],
        rescan=scans["rescan"],
        earlier_rescans=sorted(earlier, key=lambda item: item[0]),
        figures=figures,
    )
