"""Report figures that separate what matters: one colour per method, one line style per variant.

A reader compares methods, then asks whether a method's choice of weights mattered (its sanity
checks) and whether a ticket beats its controls. So every figure here follows the same rules:

- a method keeps one colour in every figure (`Styles`: a colour-blind-safe palette, Paul Tol's
  "muted", assigned from the method's name, so two reports of the same methods agree);
- a variant of a method (a sanity check such as "shuffle", a control such as "control=reinit", a
  structure) keeps one line style and marker; no two legend entries share colour and style;
- sanity checks get their own small multiples (`sanity_figure`), so the accuracy figure shows
  methods only (the adapter in `report.py` decides which curves go where);
- legends sit outside the axes; mean ± std bands are clipped to the metric's range; log-scale
  remaining-weight ticks sit at the measured points and labels that would collide are dropped
  after drawing (`thin_tick_labels`).

Contract (for `report.py`, `secateurs report --html` and the benchmarks): each `*_figure` function
takes plain data (`Panel`, `Curve`, `Stat`; fractions, not percent) and returns a matplotlib
`Figure`, or None when there is nothing to draw; it never shows, saves or closes it. Then
`save(fig, path)` writes `path` (PNG) and the SVG beside it atomically and closes the figure, and
`svg_text(fig)` returns one self-contained `<svg>` element (text as paths, no external references)
for inlining in HTML, leaving the figure open. Figures use matplotlib's Agg backend. A caller that
draws more on a returned figure (a benchmark's reference band) calls `legend_outside` and
`thin_tick_labels` again before saving; `Styles.line(method, variant).kwargs()` styles its own plots.
"""

from __future__ import annotations

import io
import math
import os
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from secateurs.core.errors import ConfigError
from secateurs.core.fileio import save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

STRONG = (
    "#332288",  # indigo
    "#44AA99",  # teal
    "#117733",  # green
    "#999933",  # olive
    "#CC6677",  # rose
    "#882255",  # wine
    "#AA4499",  # purple
)
PALE = ("#88CCEE", "#DDCC77")  # cyan, sand: faint as thin lines on white, so handed out last
PALETTE = STRONG + PALE
"""Paul Tol's colour-blind-safe "muted" scheme (without its pale grey, kept for missing data)."""

DENSE_STYLE: dict[str, Any] = {"color": "black", "linestyle": "--", "linewidth": 1.2}
"""The dense reference: black and dashed, a colour no method gets."""

FILLS = ("full", "none", "left", "top", "right", "bottom")
"""Marker fills that tell apart methods beyond the palette's size (a second round of colours)."""
HATCHES = dict(zip(FILLS, (None, "//", "\\\\", "..", "xx", "--"), strict=True))
"""What a bar of each fill round carries instead of a marker fill."""

VARIANT_STYLES: dict[str | None, tuple[str, str]] = {
    None: ("-", "o"),  # the method itself (and a ticket)
    "shuffle": ("--", "s"),
    "invert": (":", "v"),
    "reinit": ("-.", "^"),
    "random_labels": ("--", "D"),
    "random_pixels": (":", "P"),
    "random_mask": ("--", "X"),
    "finetune_only": (":", "d"),
}
"""Line style and marker of known variants; "control=reinit" is drawn like "reinit"."""

SPARE_STYLES = tuple((ls, m) for ls in ("-.", "--", ":", "-") for m in ("<", ">", "p", "h", "*", "H", "8"))
"""Styles for variants not named above (filled markers, so a hollow fill still tells methods apart),
handed out in sorted order of the variants' names."""

VARIANT_SEPARATOR = " · "
"""A recipe named "ADMM · N:M 2:4" is the variant "N:M 2:4" of the method "ADMM" (`method_variant`)."""

RANGE_PERCENT = (0.0, 100.0)


@dataclass(frozen=True)
class Stat:
    """A mean ± std over seeds (fractions for accuracy: 0.9 is 90 %)."""

    mean: float
    std: float = 0.0


@dataclass
class Curve:
    """One line: `points` are (x, stat) with x the remaining weights as a fraction (or any x)."""

    method: str
    variant: str | None = None
    points: list[tuple[float, Stat]] = field(default_factory=list)


@dataclass
class Panel:
    """One axes: a title, its curves and the dense reference (a horizontal line) if known."""

    title: str
    curves: list[Curve]
    dense: Stat | None = None


@dataclass
class TicketPanel:
    """One column of the ticket figure: the metric per level and the early-stop step per level."""

    title: str
    method: str
    metric: list[Curve]
    steps: list[Curve]
    dense: Stat | None = None
    latest_step: float | None = None  # the step bands' upper bound (no early stop comes later)


