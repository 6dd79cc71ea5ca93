"""What watches a run's iterations (Sample Factory's observer hooks): each gets every
iteration's progress record, then `close()` once when the run ends.

The runner calls them in order after each iteration: the progress file, run control (a `metaray
scale` request), the gRPC service's new version, metrics, TensorBoard, the progress display,
and the checkpoint when one is due.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

Record = dict[str, Any]


class Observer(Protocol):
    def observe(self, record: Record) -> None: ...

    def close(self) -> None: ...


class ProgressLog:
    """Appends each record to RUN_DIR/progress.jsonl (one JSON object per line)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "progress.jsonl"

    def observe(self, record: Record) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def close(self) -> None:
        pass


class Checkpointer:
    """Writes a checkpoint every `every` iterations and at the last one."""

    def __init__(self, runner: Any, every: int, last: int):
        self.runner, self.every, self.last = runner, every, last

    def observe(self, record: Record) -> None:
        iteration = record["iteration"]
        if iteration % self.every == 0 or iteration >= self.last:
            self.runner.checkpoint()

    def close(self) -> None:
        pass
