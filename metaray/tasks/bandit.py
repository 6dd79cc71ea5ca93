"""Bernoulli multi-armed bandits (Duan et al. 2016, RL²).

Each pull is a one-step episode; a trial of n pulls is n episodes, counted by the RL² sampler,
so the policy's memory (not the env) carries what was learned between pulls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from metaray.tasks.base import Task
from metaray.tasks.native import BatchedTaskEnv, NativeFamily, TaskEnv, check_int

OBSERVATION_SPACE = gym.spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)


def arm_means(task: Task) -> np.ndarray:
    """The success probability of each arm of a bandit task."""
    return task.array()


class BanditEnv(TaskEnv):
    """One bandit: observation is always 0, an action pulls an arm and ends the episode."""

    family = "bandit"

    def __init__(self, task: Task, num_arms: int = 5) -> None:
        self.num_arms = num_arms
        self.observation_space = OBSERVATION_SPACE
        self.action_space = gym.spaces.Discrete(num_arms)
        super().__init__(task, max_episode_steps=1)

    def num_params(self) -> int:
        return self.num_arms

    def _load(self, task: Task) -> None:
        self._means = arm_means(task)

    def _reset_state(self) -> np.ndarray:
        return np.zeros(1, dtype=np.float32)

    def _transition(self, action: Any) -> tuple[np.ndarray, float, bool]:
        if not self.action_space.contains(action):
            raise ValueError(f"action must be an arm in [0, {self.num_arms}), got {action!r}")
        reward = float(self.np_random.random() < self._means[int(action)])
        return np.zeros(1, dtype=np.float32), reward, True


class BanditVectorEnv(BatchedTaskEnv):
    """Many bandits pulled at once: one uniform draw per slot per step."""

    family = "bandit"

    def __init__(
        self,
        tasks: Sequence[Task],
        envs_per_task: int = 1,
        seed: int | None = None,
        *,
        num_arms: int = 5,
    ) -> None:
        super().__init__(
            tasks,
            envs_per_task,
            seed,
            num_params=num_arms,
            max_episode_steps=1,
            single_observation_space=OBSERVATION_SPACE,
            single_action_space=gym.spaces.Discrete(num_arms),
        )
        self.num_arms = num_arms
        self._slots = np.arange(self.num_envs)

    def _task_arrays(self, task: Task) -> dict[str, np.ndarray]:
        return {"means": arm_means(task)}

    def _reset_state(self, mask: np.ndarray) -> None:
        pass  # a bandit has no state

    def _episode_arrays(self) -> dict[str, np.ndarray]:
        return {}  # one pull per episode: nothing carries over between steps

    def _observe(self) -> np.ndarray:
        return np.zeros((self.num_envs, 1), dtype=np.float32)

    def _transition(self, actions: Any) -> tuple[np.ndarray, np.ndarray]:
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,) or actions.dtype.kind not in "iu":
            raise ValueError(
                f"actions must be {self.num_envs} integer arm indices, got {actions!r}"
            )
        if actions.min() < 0 or actions.max() >= self.num_arms:
            raise ValueError(f"actions must be arms in [0, {self.num_arms}), got {actions!r}")
        means = self.params["means"][self._slots, actions]
        rewards = (self.np_random.random(self.num_envs) < means).astype(np.float64)
        return rewards, np.ones(self.num_envs, dtype=bool)


@dataclass(frozen=True)
class BanditFamily(NativeFamily):
    """Bernoulli k-armed bandit, arm means ~ U[0,1], one pull per episode (Duan et al. 2016)."""

    num_arms: int = 5

    name: ClassVar[str] = "bandit"
    env_class: ClassVar[type[TaskEnv]] = BanditEnv
    vector_env_class: ClassVar[type[BatchedTaskEnv]] = BanditVectorEnv

    def __post_init__(self) -> None:
        check_int("BanditFamily", "num_arms", self.num_arms, minimum=2)

    @property
    def max_episode_steps(self) -> int:
        return 1

    def draw_params(self, rng: np.random.Generator) -> tuple[float, ...]:
        return tuple(rng.uniform(0.0, 1.0, size=self.num_arms).tolist())

    def env_kwargs(self) -> dict[str, Any]:
        return {"num_arms": self.num_arms}

    def arm_means(self, task: Task) -> np.ndarray:
        return arm_means(task)

    def expert(self, task: Task) -> Callable[[np.ndarray], int]:
        """Always pull the best arm (an oracle that knows the task)."""
        best = int(np.argmax(arm_means(task)))
        return lambda obs: best