@dataclass(frozen=True)
class LineStyle:
    color: str
    linestyle: str
    marker: str
    fillstyle: str = "full"

    def kwargs(self) -> dict[str, Any]:
        return {
            "color": self.color,
            "linestyle": self.linestyle,
            "marker": self.marker,
            "fillstyle": self.fillstyle,
            "markersize": 5,
        }


class Styles:
    """Colour per method and line style per variant, fixed for a report's whole set of methods.

    A method's first choice of slot (colour, marker fill) comes from a checksum of its name, so it
    keeps its colour across figures and across reports; a taken slot passes to the next free one.
    Announce every method of a report up front (the constructor sorts them) so the assignment does
    not depend on the order figures are drawn in; a method not announced gets the next free slot.
    """

    def __init__(self, methods: Iterable[str] = (), variants: Iterable[str | None] = ()) -> None:
        self._methods: dict[str, tuple[str, str]] = {}
        self._variants: dict[str | None, tuple[str, str]] = dict(VARIANT_STYLES)
        self._spare = 0
        for name in sorted(set(methods)):
            self._slot(name)
        for variant in sorted({_plain(v) or "" for v in variants} - {""}):
            self.variant(variant)

    def colour(self, method: str) -> str:
        return self._slot(method)[0]

    def variant(self, variant: str | None) -> tuple[str, str]:
        """(line style, marker) of a variant; None (and "ticket") is the method itself."""
        key = _plain(variant)
        if key not in self._variants:
            if self._spare == len(SPARE_STYLES):
                raise ConfigError(
                    f"more than {len(SPARE_STYLES)} variants to tell apart in one report",
                    fix="report fewer runs at a time (secateurs report --name PATTERN)",
                )
            self._variants[key] = SPARE_STYLES[self._spare]
            self._spare += 1
        return self._variants[key]

    def line(self, method: str, variant: str | None = None) -> LineStyle:
        color, fill = self._slot(method)
        return LineStyle(color, *self.variant(variant), fill)

    def _slot(self, method: str) -> tuple[str, str]:
        if method not in self._methods:
            taken = set(self._methods.values())
            n = len(PALETTE)
            start = zlib.crc32(method.encode())  # every strong colour, then the pale, then other fills
            colours = [STRONG[(start + i) % len(STRONG)] for i in range(len(STRONG))]
            colours += [PALE[(start + i) % len(PALE)] for i in range(len(PALE))]
            order = [(colour, fill) for fill in FILLS for colour in colours]
            free = next((slot for slot in order if slot not in taken), None)
            if free is None:
                raise ConfigError(
                    f"more than {n * len(FILLS)} methods to tell apart in one report",
                    fix="report fewer runs at a time (secateurs report --name PATTERN)",
                )
            self._methods[method] = free
        return self._methods[method]


def method_variant(name: str) -> tuple[str, str | None]:
    """ "ADMM · N:M 2:4" → ("ADMM", "N:M 2:4"); a name without " · " is a method alone."""
    method, _, variant = name.partition(VARIANT_SEPARATOR)
    return (method, variant) if variant else (name, None)


def _plain(variant: str | None) -> str | None:
    """A control's series name "control=reinit" is styled like the check "reinit"."""
    if variant is None or variant == "ticket":
        return None
    return variant.removeprefix("control=")


# -- figures --------------------------------------------------------------------------------------
def accuracy_figure(
    panels: Sequence[Panel], *, styles: Styles | None = None, metric: str = "accuracy"
) -> Figure | None:
    """The metric (mean ± std band, %) against the remaining weights (log, sparser to the right),
    one axes per panel (a data set and model), one line per curve, one legend for all panels."""
    panels = [p for p in panels if p.curves or p.dense]
    if not panels:
        return None
    styles = styles or Styles(c.method for p in panels for c in p.curves)
    fig, axes = _grid(len(panels), columns=min(3, len(panels)), size=(5.0, 3.8))
    for ax, panel in zip(axes, panels, strict=False):
        _dense_line(ax, panel.dense)
        for curve in panel.curves:
            _curve(ax, curve, styles.line(curve.method, curve.variant), label=_label(curve))
        _remaining_axis(ax, [x for c in panel.curves for x, _ in c.points])
        ax.set_title(panel.title, fontsize=9)
        ax.set_ylabel(f"test {metric} (%)")
    legend_outside(fig, axes)
    return thin_tick_labels(fig)


