"""Sweeps: a grid of recipes × sparsities × models × data sets × seeds, run into one results store.

    name: magnitude-vs-sparsity
    recipes:
      - oneshot-magnitude
      - {recipe: iterative-magnitude, label: imp, set: [stages.2.repeat.schedule.rate=0.5]}
    sparsities: [0.5, 0.9]
    models: [mlp, {name: mlp, options: {hidden: [32]}}]
    data: [mnist1d]
    seeds: [0, 1]
    set: [train.epochs=2]          # for every run

An omitted axis keeps each recipe's own value. Every point is validated before anything runs
or is written. Runs are named by config hash, so a sweep is restartable (finished runs are
skipped) and splits into shards (`--shard i/N`) that need no coordinator: each process takes
every N-th run of the sorted hashes, and the store's per-run lock keeps any overlap harmless.

Where the runs execute is a backend (`BACKENDS`): here or in local worker processes (`local`), or
on a cluster engine (`ray`, `slurm`: `results.backends`); all of them write into the same store.
"""

from __future__ import annotations

import functools
import itertools
import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, ValidationError, model_validator

from secateurs.core.config import StrictModel
from secateurs.core.errors import ConfigError
from secateurs.core.fileio import load_yaml, read_config_text
from secateurs.core.plugins import provide
from secateurs.core.registry import Registry
from secateurs.pipeline.hashing import recipe_config, run_hash
from secateurs.pipeline.recipe import Recipe, SourceRef, format_validation_error, load_recipe
from secateurs.results.db import StoreError
from secateurs.results.runner import (
    ALREADY_FINISHED,
    BUSY,
    FAILED,
    FINISHED,
    INTERRUPTED,
    RunOutcome,
    error_text,
    execute,
    store_at,
)
from secateurs.results.workers import run_in_workers

log = logging.getLogger(__name__)


class RecipeEntry(StrictModel):
    """One recipe of the grid: a preset name or YAML path, a label for tables, its own overrides."""

    recipe: str
    label: str | None = None
    overrides: list[str] = Field(default_factory=list, alias="set")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"recipe": value} if isinstance(value, str) else value


class SweepConfig(StrictModel):
    """A sweep file: the axes of the grid (None = keep each recipe's value) and shared overrides."""

    name: str = "sweep"
    recipes: list[RecipeEntry]
    sparsities: list[Annotated[float, Field(ge=0, lt=1)]] | None = None
    models: list[SourceRef] | None = None
    data: list[SourceRef] | None = None
    seeds: list[int] | None = None
    overrides: list[str] = Field(default_factory=list, alias="set")


@dataclass(frozen=True)
class SweepPoint:
    """One validated run of the grid."""

    index: int  # 1-based position in the grid
    recipe: Recipe
    hash: str
    name: str  # the entry's label, else the recipe's name
    description: str  # the axis values, for messages


@dataclass
class SweepSummary:
    """Every outcome of one `run_sweep` call, in the order they completed."""

    outcomes: list[RunOutcome] = field(default_factory=list)
    submitted: list[str] = field(default_factory=list)  # cluster jobs left running, not waited for

    def count(self, *statuses: str) -> int:
        return sum(o.status in statuses for o in self.outcomes)

    @property
    def finished(self) -> int:
        return self.count(FINISHED)

    @property
    def skipped(self) -> int:
        return self.count(ALREADY_FINISHED, BUSY)

    @property
    def failed(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status == FAILED]

    def line(self) -> str:
        counts = f"{self.finished} finished, {self.skipped} skipped, {len(self.failed)} failed"
        if self.submitted:
            counts += f"; submitted job {', '.join(self.submitted)}, not waited for"
        return counts


# -- loading and expanding ------------------------------------------------------------------------
def load_sweep(path: str | Path) -> SweepConfig:
    """Parse and validate a sweep YAML file; every problem is one ConfigError naming the field."""
    source = Path(path)
    text = read_config_text(source, "sweep")
    try:
        raw = load_yaml(text, str(source))
    except yaml.YAMLError as err:
        raise ConfigError(f"YAML syntax error: {getattr(err, 'problem', err)}", where=str(source)) from None
    return parse_sweep(raw, str(source))


def parse_sweep(raw: Any, origin: str = "<sweep>") -> SweepConfig:
    if not isinstance(raw, dict):
        raise ConfigError("a sweep must be a YAML mapping with a `recipes` list", where=origin)
    try:
        return SweepConfig.model_validate(raw)
    except ValidationError as err:
        raise format_validation_error(
            err,
            origin,
            schema=SweepConfig,
            kind="sweep",
            fix="a sweep has name, recipes, sparsities, models, data, seeds and overrides (see README)",
        ) from None


