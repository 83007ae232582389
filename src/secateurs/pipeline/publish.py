"""Publishing a run's metrics: events to a listener (the results store), evaluations to records.

A control experiment (see `secateurs.methods.controls`) runs the rest of a level on a copy of the
pipeline before the ticket does; its events and records are held back until the ticket reaches
the stage that produced them. So a resumed run re-emits exactly what an interruption dropped,
and the ticket's own trajectory is the same with and without controls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from secateurs.pipeline.result import MetricEvent, numeric


class Publisher:
    """Records and metric events of one run (shared by the run and its control branches)."""

    def __init__(self, on_metrics: Callable[[MetricEvent], None] | None = None) -> None:
        self.on_metrics = on_metrics
        self.records: list[dict[str, Any]] = []
        self.pending: list[dict[str, Any]] = []  # control events not yet published

    def publish(
        self,
        *,
        stage: int,
        level: int | None,
        control: str | None,
        kind: str,
        step: Any,
        row: dict[str, Any],
        record: bool,
    ) -> None:
        """A metric event (and, for evaluations, a record); a control's wait in `pending`."""
        step = None if step is None else int(step)
        if control is not None:
            self.pending.append(
                {
                    "stage": stage,
                    "kind": kind,
                    "level": level,
                    "step": step,
                    "control": control,
                    "metrics": numeric(row),
                    "record": row if record else None,
                }
            )
            return
        if record:
            self.records.append(row)
        self.emit(MetricEvent(stage, kind, level, step, numeric(row)))

    def emit(self, event: MetricEvent) -> None:
        if self.on_metrics is not None:
            self.on_metrics(event)

    def flush(self, stage: int) -> None:
        """Publish the held-back control events of the stages up to `stage`."""
        due = [e for e in self.pending if e["stage"] <= stage]
        self.pending[:] = [e for e in self.pending if e["stage"] > stage]
        for e in due:
            if e["record"] is not None:
                self.records.append(e["record"])
            self.emit(MetricEvent(e["stage"], e["kind"], e["level"], e["step"], e["metrics"], e["control"]))
