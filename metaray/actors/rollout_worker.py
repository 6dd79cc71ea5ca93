"""The rollout worker: one vector env of many slots and a policy, on one CPU.

It holds no algorithm logic: the algorithm's Sampler does the per-step work; the worker keeps
its weights current (fetching only when the parameter server has a newer version) and returns
whole trials/episodes as numpy arrays, which Ray moves through the object store.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from metaray.learner import get_algorithm
from metaray.learner.variables import VariableClient
from metaray.tasks import make_family


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
        self.sampler = algorithm.Sampler(self.family, self.config, self.config.slots_per_worker, seed)
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

    def stats(self) -> dict[str, int]:
        return {"index": self.index, "version": self.sampler.version, "weight_fetches": self.weight_fetches}
