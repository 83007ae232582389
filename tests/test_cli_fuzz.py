"""Property: no command prints a traceback, whatever text a user puts in any string argument (issue 19).

Every string argument of run, inspect, runs, export, report, sweep, methods and llm prune gets
arbitrary text (hypothesis, derandomized so CI is stable) and a fixed list of nasty strings: rich
markup, a NUL byte, path escapes, a very long name, unicode, lone dashes, format directives. Each
command must end with exit code 0, 1 or 2 and no traceback: an exception escaping a command is what
`CliRunner` reports as `result.exception`, so that is checked besides the printed output.

No command trains here: the pipeline refuses to start (a SecateursError, as for any user error),
which keeps every example fast while the arguments are still parsed, checked and used up to there.
Paths stay inside the test's directory: the working directory is deep enough that no run of `../`
leaves it, and an absolute path is made relative.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tiny import tiny_recipe
from typer.testing import CliRunner

import secateurs.front.cli as cli
import secateurs.front.console as console_module
from secateurs.core.errors import SecateursError
from secateurs.pipeline.recipe import recipe_from_raw
from secateurs.pipeline.runner import Pipeline
from secateurs.results.runner import execute

X = object()  # where the fuzzed text goes
TEXT_LIMIT = 60  # characters of generated text; the nasty list holds longer ones
DEPTH = TEXT_LIMIT // 3 + 2  # directories below the test's own: deeper than any "../" run reaches

NASTY = [
    "[/x]",
    "[red]x.yaml",
    "[bold]",
    "\x00",
    "a\x00b",
    "../../",
    "../" * 15 + "x",
    "x" * 5000,
    "ünïcødé ✂ 剪刀 🙂",
    "\u202etxt.exe",
    "-",
    "--",
    "=",
    "==",
    "a=b=c",
    "%s%n%d",
    "{}",
    "{0}",
    "",
    " ",
    "\n",
    "\r\n\t",
    ".",
    "..",
    "/",
    "~",
    "*",
    "?",
    "'",
    '"',
    "\\",
    ":",
    "$(true)",
    "-h",
    "--help",
    "--version",
    "nul",
    "stages.0=",
    "=0.5",
]

# (id, arguments): X marks the string argument that gets the text; TINY, STORE, SWEEP and NO_MODEL
# name the test's tiny recipe, a results store with two finished runs, a sweep file and a missing
# model directory (so that llm prune fails fast after checking its other arguments).
TINY, STORE, SWEEP, NO_MODEL = "tiny.yaml", "store", "sweep.yaml", "no-model"
CASES: list[tuple[str, list[Any]]] = [
    ("run RECIPE", ["run", X]),
    ("run --set", ["run", TINY, "--set", X]),
    ("run --out", ["run", TINY, "--out", X]),
    ("run --device", ["run", TINY, "--device", X]),
    ("run --precision", ["run", TINY, "--precision", X]),
    ("run --metrics-log", ["run", TINY, "--metrics-log", X]),
    ("inspect", ["inspect", X]),
    ("runs --root", ["runs", "--root", X]),
    ("runs --status", ["runs", "--root", STORE, "--status", X]),
    ("runs --name", ["runs", "--root", STORE, "--name", X]),
    ("runs --show", ["runs", "--root", STORE, "--show", X]),
    ("export --root", ["export", "--root", X]),
    ("export --out", ["export", "--root", STORE, "--out", X]),
    ("export --format", ["export", "--root", STORE, "--format", X]),
    ("report --root", ["report", "--root", X]),
    ("report --name", ["report", "--root", STORE, "--name", X]),
    ("sweep SWEEP_FILE", ["sweep", X]),
    ("sweep --root", ["sweep", SWEEP, "--root", X]),
    ("sweep --shard", ["sweep", SWEEP, "--root", "sweep-root", "--shard", X]),
    ("methods NAME", ["methods", X]),
    ("methods --plugin", ["methods", "--plugin", X]),
    ("llm prune --model", ["llm", "prune", "--model", X]),
    ("llm prune --method", ["llm", "prune", "--model", NO_MODEL, "--method", X]),
    ("llm prune --nm", ["llm", "prune", "--model", NO_MODEL, "--nm", X]),
    ("llm prune --out", ["llm", "prune", "--model", NO_MODEL, "--out", X]),
    ("llm prune --text", ["llm", "prune", "--model", NO_MODEL, "--text", X]),
    ("llm prune --calib-text", ["llm", "prune", "--model", NO_MODEL, "--calib-text", X]),
    ("llm prune --draw", ["llm", "prune", "--model", NO_MODEL, "--draw", X]),
    ("llm prune --ties", ["llm", "prune", "--model", NO_MODEL, "--ties", X]),
]
PATH_OPTIONS = {"--out", "--root", "--metrics-log", "--calib-text"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory deep below the test's own holding the tiny recipe, a store and a sweep file."""
    base = tmp_path_factory.mktemp("fuzz")
    deep = base.joinpath(*(f"d{i}" for i in range(DEPTH)))
    deep.mkdir(parents=True)
    (deep / TINY).write_text(yaml.safe_dump(tiny_recipe()), encoding="utf-8")
    for sparsity in (0.5, 0.75):
        execute(recipe_from_raw(tiny_recipe(sparsity=sparsity)), deep / STORE)
    sweep = {"name": "fuzz", "recipes": [TINY], "sparsities": [0.5], "seeds": [0]}
    (deep / SWEEP).write_text(yaml.safe_dump(sweep), encoding="utf-8")
    return deep


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch, workdir: Path) -> None:
    """Commands run in `workdir`, and a pipeline refuses to start (as on any user error)."""

    def refuse(self: Pipeline, *args: Any, **kwargs: Any) -> None:
        raise SecateursError("the fuzz test trains nothing", fix="none needed")

    monkeypatch.setattr(Pipeline, "__init__", refuse)
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(cli, "console", console_module.make_console(width=100))
    monkeypatch.setattr(console_module, "err_console", console_module.make_console(width=100, stderr=True))


