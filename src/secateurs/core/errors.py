"""User-facing errors.

Every problem a user can cause (bad name, bad value, missing data, corrupt file) raises a
`SecateursError` whose message says what is wrong, where, and how to fix it. The CLI prints
it as one line and exits non-zero; library users can catch one type.
"""

from __future__ import annotations

from collections.abc import Sequence


class SecateursError(Exception):
    """A problem the user can fix; the message says what, where and how."""

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None) -> None:
        self.what = what
        self.where = where
        self.fix = fix
        parts = [what if where is None else f"{where}: {what}"]
        if fix:
            parts.append(f"Fix: {fix}")
        super().__init__(" ".join(parts))


class ConfigError(SecateursError):
    """An invalid recipe, option or value."""


class ModelTypeError(ConfigError, TypeError):
    """A model argument that is not an `nn.Module` (catchable as TypeError too)."""


class DataUnavailableError(SecateursError):
    """A data set that is not installed on this machine."""


class CheckpointError(SecateursError):
    """A checkpoint that is missing, truncated, corrupt or of the wrong shape."""


def check_choice(
    value: object, choices: Sequence[str], what: str, *, fix: str, where: str | None = None
) -> str:
    """`value` if it is one of `choices`, else one ConfigError naming them: "WHAT must be one of
    a, b, c, got 'x'" with `fix` (what each choice does). Every named option checks itself this way."""
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{what} must be one of {', '.join(choices)}, got {value!r}", where=where, fix=fix)
    return value
