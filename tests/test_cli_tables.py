"""Specification: every table the CLI prints reads in an 80-column terminal (issue 19, CLI friction).

Before: `runs --show` printed its evaluations as a 16-column table of "…", `methods` wrapped each
description over 3–5 lines, run tables cut names short and kept an empty level column, the demo
wrapped every method name over three lines, sweep and `runs` tables had no seed (the sweep no
sparsity) and the report put the dense accuracy under the "50 %" column. Now no line is wider than
80 cells and no cell is a bare "…"; long labels become keys with a legend; `--wide` cuts nothing and
`--json` prints the data for scripts. Issue 23: the keys are short labels where one fits (the
caller's own, else the label's words cut to prefixes), and a table split over several keeps its
labels whole while a few value columns fit beside them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from rich.cells import cell_len
from rich.console import Console, Group
from tiny import tiny_recipe
from typer.testing import CliRunner

import secateurs.front.cli as cli
import secateurs.front.console as console_module
from secateurs.data import load_dataset
from secateurs.front.catalogue import stored_catalogue
from secateurs.front.demo import DEMO_METHODS, DEMO_SHORT, demo_table
from secateurs.front.tables import Column, abbreviate, cut, fit, markdown, print_tables
from secateurs.models import build_model
from secateurs.pipeline.recipe import recipe_from_raw
from secateurs.results import ResultsDB, execute
from secateurs.results.db import RUN_FIELDS
from secateurs.results.report import DENSE_COLUMN, accuracy_table, collect

WIDTH = 80
LONG_NAMES = {"magnitude": "magnitude-pruned-mlp-with-a-long-descriptive-name", "random": "random"}


def recipe(criterion: str, sparsity: float, seed: int) -> Any:
    """The tiny MLP with every beyond-accuracy metric: dense and pruned evaluations of 30-odd metrics."""
    stages = [
        {"train": {}},
        {"evaluate": {"label": "dense", "latency": False}},
        {"prune": {"criterion": criterion}},
        {"evaluate": {"label": "pruned", "latency": False}},
    ]
    return recipe_from_raw(tiny_recipe(*stages, sparsity=sparsity, seed=seed, beyond=True))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("results")
    for criterion, name in LONG_NAMES.items():
        for sparsity in (0.5, 0.9):
            for seed in (3, 12345):
                execute(recipe(criterion, sparsity, seed), root, name=name)
    return root


@pytest.fixture(autouse=True)
def narrow(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's consoles as an 80-column terminal would have them."""
    monkeypatch.setattr(cli, "console", console_module.make_console(width=WIDTH))
    monkeypatch.setattr(cli, "err_console", console_module.make_console(width=WIDTH, stderr=True))
    monkeypatch.setattr(console_module, "err_console", console_module.make_console(width=WIDTH, stderr=True))


def invoke(*args: str) -> Any:
    result = CliRunner().invoke(cli.app, list(args))
    assert result.exit_code == 0, result.output
    return result


def assert_fits(text: str, width: int = WIDTH) -> None:
    """No line wider than `width` cells, and no cell that is a bare "…" (a value cut to nothing)."""
    for line in text.splitlines():
        assert cell_len(line) <= width, (cell_len(line), line)
        assert not re.search(r"(^|\s)…(\s|$)", line), line


def cells(line: str) -> list[str]:
    """The cells of one row of a compact table (columns are two or more spaces apart)."""
    return re.split(r"\s{2,}", line.strip())


LEGEND_LINE = re.compile(r"^(\S.*?) += (.+)$")
"""`short = label` under a table (the short label padded so the `=` signs align)."""


def squash(text: str) -> str:
    """`text` without whitespace: a legend's label wrapped over lines, compared with the label."""
    return "".join(text.split())


def named(keys: dict[str, str], cells: list[str]) -> list[str]:
    """What each cell names (its legend entry, or itself), squashed."""
    return [squash(keys.get(cell, cell)) for cell in cells]