def sanity_figure(
    panels: Sequence[Panel], *, styles: Styles | None = None, metric: str = "accuracy"
) -> Figure | None:
    """Small multiples, one axes per scored method: the method (solid) against each of its sanity
    checks, all in the method's colour; the key shows the checks' styles. None when no panel has a
    check."""
    panels = [p for p in panels if any(c.variant for c in p.curves)]
    if not panels:
        return None
    styles = styles or Styles(c.method for p in panels for c in p.curves)
    fig, axes = _grid(len(panels), columns=min(4, len(panels)), size=(3.6, 3.0))
    for ax, panel in zip(axes, panels, strict=False):
        _dense_line(ax, panel.dense)
        for curve in panel.curves:
            _curve(ax, curve, styles.line(curve.method, curve.variant), label=curve.variant or "method")
        _remaining_axis(ax, [x for c in panel.curves for x, _ in c.points])
        ax.set_title(panel.title, fontsize=8)
        ax.set_ylabel(f"test {metric} (%)", fontsize=8)
    _style_key(fig, axes, styles, [p.curves for p in panels], none_label="method (no check)")
    return thin_tick_labels(fig)


def ticket_figure(
    panels: Sequence[TicketPanel], *, styles: Styles | None = None, metric: str = "accuracy"
) -> Figure | None:
    """Ticket curves, one column per panel: the metric per level against the remaining weights (log),
    the ticket and each control in the method's colour, and below it each level's early-stop step
    (a row left out when no level recorded one)."""
    if not panels:
        return None
    styles = styles or Styles(p.method for p in panels)
    steps = any(p.steps for p in panels)
    import matplotlib.pyplot as plt

    _agg()
    fig, grid = plt.subplots(
        2 if steps else 1,
        len(panels),
        figsize=(5.5 * len(panels) + 1.8, 7 if steps else 3.8),
        squeeze=False,
        sharex="col",
        layout="constrained",
    )
    for column, panel in enumerate(panels):
        top = grid[0][column]
        _dense_line(top, panel.dense)
        for curve in panel.metric:
            _curve(top, curve, styles.line(panel.method, curve.variant), label=curve.variant or "ticket")
        xs = [x for c in panel.metric + panel.steps for x, _ in c.points]
        _remaining_axis(top, xs, label=not steps)
        top.set_title(panel.title, fontsize=9)
        top.set_ylabel(f"test {metric} (%)")
        if steps:
            bottom = grid[1][column]
            for curve in panel.steps:
                style = styles.line(panel.method, curve.variant)
                bounds = (0.0, math.inf if panel.latest_step is None else panel.latest_step)
                _curve(bottom, curve, style, label=curve.variant or "ticket", scale=1.0, bounds=bounds)
            _remaining_axis(bottom, xs)
            bottom.set_ylabel("early-stop step (best test accuracy)")
    axes = [ax for row in grid for ax in row]
    _style_key(fig, axes, styles, [p.metric + p.steps for p in panels], none_label="ticket",
               methods={p.method for p in panels})  # fmt: skip
    return thin_tick_labels(fig)


def excess_error_figure(panels: Sequence[Panel], *, styles: Styles | None = None) -> Figure | None:
    """Excess error under a shift (its error increase beyond the clean one, points) against the
    remaining weights, one axes per (data set, model, shift), one line per method."""
    panels = [p for p in panels if p.curves]
    if not panels:
        return None
    styles = styles or Styles(c.method for p in panels for c in p.curves)
    fig, axes = _grid(len(panels), columns=min(4, len(panels)), size=(3.6, 3.0))
    for ax, panel in zip(axes, panels, strict=False):
        ax.axhline(0, color="black", linewidth=0.8)
        for curve in panel.curves:
            _curve(
                ax,
                curve,
                styles.line(curve.method, curve.variant),
                label=_label(curve),
                bounds=(-100.0, 100.0),
            )
        _remaining_axis(ax, [x for c in panel.curves for x, _ in c.points])
        ax.set_title(panel.title, fontsize=8)
        ax.set_ylabel("excess error (points)", fontsize=8)
    legend_outside(fig, axes)
    return thin_tick_labels(fig)


