"""Readable evidence figures drawn with Pillow only (no matplotlib).

:func:`trigger_figure` shows a recovered trigger as labelled panels; :func:`anomaly_chart`
shows one detector's per-label statistic as a bar chart with the flagged labels in red and
the median and threshold lines. :meth:`ScanResult.save <hardenkit.scan.ScanResult.save>`
writes both; reports can reuse them.

Example:
    >>> import torch, hardenkit as hk
    >>> from hardenkit.scan.figures import anomaly_chart, trigger_figure
    >>> mask = torch.zeros(32, 32); mask[-4:, -4:] = 1
    >>> img = trigger_figure(hk.MaskPatternTrigger(mask, torch.ones(3, 32, 32)), None, label=1)
    >>> img.size[1]
    128
    >>> chart = anomaly_chart([0, 1, 2, 3], [20.0, 3.0, 21.0, 19.0], [0.1, 11.2, 0.5, 0.4],
    ...                       [1], 2.0, "neural-cleanse: mask_l1 per label")
    >>> chart.mode
    'RGB'
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ..triggers import Trigger
from .anomaly import log_values, mad_anomaly

if TYPE_CHECKING:
    from .scanner import DetectorReport

__all__ = [
    "anomaly_chart",
    "detector_chart",
    "detector_chart_spec",
    "figure_name",
    "reference_lines",
    "trigger_figure",
    "trigger_panels",
    "trigger_title",
]

_WHITE = (255, 255, 255)
_BLACK = (0, 0, 0)
_TEXT = (30, 30, 30)
_MUTED = (110, 110, 110)
_FRAME = (160, 160, 160)
_GRID = (225, 225, 225)
_BAR = (76, 120, 168)
_FLAGGED = (214, 39, 40)
_THRESHOLD = (230, 120, 0)

_PANEL_TARGET = 96
"""Panels are upscaled (nearest neighbour) by the integer factor closest to this height."""
_STRIP = 16
"""Height of the title and label text strips (the default font is about 11 px tall)."""
_GAP = 6
_MARGIN = 4


def _font() -> Any:
    """Pillow's built-in bitmap font (Latin-1; ``load_default`` on Pillow < 10.1)."""
    loader = getattr(ImageFont, "load_default_imagefont", None)
    return loader() if loader is not None else ImageFont.load_default()


def _safe(text: str) -> str:
    """Characters the bitmap font can draw (Latin-1), others as ``?``."""
    return text.encode("latin-1", "replace").decode("latin-1")


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: Any) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), _safe(text), font=font)
    return math.ceil(right - left), math.ceil(bottom - top)


def _text_width(text: str, font: Any) -> int:
    return _text_size(ImageDraw.Draw(Image.new("RGB", (1, 1))), text, font)[0]


def _to_rgb(t: Tensor) -> Tensor:
    """(C, H, W) or (H, W) in [0, 1] -> (3, H, W)."""
    t = t.detach().float().cpu()
    if t.ndim == 2:
        t = t.unsqueeze(0)
    if t.shape[0] == 1:
        t = t.expand(3, *t.shape[1:])
    return t[:3].clamp(0, 1)


