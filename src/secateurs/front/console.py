"""Where the CLI prints, and how user errors become one line and exit code 2 (shared by every command).

Every string is printed as it is: the consoles parse no rich markup and no emoji, so user text such as
a path ``[/x]``, a fix ``pip install -e ".[llm]"`` or an N:M pattern ``2:4:`` is never interpreted
(and never crashes the printing). Style is given with `rich.text.Text`, never with ``[bold]`` tags.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from secateurs.core.errors import SecateursError

F = TypeVar("F", bound=Callable[..., Any])


def make_console(**options: Any) -> Console:
    """A console that prints strings verbatim (no markup, no emoji); `options` go to rich's Console."""
    return Console(markup=False, emoji=False, **options)


console = make_console()
err_console = make_console(stderr=True)


MAX_ERROR_CHARS = 2000
"""The longest message an error line prints: problems in 100 nested stages made one of 170 KB."""


def error_line(message: object, limit: int = MAX_ERROR_CHARS) -> Text:
    """``error: MESSAGE``, the prefix in bold red and the message verbatim, with the middle of a
    message over `limit` characters left out (its start says what and where, its end the fix)."""
    text = str(message)
    if len(text) > limit:
        head = (limit * 2) // 3
        tail = limit - head
        text = f"{text[:head]} … ({len(text) - head - tail:,} characters omitted) … {text[-tail:]}"
    return Text.assemble(("error:", "bold red"), " ", text)


def friendly_errors(fn: F) -> F:
    """Turn user errors into one clear message and a non-zero exit, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SecateursError as err:
            err_console.print(error_line(err), highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print(Text("interrupted: nothing was written", style="yellow"))
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]
