"""Reports from the results store: markdown tables and figures (PNG + SVG), readable without a terminal.

Runs are grouped by (data set, model, method, target sparsity) and summarised over seeds as
mean ± std. The dense reference of a (data set, model) pair is every evaluation at sparsity 0
found in its runs (the "dense" evaluation most recipes make before pruning), averaged.

Runs with repeat levels also get ticket curves: per level, the last evaluation of the run itself
("ticket") and of each control experiment ("control=reinit", ...), mean ± std over seeds against
the remaining weights, with the early-stop step (where test accuracy peaked) of each level.
"""

from __future__ import annotations

import fnmatch
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from secateurs.core.errors import ConfigError
from secateurs.core.fileio import atomic_write_text
from secateurs.eval.potential import prune_potential
from secateurs.results import figures
from secateurs.results.db import DB_NAME, MetricRow, ResultsStore
from secateurs.results.runner import store_at

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SHIFT_PREFIX = "acc@"
TICKET = "ticket"
"""The series name of a run's own levels in ticket curves (controls are `control=<name>`)."""

LevelKey = tuple[str | None, int]
"""(control, level) of an evaluation; control None is the run itself."""


@dataclass
class RunSummary:
    """What the report needs of one finished run."""

    hash: str
    method: str
    data: str
    model: str
    sparsity: float
    seed: int
    final: dict[str, float]
    dense: dict[str, float] | None = None
    masks_path: str | None = None
    levels: dict[LevelKey, dict[str, float]] = field(default_factory=dict)
    check: str | None = None  # the sanity check(s) its prune stages ran, e.g. "shuffle"

    @property
    def base_method(self) -> str:
        """The method without its sanity check: what the check is compared with."""
        return self.method.removesuffix(f" [{self.check}]") if self.check else self.method


def sanity_checks(config: Any) -> list[str]:
    """The sanity checks (other than "none") of every prune step in a stored recipe config."""
    if isinstance(config, list):
        return sorted({c for item in config for c in sanity_checks(item)})
    if not isinstance(config, dict):
        return []
    found = {c for value in config.values() for c in sanity_checks(value)}
    if config.get("sanity") not in (None, "none"):
        found.add(str(config["sanity"]))
    return sorted(found)


@dataclass
class Cell:
    values: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    def text(self, scale: float = 100.0, digits: int = 2) -> str:
        return f"{scale * self.mean:.{digits}f} ± {scale * self.std:.{digits}f}" if self.values else "—"


def collect(db: ResultsStore, *, name: str | None = None) -> list[RunSummary]:
    """Finished runs (optionally those whose name matches a shell pattern) with their final metrics.

    Artifact paths in the store are relative to the results root, the database's directory.
    """
    root = db.root if db.root is not None else Path()
    out = []
    for record in db.list_runs(status="finished"):
        if name is not None and not fnmatch.fnmatchcase(record.name, name):
            continue
        all_rows = db.metrics(record.hash)
        rows = [m for m in all_rows if m.kind == "evaluate" and m.value is not None and m.control is None]
        by_stage: dict[int, dict[str, float]] = defaultdict(dict)
        for m in rows:
            by_stage[m.stage][m.name] = float(m.value)  # type: ignore[arg-type]
        if not by_stage:
            continue
        evaluations = [by_stage[s] for s in sorted(by_stage)]
        dense = next((e for e in evaluations if e.get("sparsity", 1.0) == 0.0), None)
        final = evaluations[-1]
        config = record.config
        target = config.get("sparsity")
        check = ", ".join(sanity_checks(config.get("stages", []))) or None
        out.append(
            RunSummary(
                hash=record.hash,
                method=f"{record.name} [{check}]" if check else record.name,
                check=check,
                data=config["data"].get("name") or config["data"].get("factory"),
                model=config["model"].get("name") or config["model"].get("factory"),
                sparsity=float(target if target is not None else round(final.get("sparsity", 0.0), 4)),
                seed=int(config.get("seed", 0)),
                final=final,
                dense=dense,
                masks_path=_artifact(root, db.artifacts(record.hash).get("model")),
                levels=levels_from_rows(all_rows),
            )
        )
    return out


