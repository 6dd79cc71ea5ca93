"""The rollout worker: one vector env of many slots and a policy, on one CPU.

It holds no algorithm logic: the algorithm's sampler (see `metaray.core`) does the per-step
work; the worker keeps its weights current (fetching only when the parameter server has a newer
version), reports what the runtime counts, and hands the learner its payload as a `Batch`,
which Ray moves through the object store.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch

from metaray.core import AlgorithmError, Batch, SampleInfo, TaskResult, get_algorithm
from metaray.learner.variables import VariableClient
from metaray.tasks import Task, generic, make_family


class RolloutWorker:
    def __init__(
        self, index: int, algo: str, algo_config: dict[str, Any], family: str,
        family_kwargs: dict[str, Any], seed: int, variables: VariableClient, torch_threads: int = 1,
        env_guard: dict[str, Any] | None = None,
    ):
        torch.set_num_threads(torch_threads)
        for key, value in (env_guard or {}).items():
            setattr(generic.GUARD, key, value)
        self.index = index
        self.algorithm = algorithm = get_algorithm(algo)
        self.config = algorithm.Config.model_validate(algo_config)
        self.family = make_family(family, family_kwargs)
        # The sampler's initial weights are overwritten by the parameter server's; building it
        # must not advance the process's global torch RNG (shared with the learner in --serial).
        with torch.random.fork_rng(devices=[]):
            self.sampler = algorithm.make_sampler(self.family, self.config, seed)
        self.variables = variables
        self.weight_fetches = 0
        self._failures_seen = sum(generic.ENV_FAILURES.values())
        self._dropped_seen = 0

    def ping(self) -> dict[str, Any]:
        """Health probe: answers at once when the worker is alive and idle."""
        return {"index": self.index, "pid": os.getpid(), "version": self.sampler.version, "node": _node_id()}

    def _failure_counts(self) -> dict[str, int]:
        """Env failures and dropped episodes/trials since the last call."""
        failures, dropped = sum(generic.ENV_FAILURES.values()), self.sampler.dropped_episodes
        out: dict[str, Any] = {"env_failures": failures - self._failures_seen, "dropped_episodes": dropped - self._dropped_seen}
        if out["env_failures"]:
            out["env_failure_last"] = generic.LAST_ENV_FAILURE[0]
        self._failures_seen, self._dropped_seen = failures, dropped
        return out

    def sync_weights(self) -> int:
        """Fetch weights only if the parameter server holds a newer version than ours."""
        found = self.variables.latest(self.sampler.version)
        if found is not None:
            self.sampler.set_weights(*found)
            self.weight_fetches += 1
        return self.sampler.version

    def sample(self, min_trials: int) -> tuple[Batch, dict[str, Any]]:
        """Stream algorithms: one batch of whole trials with the newest weights, and a small info dict."""
        self.sync_weights()
        start = time.perf_counter()
        out = self.sampler.sample(min_trials)
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], SampleInfo)):
            raise AlgorithmError(f"algorithm {self.algorithm.name!r}: its sampler's sample() returned "
                                 f"{type(out).__name__}, not (payload, metaray.core.SampleInfo)")
        payload, sampled = out
        info = {**vars(sampled), "worker": self.index, "sample_s": time.perf_counter() - start, "pid": os.getpid(),
                **self._failure_counts()}
        return Batch(sampled.policy_version, payload), info

    def collect(self, tasks: list[Task], version: int) -> tuple[Batch, dict[str, Any]]:
        """Meta-batch algorithms: run the algorithm's worker step on these tasks with `version`.
        The per-task summaries of the true reward go to the info (the runtime reports them);
        the learner's batch holds the results without them."""
        if self.sync_weights() < version:
            raise RuntimeError(f"worker {self.index}: parameter server has no version {version} yet")
        start = time.perf_counter()
        results = self.sampler.collect(tasks, self.sampler.version)
        self._check_results(results, tasks)
        per_task = [{"task_id": r.task_id, "env_steps": r.env_steps, **r.metrics} for r in results]
        info = {
            "worker": self.index, "policy_version": self.sampler.version, "num_tasks": len(results),
            "env_steps": sum(r.env_steps for r in results), "episodes": sum(r.episodes for r in results),
            "per_task": per_task, "sample_s": time.perf_counter() - start, **self._failure_counts(),
        }
        return Batch(self.sampler.version, [r.for_learner() for r in results]), info

    def _check_results(self, results: Any, tasks: list[Task]) -> None:
        """A meta-batch sampler returns one TaskResult per task it was given, in any order;
        otherwise AlgorithmError (one line): the learner would silently train on part of the
        meta-batch."""
        who = f"algorithm {self.algorithm.name!r}: its sampler's collect()"
        if not isinstance(results, list) or not all(isinstance(r, TaskResult) for r in results):
            shown = type(results).__name__ if not isinstance(results, list) else "a list holding other things"
            raise AlgorithmError(f"{who} returned {shown}, not a list of metaray.core.TaskResult")
        if sorted(r.task_id for r in results) != sorted(t.task_id for t in tasks):
            raise AlgorithmError(f"{who} returned {len(results)} results for {len(tasks)} tasks: one TaskResult per task "
                                 "it was given, with that task's task_id")

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The sampler's state for exact resume: random state (task draws, action noise, envs)
        and, where it can (`meta["in_flight"]`), its partial work; a JSON-able dict and named arrays."""
        return self.sampler.get_state()

    def set_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.sampler.set_state(meta, arrays)

    def restart_trials(self) -> None:
        """Samplers drop their partial work: a checkpoint that could not keep it does this in the
        running run too, so a resumed run continues exactly like it."""
        self.sampler.restart()

    def stats(self) -> dict[str, int]:
        return {"index": self.index, "version": self.sampler.version, "weight_fetches": self.weight_fetches}


def _node_id() -> str | None:
    """The Ray node this worker runs on (None outside Ray)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
