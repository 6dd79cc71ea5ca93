"""The task scheduler: which train tasks the next meta-iteration runs, and on which worker.

Strategies plug in behind `next_batch`: `uniform` (fresh tasks from the family's train split
every iteration), `fixed-set` (a fixed list of train tasks, cycled in order, as Meta-World
defines its benchmarks: the family's own `train_tasks()` when it has one, else `fixed_set_size`
tasks drawn once) and `regret` (an adversary at the task level, PAIRED / AdMRL style with the
family's expert as the antagonist: a share λ of each meta-batch is replayed from the train tasks
seen so far, the higher a task's running regret = expert's true return − adapted policy's true
return the likelier, rank-based as in prioritized level replay; the rest are fresh uniform
draws). The test split is never drawn here. `assign` balances the tasks over the
workers by expected cost (the env steps a task took last time, from `observe`). RNG, position
and per-task statistics are part of the checkpoint, so a resumed run draws what it would have.

Per-task statistics are bounded: the tasks that can be scheduled again (the regret pool, the fixed
set) keep theirs; of the others only the `STATS_KEPT` most recently observed do. A continuous
family draws a new task every time, so an unbounded table grew by one entry per task for the whole
run (40 a meta-iteration on halfcheetah-vel: ~4.6 MB more checkpoint, and memory, per 1000).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any

import numpy as np

from metaray.tasks import Task, TaskFamily

STRATEGIES = ("uniform", "fixed-set", "regret")
STATS_KEPT = 4096  # per-task statistics kept beyond the pool and fixed set (most recently observed)


def expert_return(family: TaskFamily, task: Task, seed: int = 0) -> float:
    """True return of one episode of the family's expert on `task`."""
    env = family.make_env(task)
    act = family.expert(task)
    obs, _ = env.reset(seed=seed)
    total, done = 0.0, False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(act(obs))
        total += float(reward)
        done = terminated or truncated
    env.close()
    return total