# -- levels and ticket curves ---------------------------------------------------------------------
def levels_from_rows(rows: Iterable[MetricRow]) -> dict[LevelKey, dict[str, float]]:
    """The last evaluation of each (control, level) among one run's metric rows from the store."""
    events: dict[tuple[int, str | None], dict[str, float]] = {}
    level_of: dict[tuple[int, str | None], int] = {}
    for m in rows:
        if m.kind == "evaluate" and m.level is not None and m.value is not None:
            events.setdefault((m.stage, m.control), {})[m.name] = float(m.value)
            level_of[(m.stage, m.control)] = m.level
    out: dict[LevelKey, dict[str, float]] = {}
    for key in sorted(events, key=lambda k: k[0]):  # a later evaluation of a level replaces an earlier one
        out[(key[1], level_of[key])] = events[key]
    return out


def levels_from_records(records: Iterable[Mapping[str, Any]]) -> dict[LevelKey, dict[str, float]]:
    """The last evaluation of each (control, level) among a run's records (`RunResult.records`)."""
    out: dict[LevelKey, dict[str, float]] = {}
    for r in records:
        if r.get("level") is not None:
            out[(r.get("control"), int(r["level"]))] = {
                k: float(v)
                for k, v in r.items()
                if isinstance(v, int | float) and not isinstance(v, bool) and k != "level"
            }
    return out


@dataclass
class TicketPoint:
    """One level of a ticket curve: remaining weights (fraction, mean over runs) and two cells over runs."""

    level: int
    remaining: float
    metric: Cell
    best_step: Cell


def series_name(control: str | None) -> str:
    return TICKET if control is None else f"control={control}"


def ticket_curves(
    runs: Iterable[Mapping[LevelKey, Mapping[str, float]]], metric: str = "accuracy"
) -> dict[str, list[TicketPoint]]:
    """Series ("ticket", "control=reinit", ...) → one point per level, mean ± std over `runs` (seeds).

    Each element of `runs` is one run's levels, from `levels_from_rows` or `levels_from_records`.
    """
    found: dict[tuple[str | None, int], list[Mapping[str, float]]] = defaultdict(list)
    for levels in runs:
        for key, metrics in levels.items():
            found[key].append(metrics)
    out: dict[str, list[TicketPoint]] = {}
    for (control, level), rows in sorted(found.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])):
        remaining = [m["remaining"] for m in rows if "remaining" in m]
        out.setdefault(series_name(control), []).append(
            TicketPoint(
                level,
                statistics.fmean(remaining) if remaining else math.nan,
                Cell([m[metric] for m in rows if metric in m]),
                Cell([m["best_step"] for m in rows if "best_step" in m]),
            )
        )
    return out


def level_groups(runs: list[RunSummary]) -> dict[str, tuple[list[RunSummary], list[RunSummary]]]:
    """Per ticket panel title: the runs with levels of one (data set, model, method), and those shown.

    Of a method's target sparsities the highest is shown: its levels pass through the others'
    (the same seed gives the same levels until a schedule stops at its target).
    """
    groups: dict[tuple[str, str, str], list[RunSummary]] = defaultdict(list)
    for r in runs:
        if r.levels:
            groups[(r.data, r.model, r.method)].append(r)
    out = {}
    for (data, model, method), group in sorted(groups.items()):
        top = max(r.sparsity for r in group)
        title = f"{method} · {data} · {model}"
        if len({r.sparsity for r in group}) > 1:
            title += f" (to sparsity {100 * top:g} %)"
        out[title] = (group, [r for r in group if r.sparsity == top])
    return out