def _flow(value: Any) -> str:
    """A value as one-line YAML that `--set` parses back to exactly this value."""
    return (
        str(yaml.safe_dump(value, default_flow_style=True, width=1 << 30)).strip().removesuffix("...").strip()
    )


def _resolve(source: str, base: Path | None) -> str:
    """A recipe path relative to the sweep file when such a file exists there."""
    if base is not None and not Path(source).is_absolute() and (base / source).is_file():
        return str(base / source)
    return source


def _axis(name: str, values: list[Any] | None) -> list[Any]:
    if values is None:
        return [None]
    if not values:
        raise ConfigError(
            f"the sweep's grid is empty: `{name}` is an empty list",
            fix=f"give `{name}` at least one value, or leave it out to keep each recipe's own",
        )
    return values


def expand_sweep(sweep: SweepConfig, base: Path | None = None) -> list[SweepPoint]:
    """Every grid point as a validated recipe, in grid order; duplicates (same hash) once.

    Overrides apply in this order: the axes, the sweep's `set`, the recipe entry's `set`.
    """
    axes = [
        _axis("recipes", sweep.recipes),
        _axis("sparsities", sweep.sparsities),
        _axis("models", sweep.models),
        _axis("data", sweep.data),
        _axis("seeds", sweep.seeds),
    ]
    points: list[SweepPoint] = []
    seen: set[str] = set()
    grid = list(itertools.product(*axes))
    for index, (entry, sparsity, model, data, seed) in enumerate(grid, start=1):
        overrides, described = [], [f"recipe {entry.label or entry.recipe}"]
        for key, value in (("sparsity", sparsity), ("model", model), ("data", data), ("seed", seed)):
            if value is None:
                continue
            plain = value.model_dump(exclude_defaults=True) if isinstance(value, SourceRef) else value
            overrides.append(f"{key}={_flow(plain)}")
            short = value.label if isinstance(value, SourceRef) and not value.options else plain
            described.append(f"{key} {_flow(short)}")
        description = ", ".join(described)
        try:
            recipe = load_recipe(
                _resolve(entry.recipe, base), [*overrides, *sweep.overrides, *entry.overrides]
            )
        except ConfigError as err:
            raise ConfigError(
                f"sweep point {index} of {len(grid)} ({description}) is invalid: {err.what}",
                where=err.where,
                fix=err.fix,
            ) from None
        run = run_hash(recipe)
        if run in seen:
            log.info("sweep point %d (%s) repeats an earlier point's run %s", index, description, run)
            continue
        seen.add(run)
        points.append(SweepPoint(index, recipe, run, entry.label or recipe.name, description))
    return points


# -- shards ---------------------------------------------------------------------------------------
_SHARD = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


def parse_shard(text: str) -> tuple[int, int]:
    """`"i/N"` → (i, N) with 1 ≤ i ≤ N."""
    match = _SHARD.fullmatch(text)
    fix = "write --shard i/N with 1 ≤ i ≤ N, e.g. --shard 1/4 ... --shard 4/4 in four processes"
    if match is None:
        raise ConfigError(f"shard {text!r} is not of the form i/N", fix=fix)
    index, count = int(match.group(1)), int(match.group(2))
    if not 1 <= index <= count:
        raise ConfigError(f"shard {text!r} is out of range: i must be between 1 and N", fix=fix)
    return index, count


def select_shard(points: list[SweepPoint], index: int, count: int) -> list[SweepPoint]:
    """Shard `index` of `count`: every count-th run of the sorted hashes, kept in grid order.

    Depends only on the set of hashes, so N processes given the same sweep agree on the split
    without talking to each other, and the shards are disjoint and cover the grid.
    """
    ordered = sorted(p.hash for p in points)
    mine = set(ordered[index - 1 :: count])
    return [p for p in points if p.hash in mine]


# -- running --------------------------------------------------------------------------------------
def _init_worker() -> None:
    """Workers share the CPU cores: one thread each avoids oversubscribing them."""
    import torch

    torch.set_num_threads(1)


def _execute_point(point: SweepPoint, root: str, store: str | None = None) -> RunOutcome:
    """Run one point; a failure (already recorded in the store by `execute`) becomes an outcome.

    A store that cannot be used (damaged, read-only) is raised instead: it is no run's failure,
    and every other run would report it again.
    """
    try:
        return execute(point.recipe, root, name=point.name, store=store)
    except StoreError:
        raise
    except Exception as err:
        return RunOutcome(point.hash, point.name, FAILED, error=error_text(err))


Record = Callable[[RunOutcome], None]
Dispatch = Callable[[list[SweepPoint], str, Record, str | None], Sequence[str] | None]
"""Runs the points into the store at the root (or the server store whose URL is the last
argument, None for `root/results.db`: pass it on to `_execute_point`), calling `record` with each
outcome as it arrives; returns the ids of cluster jobs it submitted and did not wait for (None:
it waited for all)."""


