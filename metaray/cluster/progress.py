"""Live progress of a training run: a rich progress bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
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
        self.log_path: Path | None = None
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
        """One line for the user, also kept in the run's driver.log."""
        if self.progress is not None:
            self.progress.console.print(text)
        else:
            print(text, flush=True)
        self.log(text)

    def log_to(self, path: Path) -> None:
        """From now on, append messages (and `log` lines) to `path`, timestamped."""
        self.log_path = path

    def log(self, text: str, source: str = "metaray") -> None:
        """A line for driver.log only."""
        if self.log_path is not None:
            append_log(self.log_path, text, source)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


_LOG_LOCK = threading.Lock()  # Ray's messages arrive on its listener thread


def append_log(path: Path, text: str, source: str = "metaray") -> None:
    """Append `text` to a run's driver.log, each line timestamped and marked with its source."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with _LOG_LOCK, open(path, "a", encoding="utf-8") as out:
        out.write("".join(f"{stamp} [{source}] {line}\n" for line in text.splitlines() or [""]))