def level_panels(
    runs: list[RunSummary], metric: str = "accuracy"
) -> tuple[dict[str, dict[str, list[TicketPoint]]], dict[str, Cell]]:
    """Ticket curves per (data set, model, method) of the runs with levels (`level_groups`), and each
    panel's dense cell."""
    panels, dense = {}, {}
    for title, (group, shown) in level_groups(runs).items():
        panels[title] = ticket_curves([r.levels for r in shown], metric)
        dense[title] = _dense(group, metric)
    return panels, dense


def ticket_tables(
    panels: Mapping[str, Mapping[str, list[TicketPoint]]],
    metric: str = "accuracy",
    *,
    runs: Mapping[str, Sequence[RunSummary]] | None = None,
) -> list[Table]:
    """Per panel and level: remaining weights, each series' metric, the ticket's early stop; each
    level's row carries the panel's `runs` (title → runs, e.g. from `level_groups`) when given."""
    tables = []
    for title, curves in panels.items():
        names = list(curves)
        levels = sorted({p.level for points in curves.values() for p in points})
        by = {(n, p.level): p for n, points in curves.items() for p in points}
        table = Table(f"{title}: test {metric} (%) per level, mean ± std over seeds",
                      ["level", "remaining", *names, "early stop step (ticket)"])  # fmt: skip
        behind = _hashes((runs or {}).get(title, ()))
        for level in levels:
            point = by.get((TICKET, level)) or next(by[(n, level)] for n in names if (n, level) in by)
            cells = [_entry(by[(n, level)].metric) if (n, level) in by else Entry("—") for n in names]
            ticket = by.get((TICKET, level))
            stop = _entry(ticket.best_step, 1.0, 0) if ticket is not None else Entry("—")
            remaining = Entry(f"{100 * point.remaining:.2f} %", 100 * point.remaining)
            table.rows.append([Entry(str(level), level, behind), remaining, *cells, stop])
        tables.append(table)
    return tables


def ticket_table(panels: Mapping[str, Mapping[str, list[TicketPoint]]], metric: str = "accuracy") -> str:
    """Markdown: `ticket_tables`."""
    return markdown_tables(ticket_tables(panels, metric))


def plot_ticket_curves(
    panels: Mapping[str, Mapping[str, list[TicketPoint]]],
    path: Path,
    *,
    dense: Mapping[str, Cell] | None = None,
    metric: str = "accuracy",
    styles: figures.Styles | None = None,
) -> Path:
    """Ticket curves (see `figures.ticket_figure`) saved as `path` (PNG) and SVG beside it.

    `panels` maps a title to `ticket_curves(...)`; from records:
    `plot_ticket_curves({"IMP": ticket_curves([levels_from_records(r.records) for r in results])}, path)`.
    """
    fig = figures.ticket_figure(ticket_panels(panels, dense), styles=styles, metric=metric)
    if fig is None:
        raise ConfigError("no ticket curves to draw", fix="pass runs with repeat levels")
    return figures.save(fig, path)


def ticket_panels(
    panels: Mapping[str, Mapping[str, list[TicketPoint]]], dense: Mapping[str, Cell] | None = None
) -> list[figures.TicketPanel]:
    """`level_panels`' curves as figure data; a panel's method is its title up to the first " · "."""
    out = []
    for title, curves in panels.items():
        metric, steps = [], []
        for name, points in curves.items():
            variant = None if name == TICKET else name
            metric.append(
                figures.Curve(title, variant, [(p.remaining, s) for p in points if (s := _stat(p.metric))])
            )
            steps.append(
                figures.Curve(title, variant, [(p.remaining, s) for p in points if (s := _stat(p.best_step))])
            )
        method = title.split(" · ")[0]
        for curve in metric + steps:
            curve.method = method
        # no early stop comes after the last evaluation: the latest one seen bounds the step bands
        seen = [v for points in curves.values() for p in points for v in p.best_step.values]
        latest = max(seen, default=None)
        out.append(figures.TicketPanel(title, method, metric, [c for c in steps if c.points],
                                       _stat((dense or {}).get(title)), latest))  # fmt: skip
    return out


