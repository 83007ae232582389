"""The typer app every command group uses (`secateurs`, `secateurs llm`), so that --help reads cleanly.

typer's rich help shows a type column for every parameter, including ``<bool>`` beside switches
such as ``--quick/--no-quick`` and ``--help``, where it says nothing the switch does not; and it
keeps the hard line breaks of a docstring's later paragraphs, which wrap raggedly in 80 columns.
A switch that is off unless given shows no ``[default: no-x]`` either. An `App` is a `Group` and
gives every command it registers the `Command` class, which fix these, so no command has to
remember to.

A `Command` also refuses, before it runs, a path argument the operating system could not use (a NUL
character, a name longer than the file system allows): otherwise the first `exists()` deep inside
the command would raise an OSError traceback.
"""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import PurePath
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup, TyperOption


def unwrap_paragraphs(text: str | None) -> str | None:
    """Join the lines of each paragraph (blank-line separated) so the terminal wraps them."""
    if text is None:
        return None
    return "\n\n".join(re.sub(r"\s*\n\s*", " ", p.strip()) for p in re.split(r"\n\s*\n", text.strip()))


def quiet_switches(params: list[Any]) -> list[Any]:
    """`params` with no type column and no `[default: no-x]` for switches (see the module's doc)."""
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag:
            if param.metavar is None:
                param.metavar = ""  # an empty type column: `--x/--no-x` already says it is a switch
            if param.default is False:
                param.show_default = False  # off unless given: `[default: no-x]` says nothing more
    return params


class Command(TyperCommand):
    """A command whose switches show no type in --help, whose help text wraps to the terminal, and
    which refuses a path argument the operating system cannot use before it runs."""

    def __init__(self, *args: Any, help: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, help=unwrap_paragraphs(help), **kwargs)

    def get_params(self, ctx: Any) -> list[Any]:
        return quiet_switches(super().get_params(ctx))  # the --help option is made there

    def invoke(self, ctx: Any) -> Any:
        for param in self.get_params(ctx):
            value = ctx.params.get(param.name)
            for path in value if isinstance(value, list | tuple) else [value]:
                problem = path_problem(path) if isinstance(path, PurePath) else None
                if problem is not None:
                    raise typer.BadParameter(problem, ctx=ctx, param=param)
        return super().invoke(ctx)


class Group(TyperGroup):
    """A command group (`secateurs`, `secateurs llm`) whose --help reads like its commands'."""

    def __init__(self, *args: Any, help: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, help=unwrap_paragraphs(help), **kwargs)

    def get_params(self, ctx: Any) -> list[Any]:
        return quiet_switches(super().get_params(ctx))


@cache
def _limits() -> tuple[int, int]:
    """The longest file name and path, in bytes, that the file system here takes."""

    def limit(name: str, default: int) -> int:
        try:
            return int(os.pathconf(".", name))
        except (AttributeError, OSError, ValueError):
            return default

    return limit("PC_NAME_MAX", 255), limit("PC_PATH_MAX", 4096)


def path_problem(path: PurePath) -> str | None:
    """Why the operating system could not use `path` at all, or None."""
    raw = os.fsencode(path)
    if b"\0" in raw:
        return "a path cannot hold a NUL character"
    name_max, path_max = _limits()
    longest = max(len(part) for part in raw.split(b"/"))
    if longest > name_max:
        return f"a name in it is {longest:,} bytes long; the file system takes at most {name_max}"
    if len(raw) > path_max:
        return f"it is {len(raw):,} bytes long; the file system takes at most {path_max}"
    return None


class App(typer.Typer):
    """A typer app that is a `Group` of `Command`s unless told otherwise."""

    def __init__(self, *args: Any, cls: type[TyperGroup] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, cls=cls or Group, **kwargs)

    def command(self, *args: Any, cls: type[TyperCommand] | None = None, **kwargs: Any) -> Any:
        return super().command(*args, cls=cls or Command, **kwargs)