class SweepBackend:
    """Where a sweep's runs execute. `session(store)` is entered before the store is touched, so a
    backend that cannot start (a library missing, a cluster that does not answer, or one the store
    cannot serve) writes nothing; it yields the `Dispatch` that runs the points."""

    def session(self, store: str | None = None) -> AbstractContextManager[Dispatch]:
        raise NotImplementedError

    def spans_hosts(self) -> bool:
        """Whether the runs may execute on machines other than this one (so a SQLite store on a
        network filesystem would be shared between hosts, `secateurs.results.netfs`)."""
        return False


BACKENDS: Registry[Callable[..., SweepBackend]] = Registry("sweep backend")
provide("sweep backend", "secateurs.results.backends")  # ray and slurm, imported when named


@BACKENDS.register("local", "here, one run after another, or in --workers local processes")
@dataclass
class LocalBackend(SweepBackend):
    """The runs here (`workers` 1) or in that many spawned processes, one torch thread each."""

    workers: int = 1

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}")

    @contextmanager
    def session(self, store: str | None = None) -> Iterator[Dispatch]:
        yield self.dispatch

    def dispatch(self, points: list[SweepPoint], root: str, record: Record, store: str | None = None) -> None:
        if self.workers == 1 or len(points) <= 1:
            for point in points:
                record(_execute_point(point, root, store))
        else:
            _run_in_workers(points, root, min(self.workers, len(points)), record, store)


def make_backend(
    backend: str | SweepBackend = "local", *, workers: int = 1, options: Mapping[str, Any] | None = None
) -> SweepBackend:
    """The backend named (its options checked), or the one given; `workers` is the local backend's."""
    if isinstance(backend, SweepBackend):
        if options:
            raise ConfigError("a backend object takes its options itself, not through `options`")
        return backend
    if backend != "local" and workers != 1:
        raise ConfigError(
            f"--workers is an option of the local backend, not {backend}",
            fix="leave out --workers; the cluster backends take --cpus-per-run",
        )
    options = {"workers": workers, **(options or {})} if backend == "local" else dict(options or {})
    return BACKENDS.build(backend, **options)  # type: ignore[return-value]


def run_sweep(
    points: list[SweepPoint],
    root: str | Path,
    *,
    workers: int = 1,
    progress: bool = False,
    on_outcome: Callable[[RunOutcome], None] | None = None,
    backend: str | SweepBackend = "local",
    options: Mapping[str, Any] | None = None,
    store: str | None = None,
) -> SweepSummary:
    """Run the points into the store at `root`: finished ones are skipped, failures recorded.

    With `workers` > 1, runs go to that many spawned processes (one torch thread each);
    with 1 they run here, one after another. A Ctrl-C is raised as KeyboardInterrupt once the
    runs in progress have stopped; they stay `running` in the store, and the next call resumes
    them after their last completed stage. `backend` "ray" or "slurm" (with their `options`,
    see `results.backends`) runs them on a cluster instead, into the same store. `store` (a
    `postgresql://` URL) records the runs in a server store instead of `root/results.db`; the
    run directories stay under `root`.
    """
    runner = make_backend(backend, workers=workers, options=options)
    summary = SweepSummary()
    with runner.session(store) as dispatch:
        with store_at(root, store) as db:
            db.add_runs([(p.hash, p.name, recipe_config(p.recipe)) for p in points])
        with _progress_bar(progress, len(points)) as advance:

            def record(outcome: RunOutcome) -> None:
                summary.outcomes.append(outcome)
                log.info("%s", outcome.message)
                if on_outcome is not None:
                    on_outcome(outcome)
                advance()

            summary.submitted = list(dispatch(points, str(root), record, store) or ())
    return summary


def _run_in_workers(
    points: list[SweepPoint],
    root: str,
    workers: int,
    record: Callable[[RunOutcome], None],
    store: str | None = None,
) -> None:
    """The points in worker processes (`results.workers`: they stop with the sweep, however it stops)."""

    def lost(point: SweepPoint, why: str) -> None:
        record(RunOutcome(point.hash, point.name, FAILED, error=why))

    def interrupted(point: SweepPoint) -> None:
        record(RunOutcome(point.hash, point.name, INTERRUPTED))

    run_in_workers(
        points,
        functools.partial(_execute_point, root=root, store=store),
        workers,
        done=lambda _, outcome: record(outcome),
        lost=lost,
        interrupted=interrupted,
        initializer=_init_worker,
    )


@contextmanager
def _progress_bar(enabled: bool, total: int) -> Iterator[Callable[[], None]]:
    """One bar over the whole sweep (the runs' own bars are off), or nothing when disabled."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]sweep"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not enabled,
    ) as bar:
        task = bar.add_task("sweep", total=total)
        yield lambda: bar.advance(task)