def _stat(cell: Cell | None) -> figures.Stat | None:
    return figures.Stat(cell.mean, cell.std) if cell is not None and cell.values else None


def _artifact(root: Path, relative: str | None) -> str | None:
    return str(root / relative) if relative else None


def _groups(runs: Iterable[RunSummary]) -> dict[tuple[str, str], list[RunSummary]]:
    groups: dict[tuple[str, str], list[RunSummary]] = defaultdict(list)
    for r in runs:
        groups[(r.data, r.model)].append(r)
    return dict(sorted(groups.items()))


def _pruned_methods(group: list[RunSummary]) -> list[str]:
    """The methods of `group` in name order, less those whose every run is dense (sparsity 0): their
    evaluations are the dense reference, which has a row of its own (a method "dense" would repeat it)."""
    return sorted({r.method for r in group if r.sparsity > 0})


def _cells(runs: list[RunSummary], metric: str) -> dict[tuple[str, float], Cell]:
    cells: dict[tuple[str, float], Cell] = defaultdict(Cell)
    for r in runs:
        if metric in r.final and r.final[metric] is not None and not math.isnan(r.final[metric]):
            cells[(r.method, r.sparsity)].values.append(r.final[metric])
    return cells


def _dense(runs: list[RunSummary], metric: str) -> Cell:
    return Cell([r.dense[metric] for r in runs if r.dense is not None and metric in r.dense])


DENSE_COLUMN = "0 % (dense)"
"""The header of the accuracy table's sparsity-0 column, where the dense reference row has its value."""


@dataclass(frozen=True)
class Entry:
    """One table cell: its text, the value a sort by its column uses, and the runs (hashes) behind it.

    The tables are built once as `Table`s; report.md renders them as markdown and report.html
    (`results.html_report`) as sortable HTML whose cells link to their runs."""

    text: str
    sort: float | str | None = None
    runs: tuple[str, ...] = ()


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[Entry]] = field(default_factory=list)


def markdown_tables(tables: Iterable[Table]) -> str:
    """Each table as "### title", a blank line, the markdown table and a blank line."""
    parts = []
    for t in tables:
        parts += [f"### {t.title}", "", "| " + " | ".join(t.headers) + " |", "|" + "---|" * len(t.headers)]
        parts += ["| " + " | ".join(e.text for e in row) + " |" for row in t.rows]
        parts.append("")
    return "\n".join(parts)


def _hashes(runs: Iterable[RunSummary]) -> tuple[str, ...]:
    return tuple(r.hash for r in sorted(runs, key=lambda r: (r.method, r.sparsity, r.seed, r.hash)))


def _entry(cell: Cell, scale: float = 100.0, digits: int = 2, runs: Iterable[RunSummary] = ()) -> Entry:
    """A mean ± std cell, sorted by its mean (in the same scale)."""
    return Entry(cell.text(scale, digits), scale * cell.mean if cell.values else None, _hashes(runs))


def _count(items: Iterable[Any]) -> Entry:
    n = len(set(items))
    return Entry(str(n), n)