def _to_pil(t: Tensor, scale: int) -> Image.Image:
    arr = (_to_rgb(t).permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    img = Image.fromarray(arr)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    return img


def _image_shape(tensors: dict[str, Tensor], example: Tensor | None) -> tuple[int, int, int]:
    if example is not None:
        c, h, w = example.shape[-3:]
        return int(c), int(h), int(w)
    for t in tensors.values():
        if t.ndim == 3 and min(t.shape[-2:]) >= 8:
            return int(t.shape[0]), int(t.shape[1]), int(t.shape[2])
    return 3, 32, 32


def trigger_figure(
    trigger: Trigger,
    example: Tensor | None = None,
    *,
    label: int | None = None,
    mask_l1: float | None = None,
    asr: float | None = None,
) -> Image.Image:
    """A recovered trigger as labelled panels, upscaled with nearest neighbour.

    For a mask/pattern trigger (Neural Cleanse's form) the panels are ``mask`` (white = 1),
    ``pattern``, ``mask × pattern (stamped)`` (the pattern where the mask is on, black
    elsewhere) and ``triggered example`` (``example`` with the trigger applied; without an
    example, a mid-grey image: ``triggered grey image``). Other triggers show the clean and the
    triggered image. A title line names the label, the mask L1 norm (computed from the mask
    when not given) and the held-out attack success rate ``asr`` when known.

    Args:
        trigger: the trigger to draw.
        example: one clean image ``(C, H, W)`` in [0, 1] pixels, or ``None``.
        label: the target label, shown in the title.
        mask_l1: the mask's L1 norm in pixels (default: the sum of the mask).
        asr: the trigger's attack success rate on held-out images, in [0, 1].

    Returns:
        An RGB image; a 32×32 trigger gives panels of 96×96 and a height of 128 pixels.
    """
    panels = trigger_panels(trigger, example)
    if mask_l1 is None and panels[0][0] == "mask":
        mask_l1 = float(panels[0][1].sum())
    title = trigger_title(trigger, label=label, mask_l1=mask_l1, asr=asr)
    h = int(panels[0][1].shape[-2])

    scale = max(1, (_PANEL_TARGET + h // 2) // h)
    font = _font()
    images = [(name, _to_pil(t, scale)) for name, t in panels]
    col_w = [max(img.width, _text_width(name, font) + 8) for name, img in images]
    panel_h = h * scale
    width = max(
        2 * _MARGIN + sum(col_w) + _GAP * (len(col_w) - 1),
        2 * _MARGIN + _text_width(title, font),
    )
    height = 2 * _STRIP + panel_h
    canvas = Image.new("RGB", (width, height), _WHITE)
    draw = ImageDraw.Draw(canvas)
    _centred(draw, title, (0, 0, width, _STRIP), font, _BLACK)
    x = _MARGIN + (width - 2 * _MARGIN - sum(col_w) - _GAP * (len(col_w) - 1)) // 2
    for (name, img), cw in zip(images, col_w, strict=True):
        _centred(draw, name, (x, _STRIP, x + cw, 2 * _STRIP), font, _MUTED)
        px = x + (cw - img.width) // 2
        canvas.paste(img, (px, 2 * _STRIP))
        draw.rectangle(
            (px - 1, 2 * _STRIP - 1, px + img.width, 2 * _STRIP + img.height), outline=_FRAME
        )
        x += cw + _GAP
    return canvas


def trigger_panels(trigger: Trigger, example: Tensor | None = None) -> list[tuple[str, Tensor]]:
    """The named images :func:`trigger_figure` draws, each ``(C, H, W)`` in [0, 1].

    A mask/pattern trigger gives ``mask`` (one channel), ``pattern``, ``mask × pattern
    (stamped)`` and ``triggered example`` (or ``triggered grey image`` without ``example``);
    another trigger gives the clean and the triggered image.

    >>> import torch, hardenkit as hk
    >>> mask = torch.zeros(32, 32); mask[-4:, -4:] = 1
    >>> [n for n, _ in trigger_panels(hk.MaskPatternTrigger(mask, torch.ones(3, 32, 32)))]
    ['mask', 'pattern', 'mask × pattern (stamped)', 'triggered grey image']
    """
    tensors = trigger.tensors()
    if example is not None:
        example = example.detach().float().cpu()
        while example.ndim > 3 and example.shape[0] == 1:
            example = example[0]
    c, h, w = _image_shape(tensors, example)
    mask = tensors.get("mask")
    pattern = tensors.get("pattern")
    is_mask_pattern = (
        mask is not None
        and pattern is not None
        and pattern.ndim == 3
        and tuple(mask.shape[-2:]) == tuple(pattern.shape[-2:]) == (h, w)
    )
    base = example if example is not None else torch.full((c, h, w), 0.5)
    triggered = trigger.apply(base.unsqueeze(0))[0].detach().float().cpu().clamp(0, 1)
    panels: list[tuple[str, Tensor]] = []
    if is_mask_pattern and mask is not None and pattern is not None:
        m = mask.detach().float().cpu().clamp(0, 1).reshape(1, h, w)
        p = pattern.detach().float().cpu().clamp(0, 1)
        panels += [("mask", m), ("pattern", p), ("mask × pattern (stamped)", m * p)]
    else:
        panels.append(("clean example" if example is not None else "grey image", base))
    panels.append(
        ("triggered example" if example is not None else "triggered grey image", triggered)
    )
    return panels


def trigger_title(
    trigger: Trigger,
    *,
    label: int | None = None,
    mask_l1: float | None = None,
    asr: float | None = None,
) -> str:
    """The title line of :func:`trigger_figure`: label, trigger kind, mask L1 and ASR."""
    parts = [] if label is None else [f"label {label}"]
    parts.append(f"trigger {trigger.kind}")
    if mask_l1 is not None:
        parts.append(f"mask L1 {mask_l1:.1f} px")
    if asr is not None:
        parts.append(f"held-out ASR {100 * asr:.1f}%")
    return " · ".join(parts)


def _centred(
    draw: ImageDraw.ImageDraw,
    text: str,
    box: tuple[int, int, int, int],
    font: Any,
    fill: tuple[int, int, int],
) -> None:
    text = _safe(text)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = box[0] + (box[2] - box[0] - (right - left)) / 2 - left
    y = box[1] + (box[3] - box[1] - (bottom - top)) / 2 - top
    draw.text((x, y), text, font=font, fill=fill)


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    span = hi - lo
    if span <= 0 or not math.isfinite(span):
        return [lo]
    raw = span / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    ticks = []
    v = start
    while v <= hi + 1e-9 * span:
        ticks.append(0.0 if abs(v) < 1e-12 * span else v)
        v += step
    return ticks


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.2e}"


def _dashed_hline(
    draw: ImageDraw.ImageDraw, x0: int, x1: int, y: int, fill: tuple[int, int, int]
) -> None:
    for x in range(x0, x1, 8):
        draw.line((x, y, min(x + 4, x1), y), fill=fill, width=2)


def anomaly_chart(
    labels: Sequence[int],
    values: Sequence[float],
    anomaly_index: Sequence[float] | None,
    flagged: Collection[int],
    threshold: float | None,
    title: str,
    *,
    statistic: str = "value",
    side: Literal["low", "high"] = "low",
    log: bool = False,
    min_scale: float = 0.0,
) -> Image.Image:
    """A bar chart of one detector's per-label statistic.

    Bars of flagged labels are red, the others blue. A dashed grey line marks the median of
    ``values``; with a ``threshold`` (a MAD anomaly-index threshold, e.g. Neural Cleanse's 2)
    a dashed orange line marks the value whose anomaly index equals it, on the suspicious
    ``side`` (``median - threshold × MAD`` for ``"low"``, ``+`` for ``"high"``): bars beyond
    it are outliers. Under the label row, an ``anomaly index`` row gives each label's index
    (only the flagged labels' when there are too many labels to print them all).

    Args:
        labels: the labels, in bar order.
        values: the statistic per label (e.g. Neural Cleanse's mask L1).
        anomaly_index: the MAD anomaly index per label, or ``None``.
        flagged: the flagged labels.
        threshold: the anomaly-index threshold, or ``None`` for no threshold line.
        title: the title line.
        statistic: the y-axis label.
        side: which side of the median is suspicious.
        log: the MAD test ran on the logarithms of ``values`` (Neural Cleanse's ``log-l1``
            statistic): the lines are drawn where that test puts them, on the raw scale.
        min_scale: the floor on the MAD the detector used (the threshold line then sits at
            ``threshold × max(MAD, min_scale)`` from the median).

    Returns:
        An RGB image, at least 360 pixels wide (about 480 for up to 16 labels).
    """
    if len(labels) != len(values) or (
        anomaly_index is not None and len(anomaly_index) != len(labels)
    ):
        raise ValueError("labels, values and anomaly_index must have the same length")
    if not labels:
        raise ValueError("anomaly_chart needs at least one label")
    vals = [float(v) for v in values]
    finite = [v for v in vals if math.isfinite(v)]
    flagged_set = {int(y) for y in flagged}
    font = _font()

    median, cut = reference_lines(finite, threshold, side=side, log=log, min_scale=min_scale)
    lines = [v for v in (median, cut) if v is not None]
    lo = min([0.0, *finite, *lines])
    hi = max([0.0, *finite, *lines])
    if hi == lo:
        hi = lo + 1.0
    pad = 0.08 * (hi - lo)
    hi += pad
    lo = lo - pad if lo < 0 else lo

    n = len(labels)
    slot = max(6, min(80, 480 // n))
    plot_w = slot * n
    plot_h = 220
    ticks = _nice_ticks(lo, hi)
    index_texts = [] if anomaly_index is None else [_fmt_index(a) for a in anomaly_index]
    all_index = bool(index_texts) and slot >= 4 + max(_text_width(t, font) for t in index_texts)
    rows = ["label"] + (["anomaly index"] if index_texts else [])
    tick_w = max(_text_width(_fmt(t), font) for t in ticks)
    left = 6 + max(8 + _STRIP + 4 + tick_w, *(_text_width(r, font) + 8 for r in rows))
    side_notes = []
    if median is not None:
        side_notes.append(f"median {_fmt(median)}")
    if cut is not None:
        side_notes.append(f"threshold {_fmt(cut)}")
    right = 20 + max([0, *(_text_width(t, font) for t in side_notes)])
    legend = _legend_items(bool(flagged_set), median is not None, cut is not None, threshold)
    legend_w = sum(_text_width(t, font) + 26 for t, _ in legend) - 6
    width = max(left + plot_w + right, _text_width(title, font) + 16, legend_w + 16, 360)
    top = 6 + _STRIP + _STRIP + 8  # title, legend, gap
    bottom = 4 + _STRIP * len(rows) + 6
    height = top + plot_h + bottom

    canvas = Image.new("RGB", (width, height), _WHITE)
    draw = ImageDraw.Draw(canvas)
    _centred(draw, title, (0, 6, width, 6 + _STRIP), font, _BLACK)

    x = (width - legend_w) // 2
    ly = 6 + _STRIP + 2
    for text, (kind, colour) in legend:
        if kind == "box":
            draw.rectangle((x, ly + 3, x + 14, ly + 11), fill=colour)
        else:
            _dashed_hline(draw, x, x + 16, ly + 7, colour)
        _left_text(draw, text, x + 20, ly + 7, font, _TEXT)
        x += _text_width(text, font) + 26

    def ypix(v: float) -> int:
        return round(top + plot_h * (hi - v) / (hi - lo))

    x0, x1 = left, left + plot_w
    for t in ticks:
        y = ypix(t)
        draw.line((x0, y, x1, y), fill=_GRID)
        _right_text(draw, _fmt(t), x0 - 6, y, font, _TEXT)

    base = ypix(0.0)
    label_every = max(1, math.ceil((max(_text_width(str(y), font) for y in labels) + 4) / slot))
    flagged_pos = [i for i, y in enumerate(labels) if int(y) in flagged_set]
    shown = set(flagged_pos) | {
        i for i in range(0, n, label_every) if all(abs(i - j) >= label_every for j in flagged_pos)
    }
    row_y = [top + plot_h + 4 + k * _STRIP for k in range(len(rows))]
    for k, r in enumerate(rows):
        _right_text(draw, r, x0 - 6, row_y[k] + _STRIP // 2, font, _MUTED)
    for i, (y, v) in enumerate(zip(labels, vals, strict=True)):
        inset = max(1, slot // 6)
        bx0, bx1 = x0 + i * slot + inset, x0 + (i + 1) * slot - inset
        is_flagged = int(y) in flagged_set
        colour = _FLAGGED if is_flagged else _TEXT
        if math.isfinite(v):
            yt = ypix(v)
            draw.rectangle(
                (bx0, min(yt, base), bx1, max(yt, base)), fill=_FLAGGED if is_flagged else _BAR
            )
        cell = (x0 + i * slot, 0, x0 + (i + 1) * slot, 0)
        if i in shown:
            box = (cell[0] - slot, row_y[0], cell[2] + slot, row_y[0] + _STRIP)
            _centred(draw, str(y), box, font, colour)
        if index_texts and (all_index or is_flagged):
            box = (cell[0] - 2 * slot, row_y[1], cell[2] + 2 * slot, row_y[1] + _STRIP)
            _centred(draw, index_texts[i], box, font, _FLAGGED if is_flagged else _MUTED)

    draw.line((x0, top, x0, top + plot_h), fill=_BLACK)
    draw.line((x0, base, x1, base), fill=_BLACK)
    notes: list[tuple[int, str, tuple[int, int, int]]] = []
    if median is not None:
        notes.append((ypix(median), f"median {_fmt(median)}", _MUTED))
    if cut is not None:
        notes.append((ypix(cut), f"threshold {_fmt(cut)}", _THRESHOLD))
    for y_line, _, colour in notes:
        _dashed_hline(draw, x0, x1, y_line, colour)
    if len(notes) == 2 and abs(notes[0][0] - notes[1][0]) < 12:  # keep the two notes apart
        (ya, ta, ca), (yb, tb, cb) = sorted(notes)
        mid = (ya + yb) // 2
        notes = [(mid - 6, ta, ca), (mid + 6, tb, cb)]
    for y_note, text, colour in notes:
        _left_text(draw, text, x1 + 4, y_note, font, colour)

    axis = Image.new("RGB", (plot_h, _STRIP), _WHITE)
    _centred(ImageDraw.Draw(axis), statistic, (0, 0, plot_h, _STRIP), font, _TEXT)
    canvas.paste(axis.rotate(90, expand=True), (x0 - 6 - tick_w - 4 - _STRIP, top))
    return canvas


def reference_lines(
    values: Sequence[float],
    threshold: float | None,
    *,
    side: Literal["low", "high"] = "low",
    log: bool = False,
    min_scale: float = 0.0,
) -> tuple[float | None, float | None]:
    """The median and threshold lines of :func:`anomaly_chart`, on the raw scale.

    ``min_scale`` is the detector's floor on the MAD (on the test's scale): the threshold
    line sits at ``threshold × max(MAD, min_scale)`` from the median.

    The MAD test runs on the logarithms of ``values`` when ``log`` (Neural Cleanse's
    ``log-l1``); the lines are mapped back. Non-finite values are ignored; the threshold line
    needs at least three values and a ``threshold``.

    >>> median, cut = reference_lines([1.0, 2.0, 3.0, 10.0], 2.0, side="high")
    >>> median, round(cut, 2)  # 2.5 + 2 x 1.4826 x MAD 1
    (2.5, 5.47)
    """
    finite = [float(v) for v in values if math.isfinite(v)]
    if len(finite) < 3:
        return (sorted(finite)[len(finite) // 2] if finite else None), None
    # the test's own scale (log for Neural Cleanse's log-l1), lines drawn back on the raw one
    back = math.exp if log else float
    stats = mad_anomaly(
        log_values(finite) if log else finite,
        side=side,
        threshold=threshold or 2.0,
        min_scale=min_scale,
    )
    median = back(stats.median)
    if threshold is None:
        return median, None
    spread = threshold * stats.scale
    return median, back(stats.median - spread if side == "low" else stats.median + spread)


def _fmt_index(a: float) -> str:
    return f"{a:.1f}" if a < 1000 else ">999"


def _left_text(
    draw: ImageDraw.ImageDraw, text: str, x: int, y_mid: int, font: Any, fill: tuple[int, int, int]
) -> None:
    w, _ = _text_size(draw, text, font)
    _centred(draw, text, (x, y_mid - 8, x + w, y_mid + 8), font, fill)


def _right_text(
    draw: ImageDraw.ImageDraw, text: str, x: int, y_mid: int, font: Any, fill: tuple[int, int, int]
) -> None:
    w, _ = _text_size(draw, text, font)
    _centred(draw, text, (x - w, y_mid - 8, x, y_mid + 8), font, fill)


def _legend_items(
    flagged: bool, median: bool, cut: bool, threshold: float | None
) -> list[tuple[str, tuple[str, tuple[int, int, int]]]]:
    items: list[tuple[str, tuple[str, tuple[int, int, int]]]] = []
    if flagged:
        items.append(("flagged", ("box", _FLAGGED)))
    items.append(("not flagged" if flagged else "label", ("box", _BAR)))
    if median:
        items.append(("median", ("line", _MUTED)))
    if cut and threshold is not None:
        items.append((f"threshold: anomaly index {threshold:g}", ("line", _THRESHOLD)))
    return items


def detector_chart(report: DetectorReport) -> Image.Image | None:
    """:func:`anomaly_chart` of one detector's per-label table (``None`` without rows).

    The threshold line is drawn when the detector decides on the MAD anomaly index (Neural
    Cleanse); a p-value detector (MM-BD) shows its per-label values and median only.
    """
    spec = detector_chart_spec(report)
    return None if spec is None else anomaly_chart(**spec)


def detector_chart_spec(report: DetectorReport) -> dict[str, Any] | None:
    """The keyword arguments :func:`detector_chart` passes to :func:`anomaly_chart`.

    Other renderers (the gate's HTML report with matplotlib) draw the same chart from them:
    ``labels``, ``values``, ``anomaly_index``, ``flagged``, ``threshold``, ``title``,
    ``statistic``, ``side``, ``log`` and ``min_scale`` (the floor on the MAD, e.g. Neural
    Cleanse's ``max_median_ratio``). ``None`` when the detector has no per-label rows.
    """
    rows = list(report.classes)
    if not rows:
        return None
    mad_decides = report.p_value is None and math.isclose(
        report.evidence, report.anomaly_index, rel_tol=1e-9, abs_tol=1e-12
    )
    if mad_decides:
        decision = f"anomaly index {report.anomaly_index:.2f}, threshold {report.threshold:g}"
    elif report.p_value is not None:
        decision = f"p-value {report.p_value:.3g}"
    else:
        decision = f"evidence {report.evidence:.3g}, threshold {report.threshold:g}"
    return {
        "labels": [r.label for r in rows],
        "values": [r.value for r in rows],
        "anomaly_index": [r.anomaly_index for r in rows],
        "flagged": list(report.flagged_labels),
        "threshold": report.threshold if mad_decides else None,
        "title": f"{report.detector}: {report.statistic} per label · {report.verdict} ({decision})",
        "statistic": report.statistic,
        "side": report.suspicious_side,
        "log": str(report.info.get("statistic", "")).startswith("log-"),
        "min_scale": float(report.info.get("scale_floor") or 0.0),
    }


def figure_name(detector: str) -> str:
    """A detector's chart file name: ``anomaly_<detector>.png`` (odd characters become ``_``)."""
    return f"anomaly_{re.sub(r'[^A-Za-z0-9._-]+', '_', detector)}.png"
