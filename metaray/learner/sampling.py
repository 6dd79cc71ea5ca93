"""What every sampler shares: seeded random draws, the weights version, and the random state a
checkpoint keeps so that a resumed run continues exactly like the uninterrupted one.

A sampler is the worker side of an algorithm (see `metaray.core.Sampler`); subclasses set
`self.env` (a `TaskVectorEnv`) and `self.policy` (the module the published weights load into).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from metaray.core import Weights
from metaray.networks import load_weights
from metaray.tasks import TaskVectorEnv


class SamplerBase:
    env: TaskVectorEnv
    policy: nn.Module

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.torch_gen = torch.Generator().manual_seed(int(self.rng.integers(2**62)))
        self.version = -1
        self.dropped_episodes = 0  # episodes (stream samplers: trials) dropped after an env failure

    def set_weights(self, version: int, weights: Weights) -> None:
        load_weights(self.policy, weights)
        self.version = version

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The sampler's state for exact resume: a JSON-able dict and named arrays (copies; the
        runner keeps them as safetensors `workers/{slot}/<name>`). Here the random state (task
        draws, action noise, envs); `meta["in_flight"]` says whether it also holds the partial
        work (a stream sampler's unfinished trials): without it, a checkpoint restarts them."""
        meta = {"rng": self.rng.bit_generator.state, "env": self.env.get_rng_state(), "env_slots": self.env.num_envs,
                "in_flight": False}
        return meta, {"torch_gen": self.torch_gen.get_state().numpy().copy()}

    def set_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Continue from `get_state()`'s state (the weights version is not part of it: weights
        come from the parameter server)."""
        self.resize_env(int(meta["env_slots"]))
        self.rng.bit_generator.state = meta["rng"]
        self.env.set_rng_state(meta["env"])
        self.torch_gen.set_state(torch.from_numpy(np.array(arrays["torch_gen"], np.uint8)))

    def resize_env(self, num_envs: int) -> None:
        """Give the env `num_envs` slots without drawing from `rng` (restoring a checkpoint)."""

    def restart(self) -> None:
        """Drop partial work; samplers that keep none have nothing to do."""

    def close(self) -> None:
        """Close the envs."""
        self.env.close()