def accuracy_tables(runs: list[RunSummary], metric: str = "accuracy") -> list[Table]:
    """One table per (data set, model); rows methods, columns target sparsities, mean ± std over seeds.

    The dense reference is the row "dense" under its own column, sparsity 0 (never under the lowest
    target sparsity, which is not where it was measured)."""
    tables = []
    for (data, model), group in _groups(runs).items():
        dense = _dense(group, metric)
        measured = [r for r in group if r.dense is not None and metric in r.dense]
        sparsities = sorted({r.sparsity for r in group} | ({0.0} if dense.values else set()))
        methods = _pruned_methods(group) if dense.values else sorted({r.method for r in group})
        cells = _cells(group, metric)
        headers = [DENSE_COLUMN if s == 0 and dense.values else f"{100 * s:g} %" for s in sparsities]
        table = Table(
            f"{data} · {model}: test {metric} (%), mean ± std over seeds", ["method", *headers, "seeds"]
        )
        if dense.values:
            row = [_entry(dense, runs=measured) if s == 0 else Entry("—") for s in sparsities]
            table.rows.append([Entry("dense", "dense"), *row, _count(r.seed for r in measured)])
        for m in methods:
            row = [
                _entry(cells[(m, s)], runs=(r for r in group if r.method == m and r.sparsity == s))
                if (m, s) in cells
                else Entry("—")
                for s in sparsities
            ]
            table.rows.append([Entry(m, m), *row, _count(r.seed for r in group if r.method == m)])
        tables.append(table)
    return tables


def accuracy_table(runs: list[RunSummary], metric: str = "accuracy") -> str:
    """Markdown: `accuracy_tables`."""
    return markdown_tables(accuracy_tables(runs, metric))


def sanity_tables(runs: list[RunSummary], metric: str = "accuracy") -> list[Table]:
    """Per method, check and sparsity, the metric's change (points, mean over seeds) caused by the
    check, relative to the same method without checks; none when no run ran a check. A cell's runs
    are the checked ones and the plain ones it compares."""
    tables = []
    for (data, model), group in _groups(runs).items():
        checked = sorted({(r.base_method, r.check) for r in group if r.check})
        if not checked:
            continue
        sparsities = sorted({r.sparsity for r in group if r.check})
        cells = _cells(group, metric)
        table = Table(
            f"{data} · {model}: change in test {metric} (points) under each check, "
            "vs the method without checks (mean over seeds)",
            ["method", "check", *[f"{100 * s:g} %" for s in sparsities]],
        )
        for base, check in checked:
            row = [Entry(base, base), Entry(str(check), check)]
            for sp in sparsities:
                name = f"{base} [{check}]"
                compared = [r for r in group if r.method in (name, base) and r.sparsity == sp]
                checked_cell, plain = cells.get((name, sp)), cells.get((base, sp))
                if checked_cell is not None and plain is not None:
                    change = 100 * (checked_cell.mean - plain.mean)
                    row.append(Entry(f"{change:+.2f}", change, _hashes(compared)))
                else:
                    row.append(Entry("—", None, _hashes(compared)))
            table.rows.append(row)
        tables.append(table)
    return tables


def sanity_table(runs: list[RunSummary], metric: str = "accuracy") -> str:
    """Markdown: `sanity_tables` (empty when no run ran a check)."""
    return markdown_tables(sanity_tables(runs, metric))


NEVER = "never"


def collapse_tables(runs: list[RunSummary]) -> list[Table]:
    """Per method, the lowest sparsity at which a run had a layer with no weight left, with the runs
    that collapsed (or, when none did, those measured). Methods whose runs predate the
    `collapsed_layers` metric are left out."""
    tables = []
    for (data, model), group in _groups(runs).items():
        table = Table(f"{data} · {model}", ["method", "first disconnects at", "runs measured"])
        for method in sorted({r.method for r in group}):
            measured = [r for r in group if r.method == method and "collapsed_layers" in r.final]
            if not measured:
                continue
            collapsed = [r for r in measured if r.final["collapsed_layers"] > 0]
            if collapsed:
                first = min(r.sparsity for r in collapsed)
                where = Entry(f"{100 * first:g} % sparsity", 100 * first, _hashes(collapsed))
            else:
                where = Entry(NEVER, math.inf, _hashes(measured))
            table.rows.append([Entry(method, method), where, Entry(str(len(measured)), len(measured))])
        if table.rows:
            tables.append(table)
    return tables


