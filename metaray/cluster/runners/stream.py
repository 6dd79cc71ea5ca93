"""Stream mode (e.g. the recurrent meta-learner of metaray.learner): every live worker always has
one sampling call in flight, so sampling goes on while the learner updates; batches older than
the algorithm's policy lag are dropped and counted. A failed worker's replacement joins in the
background (see `WorkerPool`) while the others sample on; new workers join, retired ones leave
once their call in flight has returned."""

from __future__ import annotations

from typing import Any

import numpy as np

from metaray.cluster.runners.base import Runner
from metaray.cluster.worker_pool import TrainingError
from metaray.core import Batch, checked_loop_spec


class StreamRunner(Runner):
    def __init__(self, *args: Any, **kwargs: Any):
        self._pending: dict[Any, tuple[int, Any, Any]] = {}  # info future -> (slot, batch future, worker)
        self._parked: list[int] = []  # sync: workers waiting for the update to sample on
        super().__init__(*args, **kwargs)

    def _loop(self) -> None:
        spec = checked_loop_spec(self.algorithm, self.algo_config)
        self._sync, self._per_update = spec.sync, spec.trials_per_update
        for slot in self._launch_order + [s for s in self.pool.slots if s not in self._launch_order]:
            self._launch(slot, spec.trials_per_call)
        self._batches: list[Batch] = []
        self._infos: list[dict[str, Any]] = []
        self._trials = 0
        self._empty_calls = 0  # sampling calls in a row that returned no trial, all dropped
        # with a gRPC service, also look at its queue at least every 50 ms; else every second
        # (replacements join, and a signal is acted on, while the workers sample)
        timeout = 0.05 if self.remote is not None else 1.0
        while self.counters["iteration"] < self.config.iterations:
            for joined in self._tick_pool():
                self._launch(joined, spec.trials_per_call)
            if not self._pending and self._parked and self._trials < spec.trials_per_update:
                self._launch_parked(spec.trials_per_call)  # sync, but batches were dropped: sample more
            if not self._pending and not self._parked:
                for joined in self._await_a_worker():
                    self._launch(joined, spec.trials_per_call)
                continue
            ready, _ = self.runtime.wait(list(self._pending), num_returns=1, timeout=timeout)
            if ready:
                self._receive(ready[0], spec.trials_per_call, spec.max_policy_lag)
            if self.remote is not None:
                self._take_remote_trials(spec.max_policy_lag)
            # sync: only once every call has returned, so the whole batch is on-policy
            if self._trials >= spec.trials_per_update and not (self._sync and self._pending):
                self._learn()
                self._launch_parked(spec.trials_per_call)

    def _launch_parked(self, trials: int) -> None:
        parked, self._parked = self._parked, []
        for slot in parked:
            if slot in self.pool.workers:
                self._launch(slot, trials)

    def in_flight_slots(self) -> list[int]:
        """Slots sampling now, then those parked for the update (sync), in the order they go on."""
        return [slot for slot, _, _ in self._pending.values()] + self._parked

    def _launch(self, slot: int, trials: int) -> None:
        handle = self.pool.handle(slot)
        batch, info = handle.sample.options(num_returns=2).remote(trials)
        self._pending[info] = (slot, batch, handle)

    def _receive(self, ready: Any, trials: int, max_policy_lag: int) -> None:
        """A worker answered: launch its next call (or retire it), keep its batch unless too old."""
        slot, batch, handle = self._pending.pop(ready)
        info = self._result_or_replace(ready, slot, handle)
        if info is None:  # replaced in the background; the replacement is launched when it joins
            return
        if slot in self.pool.retiring:
            self.pool.retire(slot)
        elif self._sync and self._trials + info["num_trials"] + trials * len(self._pending) >= self._per_update:
            self._parked.append(slot)  # enough is coming for this update: sample on after it
        else:
            self._launch(slot, trials)
        self._count_worker_info(info)
        # every trial of a round of calls dropped (an env failing at every step): stop, as the
        # meta-batch runner does after max_dropped_iterations iterations of nothing
        dropped_all = info["num_trials"] == 0 and info.get("dropped_episodes", 0) > 0
        self._empty_calls = self._empty_calls + 1 if dropped_all else 0
        if self._empty_calls >= self.config.workers.max_dropped_iterations * max(1, len(self.pool)):
            raise TrainingError(self._all_dropped("rounds of sampling calls"))
        if info["num_trials"] == 0:  # nothing finished in this call: nothing to learn from
            return
        if self.version - info["policy_version"] > max_policy_lag:
            self.counters["dropped_batches_total"] += 1
            return
        self._batches.append(batch)
        self._infos.append(info)
        self._trials += info["num_trials"]

    def _take_remote_trials(self, max_policy_lag: int) -> None:
        assert self.remote is not None
        batch, counts = self.remote.drain(self.version, max_policy_lag)
        if batch is None:
            return
        self.counters["env_steps_total"] += counts["env_steps"]
        self.counters["episodes_total"] += counts["episodes"]
        self._batches.append(batch)
        self._trials += batch.remote_rollouts

    def _learn(self) -> None:
        stats = self._update(self._batches)
        if stats is None:  # a batch on a lost node: drop what was collected, go on
            self.counters["dropped_batches_total"] += len(self._batches)
        else:
            infos = self._infos
            extra = {"sample_s_mean": float(np.mean([x["sample_s"] for x in infos])) if infos else 0.0}
            rates = [(x["success_rate"], x["num_trials"]) for x in infos if x.get("success_rate") is not None]
            if rates:  # families that report success (Meta-World): share of successful episodes
                extra["success_rate"] = sum(r * k for r, k in rates) / sum(k for _, k in rates)
            self._end_iteration(stats, extra)
        self._batches, self._infos, self._trials = [], [], 0
