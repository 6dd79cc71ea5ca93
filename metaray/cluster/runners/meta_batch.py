"""Meta-batch mode (e.g. the gradient-based meta-learners): scheduler -> workers -> learner, one
iteration at a time. Between iterations: resize, probe, replace dead workers. The iteration's
tasks are split into one job per live worker; a job whose worker fails goes to the next idle
live worker at once (its replacement joins in the background, see `WorkerPool`), so the
iteration completes with the same task set on whatever workers are alive; a job running past
workers.task_timeout_s is issued to an idle worker as well (the first result wins).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from metaray.cluster.runners.base import Runner
from metaray.cluster.worker_pool import TrainingError
from metaray.core import Batch, checked_loop_spec, finite_mean

MAX_BATCH_LOSSES = 3  # iterations re-collected after sample batches were lost with a node


class MetaBatchRunner(Runner):
    keeps_worker_state = True  # idle between iterations: their random state is kept with each one

    def _loop(self) -> None:
        self._job_seconds: list[float] = []  # how long each finished job took (task_timeout_s: auto)
        tasks_per_iteration = checked_loop_spec(self.algorithm, self.algo_config).tasks_per_iteration
        while self.counters["iteration"] < self.config.iterations:
            self._tend_pool()
            with self._scheduler_lock:
                tasks = self.scheduler.next_batch(tasks_per_iteration)
            stats, infos, external, sampling_s = self._sample_and_learn(tasks)
            self._end_iteration(stats, self._iteration_stats(infos, external, sampling_s))

    def _tend_pool(self) -> None:
        """Retire removed workers, admit new ones, replace those that do not answer; with no
        worker alive, wait for one (bounded by workers.unplaceable_timeout_s)."""
        for slot in list(self.pool.retiring):
            self.pool.retire(slot)
        self._tick_pool()
        if self.pool.probe():
            self._count_restarts()
        if not len(self.pool):
            self._await_a_worker()

    def _sample_and_learn(self, tasks: list[Any]) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]], float]:
        """Collect the meta-batch (part of it from actors outside Ray) and update the learner;
        also the seconds spent collecting (up to the last try's update).
        A batch kept on a node that died after its worker answered is lost before the learner
        could read it (the update did not run): the same tasks are collected again."""
        t0 = time.perf_counter()
        n_external = self.remote.offer(tasks, self.version) if self.remote is not None else 0
        ray_tasks = tasks[n_external:]
        external: list[tuple[Any, dict[str, Any]]] = []
        for attempt in range(MAX_BATCH_LOSSES + 1):
            done = self._collect_tasks(ray_tasks)
            if n_external and attempt == 0:
                assert self.remote is not None
                external, missing = self.remote.collect_offer()
                if missing:  # nobody took them, or their actor is late: the Ray workers run them
                    ray_tasks = ray_tasks + missing
                    done += self._collect_tasks(missing)
            sampling_s = time.perf_counter() - t0
            batches = [batch for batch, _ in done]
            if external:
                batches.append(Batch(self.version, [r for r, _ in external], sum(x["rollouts"] for _, x in external)))
            stats = self._update(batches)
            if stats is not None:
                return stats, [info for _, info in done], [info for _, info in external], sampling_s
            self.display.message("re-running the iteration's tasks")
            self.counters["tasks_requeued_total"] += len(ray_tasks)
            if self.pool.probe():
                self._count_restarts()
        raise TrainingError(f"sample batches were lost {MAX_BATCH_LOSSES + 1} times in a row")

    def _iteration_stats(self, infos: list[dict[str, Any]], external: list[dict[str, Any]],
                         sampling_s: float) -> dict[str, Any]:
        """Count the workers' and actors' episodes, let the scheduler see each task's returns,
        and the iteration's return and success summaries."""
        per_task = [t for x in infos for t in x["per_task"]]
        for info in infos:
            self._count_worker_info(info)
        for info in external:
            self._count_worker_info(info)
        for t in per_task + external:
            self.scheduler.observe(t["task_id"], return_pre=t["return_pre"], return_post=t["return_post"],
                                   env_steps=t["env_steps"])
        everything = per_task + external
        success = {  # families that report success (Meta-World), when every task has it
            f"success_rate_{stage}": finite_mean(t[f"success_{stage}"] for t in per_task)
            for stage in ("pre", "post") if not external and per_task and all(f"success_{stage}" in t for t in per_task)
        }
        return {
            **success, **self.scheduler.regret_stats(),
            "return_pre": finite_mean(t["return_pre"] for t in everything),
            "return_post": finite_mean(t["return_post"] for t in everything),
            "sampling_s": sampling_s,
            "sample_s_mean": float(np.mean([x["sample_s"] for x in infos + external])),
        }

    def _collect_tasks(self, tasks: list[Any]) -> list[tuple[Any, dict[str, Any]]]:
        """Run `tasks` on the Ray workers: one job per live worker, balanced by expected cost."""
        if not tasks:
            return []
        if not len(self.pool):
            self._await_a_worker()
        return self._collect([part for part in self.scheduler.balance(tasks, len(self.pool)) if part])

    def _collect(self, jobs: list[list[Any]]) -> list[tuple[Any, dict[str, Any]]]:
        """Run each job (a list of tasks) on an idle live worker, in order; returns (batch ref,
        info) per job, in job order.

        A job whose worker fails goes back to the queue for the next idle worker
        (tasks_requeued_total). A job running past the task timeout is issued again to an idle
        worker; the first result wins and the other is discarded (tasks_reissued_total,
        duplicate_results_total). Every wait is short, so replacements join and signals are
        acted on while the jobs run."""
        queue = list(range(len(jobs)))  # jobs running nowhere
        running: dict[Any, tuple[int, int, Any, Any, float]] = {}  # info future -> (job, slot, batch, worker, start)
        done: dict[int, tuple[Any, dict[str, Any]]] = {}
        reissued: set[int] = set()

        def submit(j: int, slot: int) -> None:
            handle = self.pool.handle(slot)
            batch, info = handle.collect.options(num_returns=2).remote(jobs[j], self.version)
            running[info] = (j, slot, batch, handle, time.monotonic())

        while len(done) < len(jobs):
            self._tick_pool()
            busy = {r[1] for r in running.values()}
            idle = [s for s in self.pool.slots if s not in busy and s not in self.pool.retiring]
            while queue and idle:
                submit(queue.pop(0), idle.pop(0))
            if not running:
                self._await_a_worker()
                continue
            ready, _ = self.runtime.wait(list(running), num_returns=1, timeout=1.0)
            if ready:
                j = self._take_result(ready[0], running, done)
                if j is not None and j not in done and all(r[0] != j for r in running.values()):
                    self.counters["tasks_requeued_total"] += len(jobs[j])
                    queue.append(j)
            else:
                self._reissue_slow_jobs(jobs, running, done, reissued, submit)
        self.counters["duplicate_results_total"] += len(running)  # still running: discarded
        return [done[j] for j in range(len(jobs))]

    def _take_result(self, ready: Any, running: dict[Any, tuple], done: dict[int, Any]) -> int | None:
        """Keep a finished job's result; the job's index when its worker failed instead."""
        j, slot, batch, handle, started = running.pop(ready)
        info = self._result_or_replace(ready, slot, handle)
        if info is None:
            return j
        self._job_seconds.append(time.monotonic() - started)
        if j in done:
            self.counters["duplicate_results_total"] += 1
        else:
            done[j] = (batch, info)
        return None

    def _task_timeout(self) -> float | None:
        """workers.task_timeout_s, or with 'auto' 4x the median job time so far (at least 10 s)."""
        timeout = self.config.workers.task_timeout_s
        if timeout != "auto":
            return timeout
        recent = self._job_seconds[-200:]
        return max(10.0, 4.0 * float(np.median(recent))) if recent else None

    def _reissue_slow_jobs(self, jobs: list[list[Any]], running: dict[Any, tuple], done: dict[int, Any],
                           reissued: set[int], submit: Callable[[int, int], None]) -> None:
        timeout = self._task_timeout()
        if timeout is None:
            return
        now = time.monotonic()
        for j, slot, _, _, started in list(running.values()):
            if j in done or j in reissued or now - started <= timeout:
                continue
            busy = {r[1] for r in running.values()}
            target = next((s for s in self.pool.slots if s not in busy and s not in self.pool.retiring), None)
            if target is None:  # only to an idle worker: a busy one would queue it behind its own work
                continue
            self.display.message(f"tasks of rollout worker {slot} exceed the task timeout of {timeout:.0f} s; "
                                 f"issuing them to worker {target} as well")
            reissued.add(j)
            self.counters["tasks_reissued_total"] += len(jobs[j])
            submit(j, target)