def collapse_lines(runs: list[RunSummary]) -> str:
    """Markdown: `collapse_tables` as one line per method."""
    parts = []
    for table in collapse_tables(runs):
        lines = [
            f"- {method.text}: " + (NEVER if where.text == NEVER else f"first disconnects at {where.text}")
            for method, where, _ in table.rows
        ]
        parts += [f"### {table.title}", "", *lines, ""]
    return "\n".join(parts)


def potential_tables(runs: list[RunSummary], delta: float = 0.005) -> list[Table]:
    """Prune potential (largest sparsity within δ of dense) per method, clean and under each shift;
    a row's runs are its method's."""
    tables = []
    for (data, model), group in _groups(runs).items():
        shifts = sorted({k for r in group for k in r.final if k.startswith(SHIFT_PREFIX)})
        metrics = ["accuracy", *shifts]
        names = ["clean" if m == "accuracy" else m[len(SHIFT_PREFIX) :] for m in metrics]
        table = Table(f"{data} · {model}: prune potential (δ = {100 * delta:g} points)", ["method", *names])
        for method in _pruned_methods(group):  # the dense model's potential is 0 by definition
            mine = [r for r in group if r.method == method]
            row = [Entry(method, method, _hashes(mine))]
            for metric in metrics:
                dense = _dense(group, metric)
                cells = _cells(mine, metric)
                if not dense.values or not cells:
                    row.append(Entry("—"))
                    continue
                points = [(s, c.mean) for (_, s), c in cells.items()]
                potential = 100 * prune_potential(points, dense.mean, delta)
                row.append(Entry(f"{potential:g} %", potential))
            table.rows.append(row)
        tables.append(table)
    return tables


def potential_table(runs: list[RunSummary], delta: float = 0.005) -> str:
    """Markdown: `potential_tables`."""
    return markdown_tables(potential_tables(runs, delta))


def figure_styles(runs: Iterable[RunSummary]) -> figures.Styles:
    """One colour per method (its variants and sanity checks share it) for every figure of these runs."""
    runs = [r for r in runs if r.sparsity > 0]  # a run of the dense model is the dense line, in black
    names = [figures.method_variant(r.base_method) for r in runs]
    return figures.Styles({m for m, _ in names}, {v for _, v in names} | {r.check for r in runs})


def accuracy_panels(runs: list[RunSummary], metric: str = "accuracy") -> list[figures.Panel]:
    """Per (data set, model): each method's metric against the remaining weights, checks left out."""
    return [
        figures.Panel(
            f"{data} · {model}", _method_curves(group, metric, check=None), _stat(_dense(group, metric))
        )
        for (data, model), group in _groups(runs).items()
    ]


def sanity_panels(runs: list[RunSummary], metric: str = "accuracy") -> list[figures.Panel]:
    """Per (data set, model) and checked method: the method and each of its sanity checks."""
    out = []
    for (data, model), group in _groups(runs).items():
        for base in sorted({r.base_method for r in group if r.check}):
            mine = [r for r in group if r.base_method == base]
            curves = [c for check in [None, *sorted({r.check for r in mine if r.check})]
                      for c in _method_curves(mine, metric, check=check)]  # fmt: skip
            out.append(figures.Panel(f"{base}\n{data} · {model}", curves, _stat(_dense(group, metric))))
    return out


def _method_curves(runs: list[RunSummary], metric: str, *, check: str | None) -> list[figures.Curve]:
    """One curve per method among `runs` whose check is `check`: (remaining, mean ± std over seeds).

    Sparsity 0 is left out: the dense line shows it (a run named "dense" would repeat its label)."""
    cells = _cells([r for r in runs if r.check == check], metric)
    curves: dict[str, figures.Curve] = {}
    for (method, sparsity), cell in sorted(cells.items()):
        if sparsity == 0:
            continue
        base, variant = figures.method_variant(method.removesuffix(f" [{check}]") if check else method)
        curve = curves.setdefault(method, figures.Curve(base, check or variant))
        curve.points.append((1 - sparsity, figures.Stat(cell.mean, cell.std)))
    return list(curves.values())


