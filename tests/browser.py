"""A headless Chromium driven over the DevTools protocol, for tests of pages we write (report.html).

No Python package is needed: with `--remote-debugging-pipe` the browser reads protocol messages from
file descriptor 3 and writes its answers and events to descriptor 4, each a JSON text ended by NUL.
The page's console errors, uncaught exceptions, log errors (Content-Security-Policy violations among
them) and network requests are recorded; host names resolve to nothing, so a page that tries to
reach the network fails to, and the attempt is still recorded.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    """The Chromium (or Chrome) to start: $SECATEURS_CHROMIUM, else the first of BROWSERS on PATH."""
    explicit = os.environ.get("SECATEURS_CHROMIUM")
    if explicit:
        return shutil.which(explicit) or (explicit if Path(explicit).is_file() else None)
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


@dataclass
class PageLoad:
    """What happened while one page loaded: its problems, its requests and a screenshot."""

    url: str
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    screenshot: bytes = b""

    def external_requests(self) -> list[str]:
        """Requests for anything but the page's own file and data: URIs."""
        page = self.url.split("#", 1)[0]
        return [u for u in self.requests if u.split("#", 1)[0] != page and not u.startswith("data:")]


class Browser:
    """One headless browser; `load` opens a page in a fresh tab and returns what it saw."""

    def __init__(self, binary: str, *, width: int = 1200, height: int = 1600, timeout: float = 20.0) -> None:
        self.timeout = timeout
        self._profile = tempfile.TemporaryDirectory(prefix="secateurs-browser-")
        commands_read, self._commands = os.pipe()
        self._events, events_write = os.pipe()

        def descriptors() -> None:  # in the child: its fd 3 reads our commands, fd 4 writes to us
            # copies above 4 first: dup2 onto the same number would keep the close-on-exec flag
            a, b = fcntl.fcntl(commands_read, fcntl.F_DUPFD, 5), fcntl.fcntl(events_write, fcntl.F_DUPFD, 5)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self._process = subprocess.Popen(
            [
                binary,
                "--headless=new",
                "--no-sandbox",  # tests run as root in containers
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--host-resolver-rules=MAP * ~NOTFOUND",
                "--remote-debugging-pipe",
                f"--user-data-dir={self._profile.name}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            preexec_fn=descriptors,
            close_fds=False,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(commands_read)
        os.close(events_write)
        self._buffer = b""
        self._next_id = 0
        self._size = (width, height)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError, TimeoutError, RuntimeError, EOFError):
            self.call("Browser.close", timeout=5)
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        for fd in (self._commands, self._events):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._profile.cleanup()

    # -- protocol ---------------------------------------------------------------------------------
    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> int:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode("utf-8") + b"\0")
        return self._next_id

    def messages(self, until: float) -> Any:
        """Messages from the browser as they come, until the deadline (then TimeoutError)."""
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                yield json.loads(raw)
            left = until - time.monotonic()
            if left <= 0 or not select.select([self._events], [], [], left)[0]:
                raise TimeoutError("the browser did not answer in time")
            chunk = os.read(self._events, 1 << 20)
            if not chunk:
                raise EOFError("the browser closed its DevTools pipe")
            self._buffer += chunk

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str | None = None,
        *,
        timeout: float | None = None,
        seen: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Send one command and wait for its answer; events that arrive meanwhile go to `seen`."""
        ident = self.send(method, params, session)
        for message in self.messages(time.monotonic() + (timeout or self.timeout)):
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if seen is not None:
                seen.append(message)
        raise AssertionError("unreachable")

    # -- pages ------------------------------------------------------------------------------------
    def load(self, url: str, *, script: str | None = None) -> tuple[PageLoad, Any]:
        """Open `url` in a new tab, wait for its load event, take a screenshot; then, if given, run
        `script` (a JavaScript expression) in the page and return its value beside the record."""
        events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.call(f"{domain}.enable", session=session, seen=events)
        width, height = self._size  # the viewport itself, whatever the window's frame takes
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
        self.call("Emulation.setDeviceMetricsOverride", metrics, session=session, seen=events)
        self.call("Page.navigate", {"url": url}, session=session, seen=events)
        if not any(e.get("method") == "Page.loadEventFired" for e in events):
            for message in self.messages(time.monotonic() + self.timeout):
                events.append(message)
                if message.get("method") == "Page.loadEventFired":
                    break
        value = None
        if script is not None:
            answer = self.call(
                "Runtime.evaluate",
                {"expression": script, "returnByValue": True, "awaitPromise": True},
                session=session,
                seen=events,
            )
            if "exceptionDetails" in answer:
                raise RuntimeError(f"the script failed: {answer['exceptionDetails']}")
            value = answer["result"].get("value")
        shot = self.call("Page.captureScreenshot", {"format": "png"}, session=session, seen=events)
        self.call("Target.closeTarget", {"targetId": target}, seen=events)
        record = PageLoad(url, screenshot=base64.b64decode(shot["data"]))
        for e in events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                record.console_errors.append(" ".join(str(a.get("value", a)) for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                record.console_errors.append(str(details.get("exception", {}).get("description") or details))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                record.console_errors.append(str(params["entry"].get("text")))
            elif method == "Network.requestWillBeSent":
                record.requests.append(params["request"]["url"])
        return record, value