def legend(text: str) -> dict[str, str]:
    """The legend lines under the tables: short label (or `#n` key) -> label (a label wrapped
    over several lines continues under itself)."""
    found: dict[str, str] = {}
    key, indent = None, 0
    for line in text.splitlines():
        match = LEGEND_LINE.match(line)
        if match:
            key, indent = match.group(1), match.start(2)
            found[key] = match.group(2).rstrip()
        elif key is not None and line[:indent].isspace() and line[indent : indent + 1].strip():
            found[key] += " " + line.strip()  # wrapped under itself (at a space, or folded mid-word)
        else:
            key = None
    return found


def table_rows(text: str, header: str) -> tuple[list[str], list[list[str]]]:
    """The header cells and the rows (cells) of the table whose header line starts with `header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:  # the header, then the rule under it
        if not line.strip() or LEGEND_LINE.match(line) or re.match(r"failed \(|.* in every row", line):
            break
        rows.append(cells(line))
    return cells(lines[start]), rows


# -- runs ---------------------------------------------------------------------------------------
def test_runs_fits_80_columns_with_seed_and_sparsity_and_a_legend_for_long_names(root: Path) -> None:
    out = invoke("runs", "--root", str(root)).stdout
    assert_fits(out)
    header, rows = table_rows(out, "hash")
    assert header == ["hash", "name", "status", "seed", "sparsity", "acc.", "attempts"]
    keys = legend(out)
    with ResultsDB(root / "results.db", create=False) as db:
        records = {r.hash: r for r in db.list_runs()}
        finals = {h: db.final_metrics(h)["accuracy"] for h in records}
    assert sorted(row[0] for row in rows) == sorted(records)
    for row in rows:
        record = records[row[0]]
        assert named(keys, [row[1]]) == [squash(record.name)]  # the name, or a key the legend explains
        assert row[3] == str(record.config["seed"])  # 12345, not "12,345"
        assert row[4] == f"{record.config['sparsity']:.4f}"
        assert row[5] == f"{finals[row[0]]:.4f}"
    explained = named(keys, list(keys))
    assert squash(LONG_NAMES["magnitude"]) in explained and "random" not in explained  # short names stay


def test_runs_wide_prints_every_name_in_full(root: Path) -> None:
    out = invoke("runs", "--root", str(root), "--wide").stdout
    assert not legend(out)
    assert sum(LONG_NAMES["magnitude"] in line for line in out.splitlines()) == 4


def test_runs_json_holds_every_field(root: Path) -> None:
    found = json.loads(invoke("runs", "--root", str(root), "--json").stdout)
    with ResultsDB(root / "results.db", create=False) as db:
        records = db.list_runs()
        assert [run["hash"] for run in found] == [r.hash for r in records]
        for run, record in zip(found, records, strict=True):
            assert {key: run[key] for key in RUN_FIELDS} == {key: getattr(record, key) for key in RUN_FIELDS}
            assert run["config"] == record.config and run["final"] == db.final_metrics(record.hash)
            assert (run["seed"], run["sparsity"]) == (record.config["seed"], record.config["sparsity"])
            assert run["accuracy"] == run["final"]["accuracy"]


def show(root: Path) -> tuple[str, str]:
    """A run's hash and what `secateurs runs --show` prints for it in a real 80-column process."""
    with ResultsDB(root / "results.db", create=False) as db:
        run = db.list_runs(name="random")[0].hash
    env = {**os.environ, "COLUMNS": str(WIDTH)}
    done = subprocess.run(
        [sys.executable, "-m", "secateurs", "runs", "--root", str(root), "--show", run],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return run, done.stdout


def test_runs_show_is_key_value_and_reads_in_80_columns(root: Path) -> None:
    run, out = show(root)
    assert_fits(out)
    with ResultsDB(root / "results.db", create=False) as db:
        record = db.get_run(run)
        rows = [m for m in db.metrics(run) if m.kind == "evaluate"]
    assert record is not None
    details = out[: out.index("beyond:")]  # the key/value block above the config
    assert re.search(rf"^name\s+{record.name}\s*$", details, re.MULTILINE)
    assert re.search(rf"^seed\s+{record.config['seed']}\s*$", details, re.MULTILINE)
    assert re.search(r"^sparsity\s+0\.\d{4}\s*$", details, re.MULTILINE)
    assert not re.search(r"^error", details, re.MULTILINE)  # an empty field is left out
    evaluate = out[out.index("evaluate metrics") :]
    stages = sorted({m.stage for m in rows})
    assert cells(evaluate.splitlines()[1]) == ["metric", *(f"stage {s}" for s in stages)]
    names = list(dict.fromkeys(m.name for m in rows))
    assert len(names) > 16  # the table that was 16 columns of "…"
    for name in names:  # one row per metric, its value under each evaluation
        line = next(line for line in evaluate.splitlines() if line.split()[:1] == [name])
        values = {m.stage: m.value for m in rows if m.name == name}
        assert cells(line)[1:] == [cli._metric(values[s]) for s in stages if s in values], line


def test_runs_show_json_holds_every_metric(root: Path) -> None:
    with ResultsDB(root / "results.db", create=False) as db:
        record = db.list_runs()[0]
        stored = db.metrics(record.hash)
        files = db.artifacts(record.hash)
    shown = json.loads(invoke("runs", "--root", str(root), "--show", record.hash[:8], "--json").stdout)
    assert {key: shown[key] for key in RUN_FIELDS} == {key: getattr(record, key) for key in RUN_FIELDS}
    assert shown["config"] == record.config and set(shown["files"]) == set(files)
    flat = [
        (e["stage"], e["kind"], e["level"], e["step"], name, value, e["control"])
        for e in shown["events"]
        for name, value in e["metrics"].items()
    ]
    expected = [(m.stage, m.kind, m.level, m.step, m.name, m.value, m.control) for m in stored]
    assert sorted(flat, key=repr) == sorted(expected, key=repr)


# -- methods ------------------------------------------------------------------------------------
def test_methods_is_one_line_per_name_in_80_columns() -> None:
    out = invoke("methods").stdout
    assert_fits(out)
    stored = stored_catalogue()
    lines = out.splitlines()
    for c in stored.components:
        axis = lines.index(c.axis)  # a heading per axis, its components below it
        line = next(line for line in lines[axis + 1 :] if line.split()[:1] == [c.name])
        shown = line.split(None, 1)[1] if len(line.split()) > 1 else ""
        first = cli.summary(c.help)
        assert shown == first or (shown.endswith("…") and first.startswith(shown[:-1].rstrip())), (c, line)
    for p in stored.presets:
        assert any(line.split()[:1] == [p.name] for line in lines), p.name
    assert "options:" not in out  # behind `methods NAME` and --wide


def test_methods_name_shows_the_whole_help_and_options() -> None:
    out = invoke("methods", "grasp").stdout
    assert_fits(out)
    grasp = next(c for c in stored_catalogue().components if c.name == "grasp")
    flat = " ".join(out.split())
    assert " ".join(grasp.help.split()) in flat and " ".join(grasp.options.split()) in flat
    preset = " ".join(invoke("methods", "lottery-ticket").stdout.split())
    description = next(p.description for p in stored_catalogue().presets if p.name == "lottery-ticket")
    assert " ".join(description.split()) in preset and "secateurs run lottery-ticket" in preset
    result = CliRunner().invoke(cli.app, ["methods", "grsap"])
    assert result.exit_code == 2 and "no component or preset named 'grsap'" in result.stderr
    assert "did you mean grasp" in result.stderr


def test_methods_wide_and_json_hold_everything() -> None:
    stored = stored_catalogue()
    wide = invoke("methods", "--wide").stdout
    assert max(cell_len(line) for line in wide.splitlines()) > WIDTH  # nothing folded or cut
    for c in stored.components:
        assert c.help in wide and (not c.options or f"options: {c.options}" in wide), c
    found = json.loads(invoke("methods", "--json").stdout)
    assert found == {
        "components": [asdict(c) for c in stored.components],
        "presets": [asdict(p) for p in stored.presets],
    }


def test_cut_ends_a_cut_text_with_an_ellipsis_at_a_word() -> None:
    assert cut("short", 10) == "short"
    assert cut("one two three four", 12) == "one two…"
    assert cell_len(cut("x" * 50, 10)) == 10 and cut("x" * 50, 10).endswith("…")


# -- short labels (issue 23) --------------------------------------------------------------------
def test_abbreviate_cuts_words_to_prefixes_the_first_word_last() -> None:
    label = "magnitude at init [shuffle]"  # 27 cells
    assert abbreviate(label, 27) == label
    assert abbreviate(label, 26) == "magnitude at init [shuff.]"  # 5 letters, the first word kept
    assert abbreviate(label, 23) == "magni. at init [shuff.]"  # the first word too
    assert abbreviate(label, 21) == "magn. at init [shuf.]"  # 4 letters
    assert abbreviate(label, 20) == "mag. at init [shu.]"  # 3 letters
    assert abbreviate(label, 18) is None
    # acronyms and names with inner capitals stay whole; digits and short words are never cut
    assert abbreviate("GraSP [random_labels]", 17) == "GraSP [ran._lab.]"
    assert abbreviate("GraSP [random_labels]", 16) is None
    assert abbreviate("one-shot ERK, L1 (structured)", 24) == "one-shot ERK, L1 (stru.)"


def test_a_label_too_long_takes_the_callers_short_form_else_an_abbreviation_else_a_key() -> None:
    columns = [Column("method", label=True), Column("value", right=True)]
    labels = [
        "magnitude at init [shuffle]",
        "structured pruning alpha",
        "structures pruning alpha",
        "dense",
    ]
    rows = [[label, "1.00"] for label in labels]
    out = rendered(Group(*fit(None, columns, rows, width=24, short={labels[0]: "mag. shuffle"})), width=24)
    assert_fits(out, 24)
    keys = legend(out)
    shown = [cells(line)[0] for line in out.splitlines()[2:6]]
    # 17 cells for labels: the caller's short form; an abbreviation; the same abbreviation would
    # name two rows: a key
    assert shown == ["mag. shuffle", "stru. prun. alpha", "#1", "dense"]
    assert {k: squash(v) for k, v in keys.items()} == {
        "mag. shuffle": squash(labels[0]),
        "stru. prun. alpha": squash(labels[1]),
        "#1": squash(labels[2]),
    }
    taken = rendered(Group(*fit(None, columns, rows, width=24, short={labels[0]: "dense"})), width=24)
    # "dense" names another row, and "mag. at init [shu.]" is 19 cells: a key
    assert [cells(line)[0] for line in taken.splitlines()[2:6]] == ["#1", "stru. prun. alpha", "#2", "dense"]
    assert squash(legend(taken)["#1"]) == squash(labels[0])


def test_a_split_table_keeps_whole_labels_while_three_value_columns_fit_beside_them() -> None:
    header = "| method | 50 % | 80 % | 90 % | 95 % | 98 % | seeds |\n|---|---|---|---|---|---|---|\n"
    names = ["GraSP", "GraSP [random_labels]", "magnitude at init [shuffle]"]
    text = header + "".join(f"| {n} | {' | '.join(['84.66 ± 1.44'] * 5)} | 3 |\n" for n in names)
    out = rendered(Group(*markdown(text, width=WIDTH)))
    assert_fits(out)
    assert not legend(out)  # 27 + 3 × (12 + 2) + 2 fit in 80: the labels stay whole
    parts = out.split("\n\n")  # the parts of a split table, a blank line apart
    assert [cells(p.strip().splitlines()[0])[0] for p in parts if p.strip()] == ["method", "method"]
    for part in filter(str.strip, parts):
        assert [cells(line)[0] for line in part.strip().splitlines()[2:]] == names


@pytest.fixture
def instant_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's methods at two sparsities, their recipes not run (an untrained tiny MLP stands in
    for every result): what is under test is what the demo prints."""
    import secateurs.front.demo as demo

    data = load_dataset("synthetic", input_shape=[20], num_classes=3, num_train=96, num_test=48)
    model = build_model("mlp", (20,), 3, seed=0, hidden=[16])
    monkeypatch.setattr(demo, "load_dataset", lambda name: data)
    monkeypatch.setattr(demo, "run_recipe", lambda recipe, data: SimpleNamespace(model=model))
    monkeypatch.setattr(demo, "QUICK_SPARSITIES", [0.5, 0.9])
    monkeypatch.setattr(demo, "plot_accuracy_vs_sparsity", lambda rows, path: path)


@pytest.mark.parametrize("width", [WIDTH, 60])
def test_the_demo_command_prints_every_method_on_one_line_with_a_legend(
    instant_demo: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, width: int
) -> None:
    monkeypatch.setattr(cli, "console", console_module.make_console(width=width))
    methods = ["dense", *(label for label, _, _ in DEMO_METHODS for _ in (0.5, 0.9))]
    out = invoke("demo", "--quick", "--out", str(tmp_path / "d")).stdout
    out = out[: out.index("table: ")]  # then the paths of the files, whole
    assert_fits(out, width)
    header, rows = table_rows(out, "method")
    assert all(len(row) == len(header) for row in rows)  # each method's row on one line
    keys = legend(out)
    assert named(keys, [row[0] for row in rows]) == [squash(m) for m in methods]
    if width < WIDTH:  # the demo's own short forms, where they fit
        assert {short: squash(keys[short]) for short in DEMO_SHORT.values()} == {
            short: squash(label) for label, short in DEMO_SHORT.items()
        }
        return
    wide = invoke("demo", "--quick", "--out", str(tmp_path / "w"), "--wide").stdout
    assert not legend(wide)
    for label, _, _ in DEMO_METHODS:
        assert sum(line.startswith(label + "  ") for line in wide.splitlines()) == 2
    found = json.loads(invoke("demo", "--quick", "--out", str(tmp_path / "j"), "--json").stdout)
    assert [row["method"] for row in found] == methods


def test_report_wide_and_json_hold_every_name(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import secateurs.results.report as report_module

    monkeypatch.setattr(report_module, "report_figures", lambda runs: {})  # tables only: fast
    wide = invoke("report", "--root", str(root), "--out", str(tmp_path / "w"), "--wide").stdout
    header, rows = table_rows(wide, "method ")
    assert header[:4] == ["method", DENSE_COLUMN, "50 %", "90 %"]  # one table, nothing shortened
    assert [row[0] for row in rows] == ["dense", *sorted(LONG_NAMES.values())]
    result = invoke("report", "--root", str(root), "--out", str(tmp_path / "j"), "--json")
    found = json.loads(result.stdout)  # the JSON alone on stdout
    assert Path(found["report"]) == tmp_path / "j" / "report.md" and "report written to" in result.stderr
    accuracy = next(t for t in found["tables"] if t["columns"][:2] == ["method", DENSE_COLUMN])
    assert "test accuracy" in accuracy["heading"]
    assert [row[0] for row in accuracy["rows"]] == ["dense", *sorted(LONG_NAMES.values())]
    assert all(len(row) == len(t["columns"]) for t in found["tables"] for row in t["rows"])


def test_runs_reads_in_a_real_80_column_terminal(root: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "secateurs", "runs", "--root", str(root)],
        capture_output=True, text=True, env={**os.environ, "COLUMNS": str(WIDTH)}, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert_fits(done.stdout)
    header, rows = table_rows(done.stdout, "hash")
    assert all(len(row) == len(header) for row in rows)  # each run on one line
    names = set(named(legend(done.stdout), [row[header.index("name")] for row in rows]))
    assert names == {squash(n) for n in LONG_NAMES.values()}


# -- run tables (run, demo) ---------------------------------------------------------------------
def rendered(renderable: Any, *, wide: bool = False, width: int = WIDTH) -> str:
    console = Console(width=width, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    print_tables(console, [renderable], wide=wide)
    return console.export_text()


RECORD = {"accuracy": 0.91234, "params": 1_234_567, "macs": 9_876_543, "level": None}


def test_records_table_drops_the_empty_level_column_and_keys_long_labels() -> None:
    labels = ["dense", "pruned once by global magnitude then finetuned", "finetuned with the mask"]
    records = [
        {**RECORD, "label": label, "sparsity": s, "nonzero_params": n, "nonzero_macs": n}
        for label, s, n in zip(labels, (0.0, 0.5, 0.5), (1_234_567, 617_283, 617_283), strict=True)
    ]
    out = rendered(cli.records_table(records, "recipe r", width=WIDTH))
    assert_fits(out)
    header, rows = table_rows(out, "label")
    assert header == ["label", "acc.", "sparsity", "nnz params", "nnz MACs"]  # no level, no control
    assert "params 1,234,567, MACs 9,876,543 in every row" in out  # the same in every row: said once
    keys = legend(out)
    assert named(keys, [row[0] for row in rows]) == [squash(label) for label in labels]
    assert [row[2] for row in rows] == ["0.0000", "0.5000", "0.5000"]
    wide = rendered(cli.records_table(records, "recipe r", width=WIDTH, wide=True), wide=True)
    assert not legend(wide) and all(label in wide for label in labels)


def test_records_table_shows_levels_and_controls_in_their_own_columns() -> None:
    records = [
        {**RECORD, "label": "level", "level": level, "control": control, "sparsity": 0.2, "nonzero_params": 9}
        for level in (1, 2)
        for control in ("reinit", None)
    ]
    out = rendered(cli.records_table(records, "r", width=WIDTH))
    assert_fits(out)
    header, rows = table_rows(out, "label")
    assert header[:3] == ["label", "control", "level"]
    assert [(row[1], row[2]) if len(row) == len(header) else ("", row[1]) for row in rows] == [
        ("reinit", "1"),
        ("", "1"),
        ("reinit", "2"),
        ("", "2"),
    ]


def demo_rows(params: int = 15_010) -> list[dict[str, Any]]:
    rows = [{"method": "dense", "target": 0.0, "accuracy": 0.64, "remaining_params": params, "params": params,
             "nonzero_macs": params, "macs": params}]  # fmt: skip
    for i, (label, _, _) in enumerate(DEMO_METHODS):
        for sparsity in (0.5, 0.9):
            kept = int(params * (1 - sparsity))
            total = params - 100 * i  # a structured method removes weights: totals differ
            rows.append({"method": label, "target": sparsity, "accuracy": 0.6, "remaining_params": kept,
                         "params": total, "nonzero_macs": kept, "macs": total})  # fmt: skip
    return rows


@pytest.mark.parametrize("params", [15_010, 123_456_789])
def test_the_demo_table_never_wraps_a_method_name(params: int) -> None:
    out = rendered(demo_table(demo_rows(params), 12.0, width=WIDTH))
    assert_fits(out)
    header, rows = table_rows(out, "method")
    assert header == ["method", "sparsity", "accuracy", "remaining", "params", "nnz MACs", "MACs"]
    keys = legend(out)
    shown = named(keys, [row[0] for row in rows])
    assert shown == [squash(r["method"]) for r in demo_rows(params)]  # one line per row, every name whole


def test_run_and_demo_json_is_the_rows_alone_on_stdout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny_recipe()), encoding="utf-8")
    result = invoke(
        "run", str(tmp_path / "tiny.yaml"), "--no-progress", "--json", "--out", str(tmp_path / "o")
    )
    records = json.loads(result.stdout)
    saved = json.loads((tmp_path / "o" / "metrics.json").read_text(encoding="utf-8"))
    assert [r["label"] for r in records] == ["final"] and records[0]["accuracy"] == pytest.approx(
        saved["records"][0]["accuracy"] if "records" in saved else records[0]["accuracy"]
    )
    assert {"label", "level", "accuracy", "sparsity", "nonzero_params", "params", "macs"} <= set(records[0])
    assert "results written to" in result.stderr

    import secateurs.front.demo as demo
    from secateurs.data import load_dataset

    tiny = load_dataset("synthetic", input_shape=[20], num_classes=3, num_train=96, num_test=48)
    monkeypatch.setattr(demo, "load_dataset", lambda name: tiny)
    monkeypatch.setattr(demo, "DEMO_METHODS", [("one-shot magnitude", "oneshot-magnitude", [])])
    monkeypatch.setattr(demo, "QUICK_SPARSITIES", [0.5])
    shown = invoke("demo", "--out", str(tmp_path / "d"), "--quick", "--json")
    rows = json.loads(shown.stdout)
    assert rows == json.loads((tmp_path / "d" / "demo_results.json").read_text(encoding="utf-8"))
    assert [(r["method"], r["target"]) for r in rows] == [("dense", 0.0), ("one-shot magnitude", 0.5)]
    assert "demo_results.json" in shown.stderr


# -- sweep --------------------------------------------------------------------------------------
def test_the_sweep_table_has_seed_and_sparsity_columns_and_json(tmp_path: Path) -> None:
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny_recipe()), encoding="utf-8")
    label = "a rather long label for the tiny recipe"
    sweep = {"name": "s", "recipes": [{"recipe": "tiny.yaml", "label": label}], "sparsities": [0.5, 0.75],
             "seeds": [7, 2024]}  # fmt: skip
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep), encoding="utf-8")
    args = ["sweep", str(tmp_path / "sweep.yaml"), "--root", str(tmp_path / "r"), "--no-progress"]
    out = invoke(*args).stdout
    assert_fits(out)
    header, rows = table_rows(out, "hash")
    assert header == ["hash", "name", "status", "seed", "sparsity", "acc.", "attempts"]
    with ResultsDB(tmp_path / "r" / "results.db", create=False) as db:
        configs = {r.hash: r.config for r in db.list_runs()}
    assert sorted(row[0] for row in rows) == sorted(configs)
    for row in rows:
        assert (row[3], row[4]) == (str(configs[row[0]]["seed"]), f"{configs[row[0]]['sparsity']:.4f}")
        assert named(legend(out), [row[1]]) == [squash(label)]
    again = json.loads(invoke(*args, "--json").stdout)  # all skipped now: the JSON alone on stdout
    assert {(r["hash"], r["seed"], r["sparsity"], r["status"]) for r in again["runs"]} == {
        (h, c["seed"], c["sparsity"], "already finished") for h, c in configs.items()
    }


# -- report -------------------------------------------------------------------------------------
def test_the_report_puts_the_dense_accuracy_in_its_own_column(root: Path) -> None:
    with ResultsDB(root / "results.db", create=False) as db:
        runs = collect(db)
    lines = accuracy_table(runs).splitlines()
    header = next(line for line in lines if line.startswith("| method |"))
    assert header == f"| method | {DENSE_COLUMN} | 50 % | 90 % | seeds |"
    dense = next(line for line in lines if line.startswith("| dense |")).split(" | ")
    assert dense[1] != "—" and dense[2:4] == ["—", "—"] and dense[4] == "2 |"  # nothing under 50 %
    for name in LONG_NAMES.values():
        row = next(line for line in lines if line.startswith(f"| {name} |")).split(" | ")
        assert row[1] == "—" and row[2] != "—" and row[3] != "—"  # the pruned runs under 50 % and 90 %


def test_the_report_printed_in_80_columns_cuts_no_cell(root: Path, tmp_path: Path) -> None:
    """rich's markdown cut the report's table cells to "gaussi…" and names to "tiny-m…"."""
    out = invoke("report", "--root", str(root), "--out", str(tmp_path / "r")).stdout
    assert_fits(out)
    assert "…" not in out
    keys = legend(out)
    header, rows = table_rows(out, "method ")
    assert header[:4] == ["method", DENSE_COLUMN, "50 %", "90 %"]
    assert named(keys, [row[0] for row in rows]) == [
        squash(n) for n in ["dense", *sorted(LONG_NAMES.values())]
    ]
    shifts = {"clean", "gaussian_noise:0.1", "gaussian_noise:0.3", "shift:2", "shifted_split"}
    assert shifts <= {cell for line in out.splitlines() for cell in cells(line)}  # every shift, whole
