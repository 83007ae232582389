"""Specification: the CLI prints every message and every user-supplied string as it is.

Rich would read ``[red]`` or ``[/x]`` as markup: a path such as ``[/x]`` crashed the error line with a
MarkupError traceback, ``[red]x.yaml`` lost its tag and ``pip install -e ".[llm]"`` its extra. The
consoles parse no markup (`secateurs.front.console.make_console`), so all of them print verbatim.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import secateurs.front.cli as cli
from secateurs.results import ResultsDB, db_path

NASTY = ["[/x]", "[red]", "[bold]x[/]", "\\[", "]", 'pip install -e ".[llm]"']


def secateurs(*args: str, cwd: Path, code: str | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m secateurs ARGS` (or `python -c CODE ARGS`) in `cwd`, on a wide, non-terminal console."""
    command = [sys.executable, *(["-c", code] if code else ["-m", "secateurs"]), *args]
    env = {**os.environ, "COLUMNS": "250"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def error_line(stderr: str) -> str:
    """The one line a user error prints: `error: ...`, with no traceback around it."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


# -- the failures, through a subprocess -------------------------------------------------------
def test_a_closing_tag_as_the_recipe_is_one_error_line(tmp_path: Path) -> None:
    result = secateurs("run", "[/x]", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "recipe '[/x]' is neither a file nor a preset" in error_line(result.stderr)


def test_a_tag_in_the_recipe_name_is_reported_verbatim(tmp_path: Path) -> None:
    result = secateurs("run", "[red]x.yaml", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "recipe '[red]x.yaml'" in error_line(result.stderr)


def test_a_closing_tag_as_the_results_root_is_one_error_line(tmp_path: Path) -> None:
    result = secateurs("runs", "--root", "[/a]", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"no results database at {Path('[/a]') / 'results.db'}" in error_line(result.stderr)


def test_the_fix_keeps_the_brackets_of_an_extra(tmp_path: Path) -> None:
    without_transformers = (
        "import sys; sys.modules['transformers'] = None; sys.argv[0] = 'secateurs'\n"
        "from secateurs.front.cli import main; main()"
    )
    result = secateurs("llm", "eval", cwd=tmp_path, code=without_transformers)
    assert result.returncode == 2, result.stderr
    assert 'Fix: pip install -e ".[llm]"' in error_line(result.stderr)


def test_methods_shows_the_brackets_of_help_texts(tmp_path: Path) -> None:
    result = secateurs("methods", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "bh × bw blocks of the [out, in·kh·kw] weight matrix" in result.stdout


# -- property: nasty text in string arguments never makes a traceback -------------------------
def invoke(*args: str) -> Any:
    """Run the CLI in this process on its own consoles (not monkeypatched: they are what is tested)."""
    return CliRunner().invoke(cli.app, list(args))


def assert_clean(result: Any, echoed: str | None = None) -> None:
    """No traceback and no exception other than an exit; a user error is one line naming `echoed`."""
    assert isinstance(result.exception, SystemExit | None), repr(result.exception)
    assert "Traceback" not in result.output, result.output
    if result.exit_code == 2 and result.stderr.startswith("error:"):
        line = error_line(result.stderr)
        assert echoed is None or echoed in line, (echoed, line)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A results store whose runs are named (and failed with errors) by the nasty strings."""
    root = tmp_path / "results"
    root.mkdir()
    with ResultsDB(db_path(root)) as db:
        db.add_runs((f"{i:02d}" + "a" * 14, text, {"name": text}) for i, text in enumerate(NASTY))
        for i, text in enumerate(NASTY):
            db.mark_failed(f"{i:02d}" + "a" * 14, f"it broke: {text}")
    return root


@pytest.mark.parametrize("text", NASTY)
def test_nasty_strings_in_arguments_are_echoed_verbatim(text: str, tmp_path: Path, store: Path) -> None:
    assert_clean(invoke("run", text), repr(text))
    assert_clean(invoke("run", "--set", text, "oneshot-magnitude"), repr(text))
    assert_clean(invoke("runs", "--root", text), str(db_path(text)))
    assert_clean(invoke("runs", "--root", str(store), "--show", text))
    assert_clean(invoke("runs", "--root", str(store), "--name", text))
    assert_clean(invoke("report", "--root", text), str(db_path(text)))
    assert_clean(invoke("export", "--root", text, "--out", str(tmp_path / "x.csv")), str(db_path(text)))
    assert_clean(invoke("export", "--root", str(store), "--out", "x", "--format", text), repr(text))
    assert_clean(invoke("inspect", text), str(Path(text)))
    assert_clean(invoke("sweep", text), str(Path(text)))
    assert_clean(invoke("methods", "--plugin", text), repr(text))


def test_runs_shows_nasty_names_and_errors_verbatim(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli.console, "width", 250)  # no name cut short
    listed = invoke("runs", "--root", str(store))
    assert listed.exit_code == 0, listed.output
    for i, text in enumerate(NASTY):
        assert f" {text} " in listed.stdout, (text, listed.stdout)
        shown = invoke("runs", "--root", str(store), "--show", f"{i:02d}")
        assert shown.exit_code == 0, shown.output
        assert f"it broke: {text}" in shown.stdout
        assert f"name: {text}" in shown.stdout or f"name: '{text}'" in shown.stdout


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.sampled_from("[]/\\ab =:.'\"@#"), min_size=1, max_size=12))
@example("[/]")
@example("[bold]x[/bold]")
def test_any_bracketed_text_as_recipe_or_root_is_clean(text: str) -> None:
    assert_clean(invoke("run", "--", text), repr(text))
    assert_clean(invoke("runs", f"--root={text}"))
