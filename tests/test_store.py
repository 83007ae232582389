"""Specification of the results store: run names, the database, and running a recipe through it.

A run is named by the hash of its full config, recorded in `ROOT/results.db` and kept in
`ROOT/runs/<hash>/`. Running a finished config again computes nothing; a failure is recorded
with its error and the next attempt resumes after the last completed stage. The tiny recipe
is an MLP 20-16-3 on synthetic data (368 prunable weights): a global prune to 0.5 keeps 184.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from tiny import tiny_recipe

import secateurs
import secateurs.results.db as db_module
from secateurs.core.errors import ConfigError, SecateursError
from secateurs.pipeline.outputs import read_checkpoint
from secateurs.pipeline.recipe import Recipe, load_recipe, recipe_from_raw
from secateurs.pipeline.runner import STATE_FILE, MetricEvent, Pipeline, run_recipe
from secateurs.results import ResultsDB, execute, run_dir, run_hash
from secateurs.results.db import SCHEMA_VERSION, export_rows, flatten, render_export
from secateurs.results.runner import ALREADY_FINISHED, BUSY, FINISHED, run_lock

RAW: dict[str, Any] = tiny_recipe(
    {"train": {}},
    {"prune": {}},
    {"evaluate": {"label": "pruned"}},
    {"train": {"iterations": 2}},
    {"evaluate": {"label": "final"}},
)


def tiny(*overrides: str) -> Recipe:
    return recipe_from_raw(RAW, "<tiny>", list(overrides))


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def rows(db: ResultsDB, run: str) -> list[tuple[Any, ...]]:
    return [(r.stage, r.kind, r.level, r.step, r.name, r.value) for r in db.metrics(run)]


def event_rows(events: list[MetricEvent]) -> list[tuple[Any, ...]]:
    return [(e.stage, e.kind, e.level, e.step, k, v) for e in events for k, v in e.metrics.items()]


# -- run names --------------------------------------------------------------------------------
PINNED_HASHES = {
    "admm": "19f04ba00e17cbdd",
    "dynamic-sparse": "23ca4c8e1271da31",
    "edge-popup": "8b8af2609069996e",
    "gradual-magnitude": "e0aab1fe3938c484",
    "iterative-magnitude": "e458d12daca5db47",
    "lottery-ticket": "48eb053d54e0244c",
    "oneshot-magnitude": "cc5ed089cdafbfd0",
    "prune-at-init": "720d6c9418f357a3",
}


@pytest.mark.parametrize("preset", sorted(PINNED_HASHES))
def test_the_hash_of_a_preset_is_pinned_so_stored_results_stay_findable(preset: str) -> None:
    # Changing a value orphans every stored run: only change it with the recipe schema. Training-time
    # methods, reset options and every registered component hash as they did before they were plug-ins.
    assert run_hash(load_recipe(preset)) == PINNED_HASHES[preset]


def test_key_order_and_spelled_out_defaults_do_not_change_the_hash() -> None:
    reordered = {key: RAW[key] for key in reversed(list(RAW))}
    reordered["data"] = {"options": dict(reversed(list(RAW["data"]["options"].items()))), "name": "synthetic"}
    explicit = {**RAW, "seed": 0, "description": "", "init_from": None}
    text = yaml.safe_dump(reordered, sort_keys=False)
    assert text.index("stages") < text.index("name: tiny")  # really written in another order
    hashes = {run_hash(tiny()), run_hash(recipe_from_raw(reordered)), run_hash(recipe_from_raw(explicit))}
    assert len(hashes) == 1 and len(hashes.pop()) == 16


@pytest.mark.parametrize(
    "override",
    [
        "seed=1",
        "sparsity=0.75",
        "model.options.hidden=[17]",
        "stages.2.evaluate.label=x",
        "train.eval_every=1",
    ],
)
def test_any_changed_field_changes_the_hash(override: str) -> None:
    assert run_hash(tiny(override)) != run_hash(tiny())


# -- executing a run --------------------------------------------------------------------------
def test_execute_records_the_run_its_metrics_and_its_files(tmp_path: Path) -> None:
    recipe = tiny()
    events: list[MetricEvent] = []
    reference = run_recipe(recipe, on_metrics=events.append)

    outcome = execute(recipe, tmp_path, name="my run")
    run = run_hash(recipe)
    assert (outcome.hash, outcome.name, outcome.status, outcome.attempts) == (run, "my run", FINISHED, 1)
    assert outcome.final["nonzero_macs"] == 184 and outcome.final == reference.final

    directory = run_dir(tmp_path, run)
    assert sorted(p.name for p in directory.iterdir()) == [".lock", "metrics.json", "model.pt", "recipe.yaml"]
    assert json.loads((directory / "metrics.json").read_text()) == reference.records
    assert load_recipe(directory / "recipe.yaml") == recipe
    state, masks, _ = read_checkpoint(directory)
    assert masks is not None and masks.kept() == 184
    for key, value in reference.model.state_dict().items():
        assert torch.equal(state[key], value), key

    with ResultsDB(tmp_path / "results.db") as db:
        record = db.get_run(run)
        assert record is not None
        assert (record.name, record.status, record.attempts, record.error) == ("my run", "finished", 1, None)
        assert record.version == secateurs.__version__
        assert record.config == recipe.model_dump(mode="json", by_alias=True)
        assert record.started is not None and record.finished is not None and record.started < record.finished
        assert rows(db, run) == event_rows(events)  # every event, in order, exactly once
        assert [e.stage for e in events if e.kind == "evaluate"] == [3, 5]
        assert db.final_metrics(run) == events[-1].metrics
        assert db.artifacts(run) == {
            "metrics": f"runs/{run}/metrics.json",
            "model": f"runs/{run}/model.pt",
            "recipe": f"runs/{run}/recipe.yaml",
        }


def test_a_finished_config_is_not_run_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = execute(tiny(), tmp_path)
    before = files(tmp_path)
    with ResultsDB(tmp_path / "results.db") as db:
        record, metric_rows = db.get_run(first.hash), rows(db, first.hash)
    monkeypatch.setattr(Pipeline, "__init__", lambda *a, **k: pytest.fail("recomputed a finished run"))

    again = execute(recipe_from_raw(json.loads(json.dumps(RAW))), tmp_path)  # an equal, separate recipe
    assert (again.hash, again.status, again.attempts) == (first.hash, ALREADY_FINISHED, 1)
    assert again.final == {k: v for k, v in first.final.items() if k not in ("label", "level")}
    assert "already finished" in again.message
    assert files(tmp_path) == before
    with ResultsDB(tmp_path / "results.db") as db:
        assert db.get_run(first.hash) == record and rows(db, first.hash) == metric_rows


def test_a_failure_is_recorded_and_the_next_attempt_resumes_without_duplicates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = tiny()
    clean_events: list[MetricEvent] = []
    clean = run_recipe(recipe, on_metrics=clean_events.append)
    original = Pipeline._evaluate

    def explode_at_the_end(self: Pipeline, stage: Any, level: int | None) -> None:
        if stage.label == "final":
            raise SecateursError("evaluation exploded\nsecond line")
        original(self, stage, level)

    monkeypatch.setattr(Pipeline, "_evaluate", explode_at_the_end)
    with pytest.raises(SecateursError, match="evaluation exploded"):
        execute(recipe, tmp_path)
    run = run_hash(recipe)
    with ResultsDB(tmp_path / "results.db") as db:
        record = db.get_run(run)
        assert record is not None
        assert (record.status, record.attempts) == ("failed", 1)
        assert record.error == "SecateursError: evaluation exploded"
        assert {r[0] for r in rows(db, run)} == {1, 3, 4}  # stages 1-4 done; their metrics are kept
    assert (run_dir(tmp_path, run) / STATE_FILE).is_file()

    monkeypatch.setattr(Pipeline, "_evaluate", original)
    outcome = execute(recipe, tmp_path)
    assert (outcome.status, outcome.attempts, outcome.resumed_from) == (FINISHED, 2, 4)
    assert outcome.final == clean.final
    with ResultsDB(tmp_path / "results.db") as db:
        record = db.get_run(run)
        assert record is not None and (record.status, record.error) == ("finished", None)
        assert rows(db, run) == event_rows(clean_events)
    assert not (run_dir(tmp_path, run) / STATE_FILE).exists()  # model.pt holds the result now


def test_rows_of_a_stage_cut_short_are_not_duplicated_on_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = tiny()
    clean_events: list[MetricEvent] = []
    run_recipe(recipe, on_metrics=clean_events.append)
    original = Pipeline._save_state

    def die_before_saving_stage_4(self: Pipeline) -> None:
        if self.counter == 4:  # stage 4 (train) has written its metric rows; its state is not saved
            raise KeyboardInterrupt
        original(self)

    monkeypatch.setattr(Pipeline, "_save_state", die_before_saving_stage_4)
    with pytest.raises(KeyboardInterrupt):
        execute(recipe, tmp_path)
    run = run_hash(recipe)
    with ResultsDB(tmp_path / "results.db") as db:
        assert {r[0] for r in rows(db, run)} == {1, 3, 4}
    monkeypatch.setattr(Pipeline, "_save_state", original)
    outcome = execute(recipe, tmp_path)
    assert (outcome.status, outcome.attempts, outcome.resumed_from) == (FINISHED, 2, 3)
    with ResultsDB(tmp_path / "results.db") as db:
        assert rows(db, run) == event_rows(clean_events)


def test_an_interrupt_leaves_the_run_running_and_a_later_execute_resumes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Pipeline._evaluate

    def interrupt(self: Pipeline, stage: Any, level: int | None) -> None:
        if stage.label == "final":
            raise KeyboardInterrupt
        original(self, stage, level)

    monkeypatch.setattr(Pipeline, "_evaluate", interrupt)
    with pytest.raises(KeyboardInterrupt):
        execute(tiny(), tmp_path)
    with ResultsDB(tmp_path / "results.db") as db:
        record = db.get_run(run_hash(tiny()))
        assert record is not None and (record.status, record.attempts, record.error) == ("running", 1, None)
    monkeypatch.setattr(Pipeline, "_evaluate", original)
    outcome = execute(tiny(), tmp_path)
    assert (outcome.status, outcome.attempts, outcome.resumed_from) == (FINISHED, 2, 4)


def test_a_run_locked_by_another_process_is_skipped_untouched(tmp_path: Path) -> None:
    recipe = tiny()
    run = run_hash(recipe)
    with run_lock(run_dir(tmp_path, run)) as held:
        assert held
        outcome = execute(recipe, tmp_path)
    assert (outcome.status, outcome.attempts) == (BUSY, 0)
    with ResultsDB(tmp_path / "results.db") as db:
        record = db.get_run(run)
        assert record is not None and (record.status, record.attempts) == ("pending", 0)
        assert db.metrics(run) == []
    assert execute(recipe, tmp_path).status == FINISHED  # the lock is free again


# -- the database -----------------------------------------------------------------------------
def test_a_new_database_has_the_schema_in_wal_mode(tmp_path: Path) -> None:
    with ResultsDB(tmp_path / "results.db") as db:
        assert db.list_runs() == []
    conn = sqlite3.connect(tmp_path / "results.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert dict(conn.execute("SELECT key, value FROM meta")) == {
            "schema_version": str(SCHEMA_VERSION),
            "created_by": "secateurs",
        }
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert tables == {"meta", "runs", "metrics", "artifacts"}
        index = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'metrics_run'").fetchone()[0]
        assert "metrics (run, stage)" in index
    finally:
        conn.close()


def _foreign_sqlite(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (text TEXT)")
    conn.execute("INSERT INTO notes VALUES ('mine')")
    conn.commit()
    conn.close()


def _newer_schema(path: Path) -> None:
    with ResultsDB(path):
        pass
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_text("just some notes\n"), "is not a secateurs results database"),
        (
            lambda p: p.write_bytes(b"SQLite format 3\x00" + b"\x07" * 200),
            r"is damaged: its SQLite header is damaged .*Fix: restore results.db from a copy",
        ),
        (_foreign_sqlite, "is not a secateurs results database"),
        (_newer_schema, "written by a newer secateurs .* upgrade secateurs"),
    ],
    ids=["text", "corrupt", "foreign-sqlite", "newer-schema"],
)
def test_a_database_that_is_not_ours_or_is_newer_is_refused_and_left_alone(
    tmp_path: Path, make: Any, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    make(tmp_path / "results.db")
    before = files(tmp_path)
    monkeypatch.setattr(Pipeline, "__init__", lambda *a, **k: pytest.fail("ran despite a bad database"))
    with pytest.raises(SecateursError, match=message):
        execute(tiny(), tmp_path)
    with pytest.raises(SecateursError, match=message):
        ResultsDB(tmp_path / "results.db", create=False)
    assert files(tmp_path) == before  # nothing written, not even runs/


def test_a_database_locked_for_too_long_is_a_clear_error_and_nothing_is_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "results.db"
    with ResultsDB(path) as db:
        db.add_runs([("kept", "k", {})])
    monkeypatch.setattr(db_module, "TIMEOUT_S", 0.2)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holding the write lock
    try:
        with ResultsDB(path) as db:
            with pytest.raises(
                SecateursError, match=r"the results database failed \(database is locked\).*stop the other"
            ):
                db.add_runs([("new", "n", {})])
            assert [r.hash for r in db.list_runs()] == ["kept"]  # readers are not blocked (WAL)
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_reading_a_missing_database_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no results database at .*Fix: run `secateurs sweep` first"):
        ResultsDB(tmp_path / "results.db", create=False)
    assert list(tmp_path.iterdir()) == []


def test_finding_and_filtering_runs(tmp_path: Path) -> None:
    with ResultsDB(tmp_path / "results.db") as db:
        assert db.add_runs([("abc123", "imp-a", {"sparsity": 0.5}), ("abd456", "omp", {})]) == 2
        assert db.add_runs([("abc123", "renamed", {})]) == 0  # an existing run is left as it is
        assert db.find_run("abc").name == "imp-a" and db.find_run("abd456").name == "omp"
        with pytest.raises(ConfigError, match="'ab' matches several runs"):
            db.find_run("ab")
        with pytest.raises(ConfigError, match="no run 'a_c'"):
            db.find_run("a_c")  # LIKE wildcards are taken literally
        assert [r.hash for r in db.list_runs(name="imp*")] == ["abc123"]
        assert [r.sparsity for r in db.list_runs()] == [0.5, None]
        assert db.claim("abc123", version="v", git_revision=None) == 1
        assert [r.hash for r in db.list_runs(status="running")] == ["abc123"]
        with pytest.raises(
            ConfigError, match=r"unknown run status 'done'.*pending, running, finished, failed"
        ):
            db.list_runs(status="done")


# -- export -----------------------------------------------------------------------------------
def test_flatten_makes_dotted_keys_and_keeps_lists() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}, "f": None}) == {
        "a.b": 1,
        "a.c.d": [1, 2],
        "e": {},
        "f": None,
    }


def test_export_has_one_flat_row_per_run_with_final_metrics(tmp_path: Path) -> None:
    execute(tiny(), tmp_path)
    execute(tiny("sparsity=0.75", "name=quarter"), tmp_path)
    with ResultsDB(tmp_path / "results.db") as db:
        exported = export_rows(db)
    assert [(r["name"], r["config.sparsity"], r["final.nonzero_macs"]) for r in exported] == [
        ("tiny", 0.5, 184.0),
        ("quarter", 0.75, 92.0),
    ]
    assert exported[0]["config.model.options.hidden"] == [16] and exported[0]["status"] == "finished"
    assert json.loads(render_export(exported, "json")) == exported
    import csv
    import io

    table = list(csv.DictReader(io.StringIO(render_export(exported, "csv"))))
    assert [row["hash"] for row in table] == [r["hash"] for r in exported]
    assert table[1]["final.nonzero_macs"] == "92.0" and table[1]["config.model.options.hidden"] == "[16]"
    assert table[0]["error"] == "" and table[0]["attempts"] == "1"


def test_labels_do_not_change_the_hash_but_every_setting_does() -> None:
    base = load_recipe("oneshot-magnitude")
    assert run_hash(
        load_recipe("oneshot-magnitude", ["name=renamed", "description=other words"])
    ) == run_hash(base)
    changed = [
        "seed=1",
        "sparsity=0.8",
        "stages.2.prune.criterion=random",
        "train.optimizer.lr=0.2",
        "stages.4.reset.mode=reinit",
        "stages.1.evaluate.beyond=true",
    ]
    hashes = {run_hash(load_recipe("oneshot-magnitude", [o])) for o in changed}
    assert len(hashes) == len(changed) and run_hash(base) not in hashes


def test_a_schedule_at_its_defaults_is_still_told_apart_from_another() -> None:
    def with_schedule(schedule: str) -> str:
        raw = {**RAW, "stages": [{"repeat": {"schedule": {"name": schedule}, "stages": [{"prune": {}}]}}]}
        return run_hash(recipe_from_raw(raw))

    assert with_schedule("oneshot") != with_schedule("iterative")