def fill(args: list[Any], text: str) -> list[str]:
    """`args` with the text at X; a path option's absolute path made relative to the working directory."""
    out: list[str] = []
    for i, arg in enumerate(args):
        if arg is X:
            option = args[i - 1] if i else ""
            arg = "." + text if option in PATH_OPTIONS and text.startswith("/") else text
        out.append(arg)
    return out


def assert_no_traceback(args: list[str]) -> None:
    result = CliRunner().invoke(cli.app, args)
    short = [a if len(a) < 80 else f"{a[:40]}…({len(a)} characters)" for a in args]
    exit_line = f"exit {result.exit_code}, {result.exception!r:.300}"
    shown = f"secateurs {short!r} -> {exit_line}\n{result.output[-500:]}"
    assert result.exception is None or isinstance(result.exception, SystemExit), shown
    assert result.exit_code in (0, 1, 2), shown
    assert "Traceback" not in result.output, shown


@pytest.mark.parametrize(("case", "args"), CASES, ids=[c for c, _ in CASES])
@pytest.mark.usefixtures("no_training")
def test_nasty_text_in_any_string_argument_is_never_a_traceback(case: str, args: list[Any]) -> None:
    failures = []
    for text in NASTY:
        try:
            assert_no_traceback(fill(args, text))
        except AssertionError as failure:
            failures.append(str(failure).splitlines()[0])
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(("case", "args"), CASES, ids=[c for c, _ in CASES])
@pytest.mark.usefixtures("no_training")
@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(text=st.text(max_size=TEXT_LIMIT))
@example(text="[/x]")
def test_arbitrary_text_in_any_string_argument_is_never_a_traceback(
    case: str, args: list[Any], text: str
) -> None:
    assert_no_traceback(fill(args, text))