def layer_sparsity_figure(
    panels: Mapping[str, Mapping[str, Sequence[tuple[str, float]]]], *, styles: Styles | None = None
) -> Figure | None:
    """Per-layer sparsity (%) as horizontal bars, one axes per title, one bar per method in its colour.

    `panels` maps a title to {method label: [(layer name, sparsity fraction), ...]}; a label may
    carry the run's sparsity after the method ("SNIP (90 %)"): `methods` of `Styles` decides colour.
    """
    panels = {t: m for t, m in panels.items() if m}
    if not panels:
        return None
    labels = [label for m in panels.values() for label in m]
    styles = styles or Styles(_method_of(label) for label in labels)
    heights = [
        max(len(layers) for layers in m.values()) * (0.25 * len(m) + 0.2) + 1.2 for m in panels.values()
    ]
    import matplotlib.pyplot as plt

    _agg()
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(5.0 * len(panels) + 2.5, max(3.0, max(heights))),
        squeeze=False,
        layout="constrained",
    )
    for ax, (title, methods) in zip(axes[0], panels.items(), strict=True):
        names = list(dict.fromkeys(name for layers in methods.values() for name, _ in layers))
        width = 0.8 / len(methods)
        for i, (label, layers) in enumerate(methods.items()):
            by = dict(layers)
            ys = [j - 0.4 + width * (i + 0.5) for j in range(len(names))]
            style = styles.line(_method_of(label))
            ax.barh(ys, [100 * by.get(n, math.nan) for n in names], width, label=label, color=style.color,
                    hatch=HATCHES[style.fillstyle], edgecolor="white", linewidth=0.4)  # fmt: skip
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.invert_yaxis()  # the first layer on top
        ax.set_xlim(0, 100)
        ax.set_xlabel("sparsity (%)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    legend_outside(fig, list(axes[0]))
    return thin_tick_labels(fig)


# -- saving ---------------------------------------------------------------------------------------
def save(fig: Figure, path: str | os.PathLike[str], *, dpi: int = 120) -> Path:
    """Write `path` (PNG) and the same stem's `.svg` atomically, close the figure, return the PNG path."""
    with _svg_settings():
        return save_figure(fig, path, dpi=dpi, formats=("png", "svg"))


def svg_text(fig: Figure) -> str:
    """The figure as one `<svg>` element (no XML prologue or doctype), for inlining in HTML."""
    buffer = io.StringIO()
    with _svg_settings():
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _svg_settings() -> Any:
    """Stable SVG ids (so a regenerated figure diffs only where it changed) and text as paths."""
    import matplotlib

    return matplotlib.rc_context({"svg.hashsalt": "secateurs", "svg.fonttype": "path"})


# -- ticks ----------------------------------------------------------------------------------------
def shown_tick_labels(axis: Any) -> list[Any]:
    """The major tick labels (`Text`) an axis draws: visible, not empty, inside the view limits."""
    return [text for _, text in _in_view(axis) if text.get_visible() and text.get_text()]


def thin_tick_labels(fig: Figure, *, pad: float = 6.0) -> Figure:
    """Drop every tick whose label would come within `pad` pixels (about two spaces of a 7-point
    label) of a label kept, measured after a draw: the two end labels are kept (the range a reader
    looks for), then the others in screen order; returns `fig`. A dropped tick takes its mark and
    grid line with it, so 95 lottery-ticket levels do not turn the axes into a comb.

    Removing ticks only frees room, so a later layout pass cannot make the kept ones collide.
    """
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        for axis, edge in ((ax.xaxis, "x0"), (ax.yaxis, "y0")):
            shown = shown_tick_labels(axis)
            boxes = sorted(
                ((t.get_window_extent(renderer).padded(pad / 2), t) for t in shown),
                key=lambda bt: getattr(bt[0], edge),
            )
            kept: list[Any] = []
            drop = set()
            for box, text in [*boxes[:1], *boxes[-1:], *boxes[1:-1]] if len(boxes) > 1 else boxes:
                if any(box.overlaps(other) for other in kept):
                    drop.add(id(text))
                else:
                    kept.append(box)
            if drop:
                ticks = [(loc, t) for loc, t in _in_view(axis) if id(t) not in drop]
                axis.set_ticks([loc for loc, _ in ticks], [t.get_text() for _, t in ticks],
                               fontsize=shown[0].get_fontsize())  # fmt: skip
    return fig


def _in_view(axis: Any) -> list[tuple[float, Any]]:
    """(position, label) of the major ticks inside the view limits (a locator also returns some outside)."""
    low, high = sorted(axis.get_view_interval())
    span = (high - low) * 1e-9
    pairs = zip(axis.get_majorticklocs(), axis.get_major_ticks(), strict=False)
    return [(loc, tick.label1) for loc, tick in pairs if low - span <= loc <= high + span]


def _fmt(value: float) -> str:
    return f"{value:.3g}"


# -- helpers --------------------------------------------------------------------------------------
def _agg() -> None:
    import matplotlib

    matplotlib.use("Agg")


def _grid(n: int, *, columns: int, size: tuple[float, float]) -> tuple[Any, list[Any]]:
    """`n` axes in rows of `columns` (spare axes removed), room on the right for the legend."""
    import matplotlib.pyplot as plt

    _agg()
    rows = math.ceil(n / columns)
    fig, grid = plt.subplots(
        rows, columns, figsize=(size[0] * columns + 2.4, size[1] * rows), squeeze=False, layout="constrained"
    )
    axes = [ax for row in grid for ax in row]
    for ax in axes[n:]:
        ax.remove()
    return fig, axes[:n]


def _label(curve: Curve) -> str:
    return f"{curve.method}{VARIANT_SEPARATOR}{curve.variant}" if curve.variant else curve.method


def _method_of(label: str) -> str:
    """ "SNIP (90 %)" → "SNIP": a layer-sparsity label names the run's sparsity after its method."""
    head, _, tail = label.rpartition(" (")
    return method_variant(head if head and tail.endswith("%)") else label)[0]


def _dense_line(ax: Any, dense: Stat | None) -> None:
    if dense is not None:
        ax.axhline(100 * dense.mean, label="dense", **DENSE_STYLE)


def _curve(
    ax: Any,
    curve: Curve,
    style: LineStyle,
    *,
    label: str,
    scale: float = 100.0,
    bounds: tuple[float, float] = RANGE_PERCENT,
) -> None:
    """A line through the means and a band of ± one std clipped to `bounds` (in plotted units)."""
    points = sorted((x, s) for x, s in curve.points if not math.isnan(s.mean))
    if not points:
        return
    xs = [100 * x for x, _ in points]
    mean = [scale * s.mean for _, s in points]
    low = [min(max(scale * (s.mean - s.std), bounds[0]), bounds[1]) for _, s in points]
    high = [min(max(scale * (s.mean + s.std), bounds[0]), bounds[1]) for _, s in points]
    ax.plot(xs, mean, label=label, **style.kwargs())
    if len(xs) == 1:  # a band needs two points; one gets an error bar
        ax.vlines(xs, low, high, color=style.color, alpha=0.5, linewidth=1.2)
    elif any(h > lo for lo, h in zip(low, high, strict=True)):
        ax.fill_between(xs, low, high, color=style.color, alpha=0.15, linewidth=0)


def _remaining_axis(ax: Any, xs: Iterable[float], *, label: bool = True) -> None:
    """Log scale of remaining weights (%), ticks at the measured points only, sparser to the right."""
    ticks = sorted({100 * x for x in xs if x > 0}, reverse=True)
    ax.set_xscale("log")
    if ticks:
        ax.set_xticks(ticks, [_fmt(t) for t in ticks], fontsize=7)
    ax.minorticks_off()
    ax.tick_params(axis="y", labelsize=7)
    if not ax.xaxis_inverted():
        ax.invert_xaxis()
    ax.grid(alpha=0.3)
    if label:
        ax.set_xlabel("remaining weights (%), log scale", fontsize=8)


def legend_outside(fig: Figure, axes: Sequence[Any]) -> None:
    """One legend right of the axes for every labelled artist of `axes` (one entry per label); a
    figure drawn with more artists afterwards calls it again (it replaces the figure's legends)."""
    for old in list(fig.legends):
        old.remove()
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    if handles:
        ordered = sorted(handles, key=lambda s: (s != "dense", s.lower()))
        fig.legend(
            [handles[k] for k in ordered], ordered, loc="outside right upper", fontsize=7, frameon=False
        )


def _style_key(
    fig: Figure,
    axes: Sequence[Any],
    styles: Styles,
    curves: Iterable[Iterable[Curve]],
    *,
    none_label: str,
    methods: set[str] | None = None,
) -> None:
    """A legend of the variants' styles (in the one method's colour, or dark grey when the panels
    show several methods, whose names are the panels' titles), plus the dense line."""
    from matplotlib.lines import Line2D

    variants = sorted({c.variant for group in curves for c in group}, key=lambda v: (v is not None, v or ""))
    all_methods = methods or {c.method for group in curves for c in group}
    colour = styles.colour(next(iter(all_methods))) if len(all_methods) == 1 else "#444444"
    handles, labels = [], []
    if any(ax.get_legend_handles_labels()[1].count("dense") for ax in axes):
        handles.append(Line2D([], [], **DENSE_STYLE))
        labels.append("dense")
    for variant in variants:
        linestyle, marker = styles.variant(variant)
        handles.append(Line2D([], [], color=colour, linestyle=linestyle, marker=marker, markersize=5))
        labels.append(variant or none_label)
    fig.legend(handles, labels, loc="outside right upper", fontsize=7, frameon=False)
