"""How the CLI tests call the app and check a user error (shared by the CLI, sweep and backend tests)."""

from __future__ import annotations

from typing import Any

from typer.testing import CliRunner

from secateurs.front import cli


def invoke(*args: str, app: Any = None, env: dict[str, str] | None = None) -> Any:
    """`secateurs ARGS…` through typer's CliRunner (stdout and stderr apart)."""
    return CliRunner().invoke(app or cli.app, list(args), env=env)


def assert_user_error(result: Any, *fragments: str) -> str:
    """Exit code 2, one `error:` line naming every fragment, no traceback; the line."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]
