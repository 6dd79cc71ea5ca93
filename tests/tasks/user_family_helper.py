"""A user's own task family, as a config would name it: "user_family_helper:CoinFamily".

It only has `make_env`, so metaray runs it through the generic SyncVectorEnv path. The env is
wrapped in a TimeLimit, so its `set_task` is reachable only through the wrapper chain.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from metaray.tasks.base import Task, draw_task_ids, split_rng


class CoinEnv(gym.Env):
    """Guess the task's hidden side (0 or 1); reward 1 for a right guess; 3 guesses per episode."""

    def __init__(self, task: Task) -> None:
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.task = task
        self.t = 0

    def set_task(self, task: Task) -> None:
        self.task = task  # takes effect at once; the generic path must defer it to the reset

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action):
        self.t += 1
        reward = float(int(action) == int(self.task.params[0]))
        return np.full(1, self.t / 3, dtype=np.float32), reward, False, False, {}


class CoinFamily:
    """Guess a hidden coin side."""

    name = "coin"
    max_episode_steps = 3

    def __init__(self, bias: float = 0.5) -> None:
        if not 0.0 <= bias <= 1.0:
            raise ValueError(f"CoinFamily: bias must be in [0, 1], got {bias}")
        self.bias = bias

    def sample(self, n: int, rng: np.random.Generator, split: str = "train") -> list[Task]:
        tasks = []
        for task_id in draw_task_ids(n, rng):
            side = float(split_rng(self.name, split, task_id).random() < self.bias)
            tasks.append(Task(self.name, split, task_id, (side,)))
        return tasks

    def make_env(self, task: Task | None = None) -> gym.Env:
        task = task if task is not None else Task(self.name, "train", 0, (0.0,))
        return gym.wrappers.TimeLimit(CoinEnv(task), max_episode_steps=self.max_episode_steps)


NOT_A_CLASS = 3


class NotAFamily:
    """Builds fine but has none of a family's members."""
