"""Live progress of a training run: a rich progress bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

RETURN_KEYS = ("trial_return", "return_pre", "return_post")


def summary(record: dict[str, Any]) -> str:
    parts = [f"{record['env_steps_per_s']:,.0f} steps/s"]
    for key in RETURN_KEYS:
        if key in record:
            parts.append(f"{key} {record[key]:.3f}")
    parts.append(f"v{record['policy_version']}")
    if record.get("policy_lag_mean") is not None:
        parts.append(f"lag {record['policy_lag_mean']:.2f}")
    return "  ".join(parts)


class ProgressDisplay:
    """Shows iteration, env steps/s and returns. Plain lines at most every `plain_every_s`."""

    def __init__(self, total: int, start: int, live: bool | None = None, plain_every_s: float = 2.0):
        self.live = sys.stdout.isatty() if live is None else live
        self.total, self.plain_every_s, self.last_line = total, plain_every_s, 0.0
        self.progress: Progress | None = None
        if self.live:
            self.progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=Console(), transient=False,
            )
            self.task = self.progress.add_task("train", total=total, completed=start, info="starting")
            self.progress.start()

    def update(self, record: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=record["iteration"], info=summary(record))
            return
        now = time.monotonic()
        if now - self.last_line >= self.plain_every_s or record["iteration"] >= self.total:
            self.last_line = now
            print(f"iter {record['iteration']}/{self.total}  {summary(record)}", flush=True)

    observe = update  # an observer of the run (metaray.cluster.observers)

    def message(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
