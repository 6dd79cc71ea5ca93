"""The task scheduler: which train tasks the next meta-iteration runs, and on which worker.

Strategies plug in behind `next_batch`: `uniform` (fresh tasks from the family's train split
every iteration) and `fixed-set` (a fixed list of train tasks, cycled in order, as Meta-World
defines its benchmarks: the family's own `train_tasks()` when it has one, else `fixed_set_size`
tasks drawn once). The test split is never drawn here. `assign` balances the tasks over the
workers by expected cost (the env steps a task took last time, from `observe`). RNG, position
and per-task statistics are part of the checkpoint, so a resumed run draws what it would have.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from metaray.tasks import Task, TaskFamily

STRATEGIES = ("uniform", "fixed-set")


class TaskScheduler:
    def __init__(self, family: TaskFamily, seed: int, strategy: str = "uniform", fixed_set_size: int = 50):
        if strategy not in STRATEGIES:
            raise ValueError(f"scheduler.strategy: unknown strategy {strategy!r} (known: {', '.join(STRATEGIES)})")
        self.family, self.strategy = family, strategy
        self.rng = np.random.default_rng([seed, 0x5C4ED])
        self.requeued: deque[Task] = deque()
        self.stats: dict[int, dict[str, float]] = {}
        self.fixed: list[Task] = []
        self.position = 0
        if strategy == "fixed-set":
            own = getattr(family, "train_tasks", None)
            self.fixed = list(own()) if callable(own) else family.sample(fixed_set_size, self.rng, "train")

    def next_batch(self, n: int) -> list[Task]:
        """n train tasks: re-queued ones first, then fresh draws (uniform) or the next ones of the
        fixed set, wrapping around (fixed-set)."""
        batch = [self.requeued.popleft() for _ in range(min(n, len(self.requeued)))]
        missing = n - len(batch)
        if missing and self.strategy == "uniform":
            batch += self.family.sample(missing, self.rng, "train")
        elif missing:
            batch += [self.fixed[(self.position + i) % len(self.fixed)] for i in range(missing)]
            self.position = (self.position + missing) % len(self.fixed)
        return batch

    def requeue(self, tasks: list[Task]) -> None:
        self.requeued.extend(tasks)

    def observe(self, task_id: int, **values: float) -> None:
        """Per-task running statistics (visits and the latest values reported)."""
        entry = self.stats.setdefault(task_id, {"visits": 0})
        entry["visits"] += 1
        entry.update(values)

    def expected_cost(self, task: Task) -> float:
        """Env steps the task took last time; unseen tasks cost the mean of the seen ones (or 1)."""
        seen = [e["env_steps"] for e in self.stats.values() if "env_steps" in e]
        default = float(np.mean(seen)) if seen else 1.0
        return float(self.stats.get(task.task_id, {}).get("env_steps", default))

    def balance(self, tasks: list[Task], num_workers: int) -> list[list[Task]]:
        """Split tasks over workers so their expected costs are even (greedy longest-first);
        with equal costs this is round robin."""
        return self.assign(tasks, num_workers, [self.expected_cost(t) for t in tasks])

    @staticmethod
    def assign(tasks: list[Task], num_workers: int, costs: list[float] | None = None) -> list[list[Task]]:
        """Greedy longest-processing-time split: each task, costliest first, goes to the worker
        with the least expected work so far (ties: the lowest worker index, task order kept)."""
        costs = costs or [1.0] * len(tasks)
        order = sorted(range(len(tasks)), key=lambda i: -costs[i])  # stable: equal costs keep order
        loads, parts = [0.0] * num_workers, [[] for _ in range(num_workers)]
        for i in order:
            w = min(range(num_workers), key=lambda k: (loads[k], k))
            parts[w].append(i)
            loads[w] += costs[i]
        return [[tasks[i] for i in sorted(part)] for part in parts]

    def get_state(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "position": self.position,
                "stats": {str(k): v for k, v in self.stats.items()},
                "fixed": [t.task_id for t in self.fixed]}

    def set_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.position = int(state.get("position", 0))
        self.stats = {int(k): dict(v) for k, v in state.get("stats", {}).items()}
        if "fixed" in state and [t.task_id for t in self.fixed] != state["fixed"]:
            raise ValueError("scheduler: the checkpoint's fixed task set differs from this run's")
