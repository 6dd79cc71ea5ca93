"""The task scheduler: which train tasks the next meta-iteration runs, and on which worker.

Strategies plug in behind `next_batch`; this file has `uniform` (fresh tasks from the family's
train split every iteration). The test split is never drawn here. Its RNG state is part of the
checkpoint, so a resumed run draws the same tasks it would have drawn.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from metaray.tasks import Task, TaskFamily


class TaskScheduler:
    def __init__(self, family: TaskFamily, seed: int, strategy: str = "uniform"):
        if strategy != "uniform":
            raise ValueError(f"scheduler.strategy: unknown strategy {strategy!r} (known: uniform)")
        self.family, self.strategy = family, strategy
        self.rng = np.random.default_rng([seed, 0x5C4ED])
        self.requeued: deque[Task] = deque()
        self.stats: dict[int, dict[str, float]] = {}

    def next_batch(self, n: int) -> list[Task]:
        """n train tasks: re-queued ones first, then fresh draws."""
        batch = [self.requeued.popleft() for _ in range(min(n, len(self.requeued)))]
        if len(batch) < n:
            batch += self.family.sample(n - len(batch), self.rng, "train")
        return batch

    def requeue(self, tasks: list[Task]) -> None:
        self.requeued.extend(tasks)

    def observe(self, task_id: int, **values: float) -> None:
        """Per-task running statistics (visits and the latest values reported)."""
        entry = self.stats.setdefault(task_id, {"visits": 0})
        entry["visits"] += 1
        entry.update(values)

    @staticmethod
    def assign(tasks: list[Task], num_workers: int) -> list[list[Task]]:
        """Split tasks over workers as evenly as possible (equal expected cost per task)."""
        return [tasks[i::num_workers] for i in range(num_workers)]

    def get_state(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def set_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
