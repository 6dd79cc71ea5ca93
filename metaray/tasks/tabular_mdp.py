"""Random tabular MDPs (Duan et al. 2016, RL²).

A task is a reward-mean table ~ N(1, 1) and a transition table whose rows ~ Dirichlet(1).
`Task.params` holds the S*A reward means followed by the S*A*S transition probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from metaray.tasks.base import Task
from metaray.tasks.native import BatchedTaskEnv, NativeFamily, TaskEnv, check_int


def mdp_tables(task: Task, num_states: int, num_actions: int) -> tuple[np.ndarray, np.ndarray]:
    """(reward means [S, A], transition probabilities [S, A, S]) of a tabular-MDP task."""
    params = task.array()
    split = num_states * num_actions
    rewards = params[:split].reshape(num_states, num_actions)
    transitions = params[split:].reshape(num_states, num_actions, num_states)
    return rewards, transitions


def _cumulative(transitions: np.ndarray) -> np.ndarray:
    """Per-row CDFs ending at exactly 1, so a uniform draw always lands on a state."""
    cdf = np.cumsum(transitions, axis=-1)
    cdf[..., -1] = 1.0
    return cdf


def _spaces(num_states: int, num_actions: int) -> tuple[gym.spaces.Box, gym.spaces.Discrete]:
    return (
        gym.spaces.Box(0.0, 1.0, shape=(num_states,), dtype=np.float32),
        gym.spaces.Discrete(num_actions),
    )


class TabularMDPEnv(TaskEnv):
    """One tabular MDP; observation is the one-hot state, every episode starts in state 0."""

    family = "tabular-mdp"

    def __init__(
        self, task: Task, num_states: int = 10, num_actions: int = 5, episode_length: int = 10
    ) -> None:
        self.num_states = num_states
        self.num_actions = num_actions
        self.observation_space, self.action_space = _spaces(num_states, num_actions)
        super().__init__(task, max_episode_steps=episode_length)

    def num_params(self) -> int:
        return self.num_states * self.num_actions * (1 + self.num_states)

    def _load(self, task: Task) -> None:
        self._rewards, transitions = mdp_tables(task, self.num_states, self.num_actions)
        self._cdf = _cumulative(transitions)

    def _one_hot(self) -> np.ndarray:
        obs = np.zeros(self.num_states, dtype=np.float32)
        obs[self._state] = 1.0
        return obs

    def _reset_state(self) -> np.ndarray:
        self._state = 0
        return self._one_hot()

    def _transition(self, action: Any) -> tuple[np.ndarray, float, bool]:
        if not self.action_space.contains(action):
            raise ValueError(f"action must be in [0, {self.num_actions}), got {action!r}")
        # Same draws, in the same order, as TabularMDPVectorEnv with one slot.
        noise = self.np_random.standard_normal()
        u = self.np_random.random()
        reward = self._rewards[self._state, action] + noise
        self._state = int((self._cdf[self._state, action] <= u).sum())
        return self._one_hot(), reward, False


class TabularMDPVectorEnv(BatchedTaskEnv):
    """Many tabular MDPs at once: each slot's next state is found in its CDF row by one compare."""

    family = "tabular-mdp"

    def __init__(
        self,
        tasks: Sequence[Task],
        envs_per_task: int = 1,
        seed: int | None = None,
        *,
        num_states: int = 10,
        num_actions: int = 5,
        episode_length: int = 10,
    ) -> None:
        self.num_states = num_states
        self.num_actions = num_actions
        obs_space, act_space = _spaces(num_states, num_actions)
        super().__init__(
            tasks,
            envs_per_task,
            seed,
            num_params=num_states * num_actions * (1 + num_states),
            max_episode_steps=episode_length,
            single_observation_space=obs_space,
            single_action_space=act_space,
        )
        self._slots = np.arange(self.num_envs)
        self._states = np.zeros(self.num_envs, dtype=np.int64)

    def _task_arrays(self, task: Task) -> dict[str, np.ndarray]:
        rewards, transitions = mdp_tables(task, self.num_states, self.num_actions)
        return {"rewards": rewards, "cdf": _cumulative(transitions)}

    def _reset_state(self, mask: np.ndarray) -> None:
        self._states[mask] = 0

    def _episode_arrays(self) -> dict[str, np.ndarray]:
        return {"states": self._states}

    def _observe(self) -> np.ndarray:
        obs = np.zeros((self.num_envs, self.num_states), dtype=np.float32)
        obs[self._slots, self._states] = 1.0
        return obs

    def _transition(self, actions: Any) -> tuple[np.ndarray, np.ndarray]:
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,) or actions.dtype.kind not in "iu":
            raise ValueError(f"actions must be {self.num_envs} integer actions, got {actions!r}")
        if actions.min() < 0 or actions.max() >= self.num_actions:
            raise ValueError(f"actions must be in [0, {self.num_actions}), got {actions!r}")
        noise = self.np_random.standard_normal(self.num_envs)
        u = self.np_random.random(self.num_envs)
        rewards = self.params["rewards"][self._slots, self._states, actions] + noise
        cdf = self.params["cdf"][self._slots, self._states, actions]  # [N, S]
        self._states = (cdf <= u[:, None]).sum(axis=1)
        return rewards, np.zeros(self.num_envs, dtype=bool)


@dataclass(frozen=True)
class TabularMDPFamily(NativeFamily):
    """Random tabular MDP, rewards ~ N(N(1,1), 1), transitions ~ Dirichlet(1) (Duan et al. 2016)."""

    num_states: int = 10
    num_actions: int = 5
    episode_length: int = 10

    name: ClassVar[str] = "tabular-mdp"
    env_class: ClassVar[type[TaskEnv]] = TabularMDPEnv
    vector_env_class: ClassVar[type[BatchedTaskEnv]] = TabularMDPVectorEnv

    def __post_init__(self) -> None:
        check_int("TabularMDPFamily", "num_states", self.num_states, minimum=1)
        check_int("TabularMDPFamily", "num_actions", self.num_actions, minimum=1)
        check_int("TabularMDPFamily", "episode_length", self.episode_length, minimum=1)

    @property
    def max_episode_steps(self) -> int:
        return self.episode_length

    def draw_params(self, rng: np.random.Generator) -> tuple[float, ...]:
        s, a = self.num_states, self.num_actions
        rewards = rng.normal(1.0, 1.0, size=(s, a))
        transitions = rng.dirichlet(np.ones(s), size=(s, a))
        return tuple(np.concatenate([rewards.ravel(), transitions.ravel()]).tolist())

    def env_kwargs(self) -> dict[str, Any]:
        return {
            "num_states": self.num_states,
            "num_actions": self.num_actions,
            "episode_length": self.episode_length,
        }

    def tables(self, task: Task) -> tuple[np.ndarray, np.ndarray]:
        """(reward means [S, A], transition probabilities [S, A, S]) of `task`."""
        return mdp_tables(task, self.num_states, self.num_actions)