class TaskScheduler:
    def __init__(self, family: TaskFamily, seed: int, strategy: str = "uniform", fixed_set_size: int = 50,
                 regret_share: float = 0.5, regret_temperature: float = 0.3, regret_pool_size: int = 1000,
                 regret_smoothing: float = 0.5):
        if strategy not in STRATEGIES:
            raise ValueError(f"scheduler.strategy: unknown strategy {strategy!r} (known: {', '.join(STRATEGIES)})")
        if strategy == "regret" and not callable(getattr(family, "expert", None)):
            raise ValueError(f"scheduler.strategy regret needs an expert: task family {family.name!r} has no expert(task)")
        self.family, self.strategy = family, strategy
        self.regret_share, self.regret_temperature = regret_share, regret_temperature
        self.regret_pool_size, self.regret_smoothing = regret_pool_size, regret_smoothing
        self.pool: dict[int, Task] = {}  # regret: train tasks seen, by id (the replay candidates)
        self.rng = np.random.default_rng([seed, 0x5C4ED])
        self.requeued: deque[Task] = deque()
        self.stats: OrderedDict[int, dict[str, float]] = OrderedDict()  # least recently observed first
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
        if missing and self.strategy == "regret":
            replay = self._replay(round(self.regret_share * missing), exclude={t.task_id for t in batch})
            fresh = self.family.sample(missing - len(replay), self.rng, "train")
            for task in fresh:
                self.pool[task.task_id] = task
            batch += replay + fresh
            self._trim_pool()
        elif missing and self.strategy == "uniform":
            batch += self.family.sample(missing, self.rng, "train")
        elif missing:
            batch += [self.fixed[(self.position + i) % len(self.fixed)] for i in range(missing)]
            self.position = (self.position + missing) % len(self.fixed)
        return batch

    def _replay(self, count: int, exclude: set[int]) -> list[Task]:
        """`count` distinct seen tasks, P(task) ∝ (1 / rank by regret)^(1 / temperature)."""
        scored = [(self.stats[i]["regret"], i) for i in self.pool if i not in exclude and "regret" in self.stats.get(i, {})]
        count = min(count, len(scored))
        if count == 0:
            return []
        scored.sort(reverse=True)
        weights = (1.0 / np.arange(1, len(scored) + 1)) ** (1.0 / self.regret_temperature)
        picks = self.rng.choice(len(scored), size=count, replace=False, p=weights / weights.sum())
        return [self.pool[scored[k][1]] for k in sorted(picks)]

    def _trim_pool(self) -> None:
        """Keep the `regret_pool_size` tasks of highest regret (unscored ones count as highest)."""
        if len(self.pool) > self.regret_pool_size:
            keep = sorted(self.pool, key=lambda i: -self.stats.get(i, {}).get("regret", np.inf))[: self.regret_pool_size]
            self.pool = {i: self.pool[i] for i in keep}

    def requeue(self, tasks: list[Task]) -> None:
        self.requeued.extend(tasks)

    def observe(self, task_id: int, **values: float) -> None:
        """Per-task running statistics (visits and the latest values reported). With `regret`,
        a task's regret is smoothed: r ← (1 − s)·r + s·(expert return − return_post)."""
        entry = self.stats.setdefault(task_id, {"visits": 0})
        self.stats.move_to_end(task_id)
        entry["visits"] += 1
        entry.update(values)
        # a NaN return (every episode of the task dropped after env failures) says nothing about regret
        if self.strategy == "regret" and np.isfinite(values.get("return_post", np.nan)) and task_id in self.pool:
            if "expert_return" not in entry:
                entry["expert_return"] = expert_return(self.family, self.pool[task_id])
            regret = entry["expert_return"] - float(values["return_post"])
            s = self.regret_smoothing
            entry["regret"] = regret if "regret" not in entry else (1 - s) * entry["regret"] + s * regret
        self._trim_stats()

    def _trim_stats(self) -> None:
        """Forget the least recently observed tasks beyond `STATS_KEPT`, never a task of the pool
        or the fixed set (those are scheduled again and need theirs)."""
        excess = len(self.stats) - STATS_KEPT
        if excess <= 0:
            return
        keep = self.pool.keys() | {t.task_id for t in self.fixed}
        drop = []
        for task_id in self.stats:  # oldest first
            if len(drop) == excess:
                break
            if task_id not in keep:
                drop.append(task_id)
        for task_id in drop:
            del self.stats[task_id]

    def regret_stats(self) -> dict[str, float]:
        """Mean and largest running regret over the replay pool (for progress rows)."""
        regrets = [self.stats[i]["regret"] for i in self.pool if "regret" in self.stats.get(i, {})]
        return {"regret_mean": float(np.mean(regrets)), "regret_max": float(np.max(regrets))} if regrets else {}

    def expected_costs(self, tasks: list[Task]) -> list[float]:
        """Env steps each task took last time; unseen tasks cost the mean of the tasks whose
        statistics are kept (or 1)."""
        seen = [e["env_steps"] for e in self.stats.values() if "env_steps" in e]
        default = float(np.mean(seen)) if seen else 1.0
        return [float(self.stats.get(t.task_id, {}).get("env_steps", default)) for t in tasks]

    def balance(self, tasks: list[Task], num_workers: int) -> list[list[Task]]:
        """Split tasks over workers so their expected costs are even (greedy longest-first);
        with equal costs this is round robin."""
        return self.assign(tasks, num_workers, self.expected_costs(tasks))

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
                "fixed": [t.task_id for t in self.fixed],
                "pool": [[t.task_id, list(t.params)] for t in self.pool.values()]}

    def set_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.position = int(state.get("position", 0))
        self.stats = OrderedDict((int(k), dict(v)) for k, v in state.get("stats", {}).items())
        self.pool = {int(i): Task(self.family.name, "train", int(i), tuple(float(p) for p in params))
                     for i, params in state.get("pool", [])}
        if "fixed" in state and [t.task_id for t in self.fixed] != state["fixed"]:
            raise ValueError("scheduler: the checkpoint's fixed task set differs from this run's")
