"""A run's metrics as they come, for watching a long run: a CSV file or TensorBoard event files.

`secateurs run --metrics-log run1.csv` (or `secateurs.run(..., metrics_log=...)`) appends one
line per metric of every event (`time_s, stage, level, control, kind, step, metric, value`: a
long table that needs no header change when a later stage brings new metrics), flushed at once so
`tail -f` and a notebook see it live; a resumed run appends to the same file. A path without
`.csv` is a TensorBoard log directory (needs the `tensorboard` package), where training steps
count on across stages so the curves of a whole recipe join up.
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from secateurs.core.errors import ConfigError
from secateurs.pipeline.result import MetricEvent

__all__ = ["MetricsLog"]

COLUMNS = ("time_s", "stage", "level", "control", "kind", "step", "metric", "value")


class MetricsLog:
    """Writes every `MetricEvent` it is called with; use as a context manager (or call `close`)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.started = time.perf_counter()
        self._csv: Any = None
        self._writer: Any = None
        self._board: Any = None
        self._base: dict[int, int] = {}  # TensorBoard: the global step each stage starts from
        self._last = 0
        if self.path.suffix.lower() == ".csv":
            self._open_csv()
        else:
            self._open_board()

    def _open_csv(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fresh = not self.path.exists() or self.path.stat().st_size == 0
            self._csv = self.path.open("a", newline="", encoding="utf-8")
        except OSError as err:
            raise ConfigError(
                f"cannot write the metrics log {self.path} ({err})", fix="choose a writable path"
            ) from None
        self._writer = csv.writer(self._csv)
        if fresh:
            self._writer.writerow(COLUMNS)
            self._csv.flush()

    def _open_board(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                f"a TensorBoard metrics log ({self.path}) needs the tensorboard package",
                fix="pip install tensorboard, or give a path ending in .csv",
            ) from None
        self._board = SummaryWriter(log_dir=str(self.path))

    def _global_step(self, event: MetricEvent) -> int:
        base = self._base.setdefault(event.stage, self._last)
        step = base + (event.step or 0)
        self._last = max(self._last, step)
        return step

    def __call__(self, event: MetricEvent) -> None:
        if self._writer is not None:
            elapsed = f"{time.perf_counter() - self.started:.3f}"
            for metric, value in event.metrics.items():
                row = (
                    elapsed,
                    event.stage,
                    event.level,
                    event.control,
                    event.kind,
                    event.step,
                    metric,
                    value,
                )
                self._writer.writerow(["" if v is None else v for v in row])
            self._csv.flush()
        if self._board is not None:
            step = self._global_step(event)
            prefix = f"{event.control}/" if event.control else ""
            for metric, value in event.metrics.items():
                self._board.add_scalar(f"{prefix}{event.kind}/{metric}", value, step)
            self._board.flush()

    def close(self) -> None:
        if self._csv is not None:
            self._csv.close()
        if self._board is not None:
            self._board.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()
