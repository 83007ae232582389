"""Report figures (issue 23): methods apart by colour, variants by style, legends outside the axes,
bands inside the metric's range, tick labels that never collide, and an SVG beside every PNG.

The checks read the drawn figure objects; each is first shown to catch a deliberately bad figure.
"""

from __future__ import annotations

import importlib.util
import itertools
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.colors import to_hex
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from secateurs.core.errors import ConfigError
from secateurs.results import ResultsDB, figures
from secateurs.results.report import (
    Cell,
    RunSummary,
    TicketPoint,
    accuracy_table,
    collect,
    figure_styles,
    level_panels,
    report_figures,
    ticket_panels,
    ticket_table,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SHIFTS = ("gaussian_noise:0.1", "shift:2")


# -- a small store of fake runs -------------------------------------------------------------------
def add_run(
    db: ResultsDB,
    name: str,
    seed: int,
    sparsity: float,
    final: dict[str, float],
    *,
    data: str = "synthetic",
    check: str | None = None,
    levels: list[dict[str, Any]] | None = None,
) -> None:
    """One finished run: a dense evaluation (stage 1), then its levels or one final evaluation."""
    prune: dict[str, Any] = {"criterion": name}
    if check:
        prune["sanity"] = check
    config = {
        "name": name,
        "seed": seed,
        "sparsity": sparsity,
        "data": {"name": data},
        "model": {"name": "mlp"},
        "stages": [{"train": {}}, {"evaluate": {}}, {"prune": prune}, {"evaluate": {}}],
    }
    run = f"{name}-{check}-{data}-{sparsity}-{seed}"
    db.add_runs([(run, name, config)])
    db.claim(run, version="test", git_revision=None)
    dense = {"accuracy": 0.9, "sparsity": 0.0, **{f"acc@{s}": 0.8 for s in SHIFTS}}
    db.add_metrics(run, stage=1, kind="evaluate", level=None, step=None, metrics=dense)
    for i, level in enumerate(levels or []):
        db.add_metrics(run, stage=2 + i, kind="evaluate", level=level.pop("level"), step=None,
                       metrics=level, control=level.pop("control", None))  # fmt: skip
    db.add_metrics(
        run, stage=99, kind="evaluate", level=None, step=None, metrics={"sparsity": sparsity, **final}
    )
    db.mark_finished(run, {})


def accuracy(method: str, sparsity: float, seed: int) -> float:
    """Spread over seeds wide enough that mean ± std leaves [0, 1] near both ends."""
    base = {"magnitude": 0.99, "SNIP": 0.6, "GraSP": 0.08, "random": 0.45}[method] - 0.05 * sparsity
    return min(1.0, max(0.0, base + 0.15 * (seed - 1)))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("results")
    with ResultsDB(root / "results.db") as db:
        for data, method, sparsity, seed in itertools.product(
            ("synthetic", "other"),
            ("magnitude", "SNIP", "GraSP", "random"),
            (0.5, 0.9, 0.99, 0.995),
            (0, 1, 2),
        ):
            acc = accuracy(method, sparsity, seed)
            add_run(
                db,
                method,
                seed,
                sparsity,
                {"accuracy": acc, **{f"acc@{s}": max(0.0, acc - 0.1) for s in SHIFTS}},
                data=data,
            )
        for method, check, seed in itertools.product(("SNIP", "GraSP"), ("shuffle", "invert"), (0, 1, 2)):
            add_run(
                db, method, seed, 0.9, {"accuracy": max(0.0, accuracy(method, 0.9, seed) - 0.01)}, check=check
            )
        for seed in (
            0,
            1,
            2,
        ):  # ticket levels whose last two remaining weights nearly coincide (2.87, 2.85 %)
            levels = [
                {
                    "level": level,
                    "control": control,
                    "remaining": remaining,
                    "accuracy": 0.8 + 0.01 * seed,
                    "best_step": 100 * level,
                }
                for level, remaining in enumerate((0.8, 0.4, 0.1, 0.0287, 0.0285), start=1)
                for control in (None, "reinit", "random_mask")
            ]
            add_run(db, "IMP", seed, 0.9715, {"accuracy": 0.8}, levels=levels)
    return root


@pytest.fixture(scope="module")
def drawn(store: Path) -> dict[str, Any]:
    with ResultsDB(store / "results.db", create=False) as db:
        runs = collect(db)
    yield report_figures(runs)
    plt.close("all")


# -- the checks, read from a figure object --------------------------------------------------------
def style_clashes(fig: Any) -> list[str]:
    """Legend entries that share colour and style (line style, marker and fill, or a bar's colour)."""
    seen: dict[tuple[Any, ...], str] = {}
    clashes = []
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    for legend in legends:
        for handle, text in zip(legend.legend_handles, legend.get_texts(), strict=True):
            if isinstance(handle, Line2D):
                color, marker = to_hex(handle.get_color()), handle.get_marker()
                key: tuple[Any, ...] = (color, handle.get_linestyle(), marker, handle.get_fillstyle())
            elif isinstance(handle, Rectangle):
                key = (to_hex(handle.get_facecolor()), "bar", handle.get_hatch())
            else:
                key = (type(handle).__name__, text.get_text())
            if key in seen:
                clashes.append(f"{text.get_text()!r} looks like {seen[key]!r}")
            seen.setdefault(key, text.get_text())
    return clashes


def legends_over_axes(fig: Any) -> list[str]:
    fig.canvas.draw()
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    return [
        f"a legend covers {ax.get_title()!r}"
        for legend in legends
        for ax in fig.axes
        if legend.get_window_extent().overlaps(ax.get_window_extent())
    ]


def overlapping_ticks(fig: Any) -> list[str]:
    fig.canvas.draw()
    found = []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            labels = [(t.get_text(), t.get_window_extent()) for t in figures.shown_tick_labels(axis)]
            found += [f"{a!r} over {b!r}" for (a, box), (b, other) in itertools.combinations(labels, 2)
                      if box.overlaps(other)]  # fmt: skip
    return found


def bands_outside(fig: Any, low: float = 0.0, high: float = 100.0) -> list[str]:
    """Bands (filled areas) of accuracy axes that leave [low, high]."""
    found = []
    for ax in fig.axes:
        if "accuracy (%)" not in ax.get_ylabel():
            continue
        for band in (c for c in ax.collections if isinstance(c, PolyCollection)):
            ys = [y for path in band.get_paths() for y in path.vertices[:, 1]]
            if ys and (min(ys) < low - 1e-9 or max(ys) > high + 1e-9):
                found.append(f"{ax.get_title()!r}: band from {min(ys):.1f} to {max(ys):.1f}")
    return found


def bad_figure() -> Any:
    """Everything the checks must catch: one colour and style twice, a legend on the data, crowded
    tick labels and a band below 0 %."""
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([1, 2], [10, 20], color="C0", label="GraSP")
    ax.plot([1, 2], [20, 30], color="C0", label="SynFlow [reinit]")
    ax.fill_between([1, 2], [-10, 5], [30, 40], alpha=0.2)
    ax.set_xscale("log")
    ticks = [2.85, 2.87, 3.0, 3.1, 10, 50]
    ax.set_xticks(ticks, [f"{t:.3g}" for t in ticks])
    ax.set_ylabel("test accuracy (%)")
    ax.legend(loc="center")
    return fig


def test_each_check_catches_the_bad_figure() -> None:
    fig = bad_figure()
    assert style_clashes(fig) == ["'SynFlow [reinit]' looks like 'GraSP'"]
    assert legends_over_axes(fig) == ["a legend covers ''"]
    assert "'2.85' over '2.87'" in overlapping_ticks(fig)
    assert bands_outside(fig) == ["'': band from -10.0 to 40.0"]
    plt.close(fig)


def test_thinning_removes_exactly_the_colliding_tick_labels() -> None:
    fig = figures.thin_tick_labels(bad_figure())
    assert overlapping_ticks(fig) == []
    shown = figures.shown_tick_labels(fig.axes[0].xaxis)
    kept = [t.get_text() for t in shown]
    assert "2.85" in kept and "2.87" not in kept and {"10", "50"} <= set(kept)
    assert len(fig.axes[0].get_xticks()) == len(kept)  # a dropped label takes its tick and grid line
    boxes = sorted((t.get_window_extent() for t in shown), key=lambda b: b.x0)
    assert all(b.x0 - a.x1 >= 6.0 - 1e-6 for a, b in itertools.pairwise(boxes))  # two spaces apart
    plt.close(fig)
    fig, ax = plt.subplots()
    ax.set_xticks([1.0], ["1"])
    assert [t.get_text() for t in figures.shown_tick_labels(figures.thin_tick_labels(fig).axes[0].xaxis)] == [
        "1"
    ]
    plt.close(fig)


# -- every figure kind, drawn from the store ------------------------------------------------------
def test_a_store_draws_every_figure_kind(drawn: dict[str, Any]) -> None:
    assert list(drawn) == ["accuracy_vs_remaining", "sanity_checks", "excess_error", "ticket_curves"]


@pytest.mark.parametrize("kind", ["accuracy_vs_remaining", "sanity_checks", "excess_error", "ticket_curves"])
def test_figures_separate_entries_keep_legends_outside_and_ticks_apart(
    drawn: dict[str, Any], kind: str
) -> None:
    fig = drawn[kind]
    assert fig.legends, "one legend for the whole figure"
    assert style_clashes(fig) == []
    assert legends_over_axes(fig) == []
    assert overlapping_ticks(fig) == []
    assert bands_outside(fig) == []


def test_the_accuracy_figure_shows_methods_only_with_clipped_bands(drawn: dict[str, Any]) -> None:
    fig = drawn["accuracy_vs_remaining"]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["dense", "GraSP", "IMP", "magnitude", "random", "SNIP"]  # no "[shuffle]" here
    bands = [c for ax in fig.axes for c in ax.collections if isinstance(c, PolyCollection)]
    ys = [y for band in bands for path in band.get_paths() for y in path.vertices[:, 1]]
    assert min(ys) == 0.0 and max(ys) == 100.0  # GraSP's band would reach below 0, magnitude's above 100


def test_sanity_checks_get_one_panel_per_checked_method_in_its_colour(drawn: dict[str, Any]) -> None:
    fig, main = drawn["sanity_checks"], drawn["accuracy_vs_remaining"]
    assert [ax.get_title() for ax in fig.axes] == ["GraSP\nsynthetic · mlp", "SNIP\nsynthetic · mlp"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "dense",
        "method (no check)",
        "invert",
        "shuffle",
    ]
    legend = main.legends[0]
    colour = {
        t.get_text(): to_hex(h.get_color())
        for h, t in zip(legend.legend_handles, legend.get_texts(), strict=True)
    }
    for ax, method in zip(fig.axes, ("GraSP", "SNIP"), strict=True):
        lines = [line for line in ax.get_lines() if line.get_label() != "dense"]
        assert len(lines) == 3 and {to_hex(line.get_color()) for line in lines} == {colour[method]}
        assert len({(line.get_linestyle(), line.get_marker()) for line in lines}) == 3


def test_the_ticket_figure_keeps_one_of_two_nearly_equal_remaining_labels(drawn: dict[str, Any]) -> None:
    fig = drawn["ticket_curves"]
    shown = [t.get_text() for t in figures.shown_tick_labels(fig.axes[-1].xaxis)]
    assert "2.85" in shown and "2.87" not in shown and "80" in shown  # the ends stay: 80 % down to 2.85 %
    steps = fig.axes[-1]
    assert steps.get_ylabel().startswith("early-stop step")


def test_early_stop_bands_end_at_the_latest_evaluated_step() -> None:
    points = [  # seeds stopped early at 1800, 2000, 2000: mean + std = 2048, past the 2000 steps trained
        TicketPoint(level, 1 - 0.2 * level, Cell([0.8, 0.81, 0.82]), Cell([1800.0, 2000.0, 2000.0]))
        for level in (1, 2)
    ]
    (panel,) = ticket_panels({"IMP · synthetic · mlp": {"ticket": points}})
    assert panel.latest_step == 2000.0
    fig = figures.ticket_figure([panel])
    assert fig is not None
    bands = [c for c in fig.axes[1].collections if isinstance(c, PolyCollection)]
    ys = [y for band in bands for path in band.get_paths() for y in path.vertices[:, 1]]
    assert bands and max(ys) == 2000.0 and min(ys) == pytest.approx(1933.33 - 115.47, abs=0.01)
    plt.close(fig)


def test_layer_sparsity_bars_have_one_colour_per_method_and_names_apart() -> None:
    layers = [(f"features.{i}.weight", i / 10) for i in range(8)]
    fig = figures.layer_sparsity_figure(
        {"a · b": {"SNIP (90 %)": layers, "magnitude (90 %)": layers}, "c · d": {"SNIP (90 %)": layers[:3]}}
    )
    assert style_clashes(fig) == [] and legends_over_axes(fig) == [] and overlapping_ticks(fig) == []
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["magnitude (90 %)", "SNIP (90 %)"]
    plt.close(fig)
    many = figures.layer_sparsity_figure({"a · b": {f"method {i} (90 %)": layers[:2] for i in range(12)}})
    assert style_clashes(many) == []  # beyond nine colours the bars are hatched
    plt.close(many)


def test_a_method_keeps_its_colour_whatever_the_other_methods() -> None:
    one = figures.Styles(["SNIP", "GraSP", "SynFlow"])
    again = figures.Styles(["SynFlow", "GraSP", "SNIP"])
    assert [one.colour(m) for m in ("SNIP", "GraSP", "SynFlow")] == [
        again.colour(m) for m in ("SNIP", "GraSP", "SynFlow")
    ]
    assert figures.Styles(["SNIP"]).colour("SNIP") == one.colour("SNIP")  # its colour comes from its name
    many = figures.Styles([f"method {i}" for i in range(20)])
    lines = {many.line(f"method {i}") for i in range(20)}
    assert len(lines) == 20 and {s.color for s in lines} == set(
        figures.PALETTE
    )  # a second round: other fills
    seven = figures.Styles([f"method {i}" for i in range(7)])
    assert {seven.colour(f"method {i}") for i in range(7)} == set(figures.STRONG)  # the pale ones come last
    nine = figures.Styles([f"method {i}" for i in range(9)])
    assert {nine.line(f"method {i}").fillstyle for i in range(9)} == {"full"}  # colours first, then fills
    with pytest.raises(ConfigError, match="methods to tell apart"):
        figures.Styles([f"method {i}" for i in range(9 * len(figures.FILLS) + 1)])
    assert one.line("SNIP", "control=reinit").linestyle == one.line("SNIP", "reinit").linestyle != "-"


@pytest.fixture(scope="module")
def written(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report.md `write_report` writes for the store (its figures beside it)."""
    return write_report(store, tmp_path_factory.mktemp("report"))


def test_write_report_saves_an_svg_beside_every_png(written: Path) -> None:
    text, folder = written.read_text(), written.parent
    for stem in ("accuracy_vs_remaining", "sanity_checks", "excess_error", "ticket_curves"):
        assert (folder / f"{stem}.png").read_bytes().startswith(PNG_MAGIC)
        svg = (folder / f"{stem}.svg").read_text()
        assert svg.startswith("<?xml") and "<svg" in svg and svg.rstrip().endswith("</svg>")
        assert f"]({stem}.png)" in text
    assert not list(folder.glob(".*")), "no temporary file left behind"


def test_svg_text_is_one_inline_element_and_stable(store: Path) -> None:
    with ResultsDB(store / "results.db", create=False) as db:
        runs = collect(db)
    styles = figure_styles(runs)
    texts = []
    for _ in range(2):
        panel = figures.Panel("p", [figures.Curve("SNIP", None, [(0.5, figures.Stat(0.8, 0.1))])])
        fig = figures.accuracy_figure([panel], styles=styles)
        texts.append(figures.svg_text(fig))
        plt.close(fig)
    assert (
        texts[0].startswith("<svg") and texts[0] == texts[1]
    )  # no date, fixed ids: regenerated files diff cleanly
    assert "<image" not in texts[0] and "@import" not in texts[0]


def test_a_recipe_named_method_dot_variant_keeps_the_method_colour_and_the_variant_marker() -> None:
    def run(name: str, sparsity: float, seed: int, value: float) -> RunSummary:
        return RunSummary(
            f"{name}{sparsity}{seed}", name, "fashion_mnist", "lenet5", sparsity, seed, {"accuracy": value}
        )

    runs = [
        run(name, sparsity, seed, value + 0.4 * seed)
        for name, sparsity, value in (
            ("ADMM · N:M 2:4", 0.5, 0.5),
            ("gradual magnitude · N:M 2:4", 0.5, 0.6),
            ("ADMM · unstructured 90 %", 0.9, 0.4),
        )
        for seed in (0, 1)
    ]
    fig = report_figures(runs)["accuracy_vs_remaining"]
    legend = fig.legends[0]
    style = {
        t.get_text(): (to_hex(h.get_color()), h.get_marker())
        for h, t in zip(legend.legend_handles, legend.get_texts(), strict=True)
    }
    assert list(style) == ["ADMM · N:M 2:4", "ADMM · unstructured 90 %", "gradual magnitude · N:M 2:4"]
    assert (
        style["ADMM · N:M 2:4"][0]
        == style["ADMM · unstructured 90 %"][0]
        != style["gradual magnitude · N:M 2:4"][0]
    )
    assert (
        style["ADMM · N:M 2:4"][1]
        == style["gradual magnitude · N:M 2:4"][1]
        != style["ADMM · unstructured 90 %"][1]
    )
    (ax,) = fig.axes  # one point per curve: an error bar, clipped at 100 % like a band
    bars = [seg for c in ax.collections if isinstance(c, LineCollection) for seg in c.get_segments()]
    assert len(bars) == 3 and max(y for seg in bars for y in seg[:, 1]) == 100.0
    plt.close(fig)


def test_redraw_reads_a_report_back_into_runs_with_the_same_tables(store: Path, written: Path) -> None:
    """benchmarks/redraw_figures.py redraws committed reports from their tables: reading a report.md
    back must give runs whose tables are the report's own, to the last printed digit."""
    spec = importlib.util.spec_from_file_location(
        "redraw", Path(__file__).parents[1] / "benchmarks" / "redraw_figures.py"
    )
    redraw = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(redraw)  # type: ignore[union-attr]
    values = redraw.seed_values(0.5, 0.1, 3)
    assert statistics.fmean(values) == pytest.approx(0.5) and statistics.stdev(values) == pytest.approx(0.1)
    with ResultsDB(store / "results.db", create=False) as db:
        runs = collect(db)
    text = written.read_text()
    again = redraw.runs_from_report(text)
    assert accuracy_table(again) == accuracy_table(runs) and accuracy_table(runs) in text
    assert ticket_table(level_panels(again)[0]) == ticket_table(level_panels(runs)[0])


def test_a_figure_drawn_on_afterwards_gets_one_legend_with_the_new_entry() -> None:
    curve = figures.Curve("SNIP", None, [(0.5, figures.Stat(0.8)), (0.1, figures.Stat(0.7))])
    panel = figures.Panel("p", [curve], figures.Stat(0.85))
    fig = figures.accuracy_figure([panel])
    fig.axes[0].axhspan(84, 85, color="grey", alpha=0.15, label="within 1 point of dense")
    figures.legend_outside(fig, fig.axes)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["dense", "SNIP", "within 1 point of dense"]
    assert style_clashes(fig) == [] and legends_over_axes(fig) == []
    plt.close(fig)