def excess_error_panels(runs: list[RunSummary]) -> list[figures.Panel]:
    """Per (data set, model, shift): each method's excess error (error increase under the shift
    beyond the clean one, relative to its dense evaluation) against the remaining weights."""
    found: dict[tuple[str, str, str], dict[tuple[str, float], list[float]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for r in runs:
        if r.dense is None or r.check:
            continue
        for k, v in r.final.items():
            if k.startswith(SHIFT_PREFIX) and k in r.dense:
                clean = r.dense["accuracy"] - r.final["accuracy"]
                found[(r.data, r.model, k)][(r.method, r.sparsity)].append((r.dense[k] - v) - clean)
    out = []
    for (data, model, shift), cells in sorted(found.items()):
        curves: dict[str, figures.Curve] = {}
        for (method, sparsity), values in sorted(cells.items()):
            cell = Cell(values)
            curves.setdefault(method, figures.Curve(*figures.method_variant(method))).points.append(
                (1 - sparsity, figures.Stat(cell.mean, cell.std))
            )
        out.append(figures.Panel(f"{data} · {model}\n{shift[len(SHIFT_PREFIX) :]}", list(curves.values())))
    return out


def layer_sparsity_panels(runs: list[RunSummary]) -> dict[str, dict[str, list[tuple[str, float]]]]:
    """Per (data set, model): the layers' sparsities of one run per method (its highest sparsity,
    first seed; checks left out), read from the runs' saved masks."""
    from secateurs.pipeline.outputs import read_checkpoint

    out: dict[str, dict[str, list[tuple[str, float]]]] = {}
    for (data, model), group in _groups(runs).items():
        chosen: dict[str, RunSummary] = {}
        for r in sorted(group, key=lambda r: (r.method, -r.sparsity, r.seed)):
            if r.masks_path and not r.check and r.method not in chosen:
                chosen[r.method] = r
        for method, r in chosen.items():
            _, masks, _ = read_checkpoint(r.masks_path)  # type: ignore[arg-type]
            if masks is not None:
                layers = [(layer.name, layer.sparsity) for layer in masks.report()]
                out.setdefault(f"{data} · {model}", {})[f"{method} ({100 * r.sparsity:g} %)"] = layers
    return out


def report_figures(runs: list[RunSummary], metric: str = "accuracy") -> dict[str, Figure]:
    """Every figure of a report, by file stem, in report order (matplotlib Figures; see `figures`).

    `write_report` saves them; anything else drawing a store's figures should call this too, so the
    colours and the choice of figures stay the same everywhere."""
    styles = figure_styles(runs)
    panels, dense = level_panels(runs, metric)
    drawn = {
        "accuracy_vs_remaining": figures.accuracy_figure(
            accuracy_panels(runs, metric), styles=styles, metric=metric
        ),
        "sanity_checks": figures.sanity_figure(sanity_panels(runs, metric), styles=styles, metric=metric),
        "excess_error": figures.excess_error_figure(excess_error_panels(runs), styles=styles),
        "layer_sparsity": figures.layer_sparsity_figure(layer_sparsity_panels(runs), styles=styles),
        "ticket_curves": figures.ticket_figure(ticket_panels(panels, dense), styles=styles, metric=metric)
        if panels
        else None,
    }
    return {stem: fig for stem, fig in drawn.items() if fig is not None}


def plot_accuracy(runs: list[RunSummary], path: Path, metric: str = "accuracy") -> Path:
    """Accuracy vs remaining weights (log x), one line with an error band per method, saved as PNG + SVG."""
    fig = figures.accuracy_figure(accuracy_panels(runs, metric), styles=figure_styles(runs), metric=metric)
    if fig is None:
        raise ConfigError("no finished runs to draw", fix="run the sweep first")
    return figures.save(fig, path)


def plot_excess_error(runs: list[RunSummary], path: Path) -> Path | None:
    """Excess error under each shift vs remaining weights, saved as PNG + SVG; None without shifts."""
    fig = figures.excess_error_figure(excess_error_panels(runs), styles=figure_styles(runs))
    return None if fig is None else figures.save(fig, path)


def plot_layer_sparsity(runs: list[RunSummary], path: Path) -> Path | None:
    """Per-layer sparsity bars of one run per method, saved as PNG + SVG; None without saved masks."""
    fig = figures.layer_sparsity_figure(layer_sparsity_panels(runs), styles=figure_styles(runs))
    return None if fig is None else figures.save(fig, path)


SECTION_NOTES = {
    "potential": "The largest sparsity whose accuracy stays within δ of the dense model, on clean test "
    "data and\nunder each distribution shift (Liebenwein et al. 2021).",
    "levels": "Per level of the runs' repeat stages: the run itself (ticket) and each control experiment,\n"
    "with the step at which test accuracy peaked while the ticket retrained (early stopping).",
    "sanity": "Accuracy change caused by each sanity check of the pruning criterion (Frankle et al. 2021):\n"
    "a change near zero means the criterion's choice of weights did not matter.",
    "collapse": "The lowest sparsity at which a run had a pruned layer with no weight left "
    "(the network is cut).",
}
"""What each report section shows, in report.md (line breaks kept) and report.html alike."""


def open_results(root: str | Path, store: str | None = None) -> ResultsStore:
    """The store a report reads: ROOT/results.db, or the server store `store` (a URL), whose
    artifact paths are relative to `root`."""
    if store is None and not (Path(root) / DB_NAME).exists():
        raise ConfigError(
            f"no results database at {Path(root) / DB_NAME}", fix="run `secateurs sweep` first or pass --root"
        )
    return store_at(root, store, create=False)


def write_report(
    root: str | Path,
    out: str | Path,
    *,
    name: str | None = None,
    delta: float = 0.005,
    store: str | None = None,
) -> Path:
    """Write report.md and PNGs for the finished runs under results root `root` (recorded in
    `store` when that names a server store) into `out`."""
    if Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(
            f"--out {out} is an existing file; a report is a directory (report.md and its figures)",
            fix="pass a directory (new or existing) to --out",
        )
    with open_results(root, store) as db:
        runs = collect(db, name=name)
        source = db.where
    if not runs:
        raise ConfigError("no finished runs match", fix="check --name, or run the sweep first")
    out_dir = Path(out)
    panels, _ = level_panels(runs)
    images = [figures.save(fig, out_dir / f"{stem}.png") for stem, fig in report_figures(runs).items()]
    levels = [
        "## Levels (lottery tickets)",
        "",
        SECTION_NOTES["levels"],
        "",
        ticket_table(panels),
    ]
    sanity = [
        "## Sanity checks",
        "",
        SECTION_NOTES["sanity"],
        "",
        sanity_table(runs),
    ]
    collapse_text = collapse_lines(runs)
    collapse = [
        "## Layer collapse",
        "",
        SECTION_NOTES["collapse"],
        "",
        collapse_text,
    ]
    text = [
        "# secateurs report",
        "",
        f"{len(runs)} finished runs from `{source}`" + (f" matching `{name}`" if name else "") + ".",
        "",
        "## Accuracy",
        "",
        accuracy_table(runs),
        "## Prune potential",
        "",
        SECTION_NOTES["potential"],
        "",
        potential_table(runs, delta),
        *(levels if panels else []),
        *(sanity if any(r.check for r in runs) else []),
        *(collapse if collapse_text else []),
        "## Plots",
        "",
        *[f"![{p.stem}]({p.name})" for p in images],
        "",
    ]
    return atomic_write_text(out_dir / "report.md", "\n".join(text))
