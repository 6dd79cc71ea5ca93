"""The rollout worker: one vector env of many slots and a policy, on one CPU.

It holds no algorithm logic: the algorithm's Sampler does the per-step work; the worker keeps
its weights current (fetching only when the parameter server has a newer version) and returns
whole trials/episodes as numpy arrays, which Ray moves through the object store.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch

from metaray.learner import get_algorithm
from metaray.learner.variables import VariableClient
from metaray.tasks import Task, make_family


class RolloutWorker:
    def __init__(
        self, index: int, algo: str, algo_config: dict[str, Any], family: str,
        family_kwargs: dict[str, Any], seed: int, variables: VariableClient, torch_threads: int = 1,
    ):
        torch.set_num_threads(torch_threads)
        self.index = index
        algorithm = get_algorithm(algo)
        self.config = algorithm.Config.model_validate(algo_config)
        self.family = make_family(family, family_kwargs)
        slots = getattr(self.config, "slots_per_worker", 1)  # stream algorithms keep a fixed env
        self.sampler = algorithm.Sampler(self.family, self.config, slots, seed)
        self.variables = variables
        self.weight_fetches = 0

    def spaces(self) -> tuple[Any, Any]:
        return self.sampler.env.single_observation_space, self.sampler.env.single_action_space

    def sync_weights(self) -> int:
        """Fetch weights only if the parameter server holds a newer version than ours."""
        found = self.variables.latest(self.sampler.version)
        if found is not None:
            self.sampler.set_weights(*found)
            self.weight_fetches += 1
        return self.sampler.version

    def sample(self, min_trials: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """One batch of whole trials with the newest weights, and a small info dict."""
        self.sync_weights()
        start = time.perf_counter()
        batch, info = self.sampler.sample(min_trials)
        info.update(worker=self.index, sample_s=time.perf_counter() - start, pid=os.getpid())
        return batch, info

    def collect(self, tasks: list[Task], version: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """Meta-batch algorithms: run the algorithm's worker step on these tasks with `version`."""
        if self.sync_weights() < version:
            raise RuntimeError(f"worker {self.index}: parameter server has no version {version} yet")
        start = time.perf_counter()
        results = self.sampler.collect(tasks, self.sampler.version)
        per_task = [(int(r["task_id"]), float(r["return_pre"]), float(r["return_post"])) for r in results]
        info = {
            "worker": self.index, "policy_version": self.sampler.version, "num_tasks": len(results),
            "env_steps": int(sum(int(r["env_steps"]) for r in results)),
            "episodes": int(sum(int(r["episodes"]) for r in results)),
            "return_pre": float(np.mean([p[1] for p in per_task])),
            "return_post": float(np.mean([p[2] for p in per_task])),
            "per_task": per_task, "sample_s": time.perf_counter() - start,
        }
        return {"policy_version": self.sampler.version, "tasks": results}, info

    def stats(self) -> dict[str, int]:
        return {"index": self.index, "version": self.sampler.version, "weight_fetches": self.weight_fetches}
