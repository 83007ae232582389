"""Where the CLI prints, and how user errors become one line and exit code 2 (shared by every command)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from secateurs.core.errors import SecateursError

F = TypeVar("F", bound=Callable[..., Any])

console = Console(emoji=False)  # "N:M:" must not become an emoji
err_console = Console(stderr=True, emoji=False)


def friendly_errors(fn: F) -> F:
    """Turn user errors into one clear message and a non-zero exit, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SecateursError as err:
            err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted: nothing was written[/]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]
