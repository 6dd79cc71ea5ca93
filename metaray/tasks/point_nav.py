"""2D point navigation to a hidden goal (Finn et al. 2017; pytorch-maml-rl's 2DNavigation).

The point starts at the origin, moves by the clipped action, is paid minus its distance to the
goal after each move, and the episode ends when it is within 0.01 of the goal on both axes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from metaray.tasks.base import Task
from metaray.tasks.native import (
    BatchedTaskEnv,
    NativeFamily,
    TaskEnv,
    check_float,
    check_int,
)

MAX_ACTION = 0.1
GOAL_TOLERANCE = 0.01
OBSERVATION_SPACE = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
ACTION_SPACE = gym.spaces.Box(-MAX_ACTION, MAX_ACTION, shape=(2,), dtype=np.float32)


def goal(task: Task) -> np.ndarray:
    """The goal position (x, y) of a point-nav task."""
    return task.array()


class PointNavEnv(TaskEnv):
    """One point moving towards one goal; the position is the observation."""

    family = "point-nav"

    def __init__(self, task: Task, horizon: int = 100) -> None:
        self.observation_space = OBSERVATION_SPACE
        self.action_space = ACTION_SPACE
        super().__init__(task, max_episode_steps=horizon)

    def num_params(self) -> int:
        return 2

    def _load(self, task: Task) -> None:
        self._goal = goal(task)

    def _reset_state(self) -> np.ndarray:
        self._position = np.zeros(2, dtype=np.float64)
        return self._position.astype(np.float32)

    def _transition(self, action: Any) -> tuple[np.ndarray, float, bool]:
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (2,):
            raise ValueError(f"action must have shape (2,), got {action.shape}")
        self._position = self._position + np.clip(action, -MAX_ACTION, MAX_ACTION)
        dx, dy = self._position - self._goal
        reward = -np.sqrt(dx * dx + dy * dy)
        terminated = abs(dx) < GOAL_TOLERANCE and abs(dy) < GOAL_TOLERANCE
        return self._position.astype(np.float32), reward, terminated


class PointNavVectorEnv(BatchedTaskEnv):
    """Many points at once; positions and goals are [N, 2] arrays."""

    family = "point-nav"

    def __init__(
        self,
        tasks: Sequence[Task],
        envs_per_task: int = 1,
        seed: int | None = None,
        *,
        horizon: int = 100,
    ) -> None:
        super().__init__(
            tasks,
            envs_per_task,
            seed,
            num_params=2,
            max_episode_steps=horizon,
            single_observation_space=OBSERVATION_SPACE,
            single_action_space=ACTION_SPACE,
        )
        self._positions = np.zeros((self.num_envs, 2), dtype=np.float64)
        # Scratch arrays written in place: at 64 slots a step costs a few microseconds, mostly
        # per-call numpy overhead, so fewer temporaries is what makes it fast.
        self._moves = np.empty_like(self._positions)
        self._offsets = np.empty_like(self._positions)

    def _task_arrays(self, task: Task) -> dict[str, np.ndarray]:
        return {"goal": goal(task)}

    def _reset_state(self, mask: np.ndarray) -> None:
        self._positions[mask] = 0.0

    def _episode_arrays(self) -> dict[str, np.ndarray]:
        return {"positions": self._positions}

    def _observe(self) -> np.ndarray:
        return self._positions.astype(np.float32)

    def _transition(self, actions: Any) -> tuple[np.ndarray, np.ndarray]:
        actions = np.asarray(actions, dtype=np.float64)
        if actions.shape != self._positions.shape:
            raise ValueError(
                f"actions must have shape {self._positions.shape}, got {actions.shape}"
            )
        moves = np.maximum(actions, -MAX_ACTION, out=self._moves)
        self._positions += np.minimum(moves, MAX_ACTION, out=moves)
        offsets = np.subtract(self._positions, self.params["goal"], out=self._offsets)
        dx, dy = offsets[:, 0], offsets[:, 1]
        rewards = np.sqrt(dx * dx + dy * dy)
        np.negative(rewards, out=rewards)
        terminated = np.maximum(np.abs(dx), np.abs(dy)) < GOAL_TOLERANCE
        return rewards, terminated


@dataclass(frozen=True)
class PointNavFamily(NativeFamily):
    """2D point navigation, goal ~ U[-0.5,0.5]^2, reward -distance, horizon 100 (Finn et al. 2017)."""

    horizon: int = 100
    goal_low: float = -0.5
    goal_high: float = 0.5
    goal_min_abs: float = 0.0  # > 0: only goals with max(|x|, |y|) >= this (a ring, e.g. out of distribution)

    name: ClassVar[str] = "point-nav"
    env_class: ClassVar[type[TaskEnv]] = PointNavEnv
    vector_env_class: ClassVar[type[BatchedTaskEnv]] = PointNavVectorEnv

    def __post_init__(self) -> None:
        check_int("PointNavFamily", "horizon", self.horizon)
        check_float("PointNavFamily", "goal_low", self.goal_low)
        check_float("PointNavFamily", "goal_high", self.goal_high)
        if not self.goal_low < self.goal_high:
            raise ValueError(
                f"PointNavFamily: goal_low must be < goal_high, got {self.goal_low} >= {self.goal_high}"
            )
        check_float("PointNavFamily", "goal_min_abs", self.goal_min_abs)
        if not 0 <= self.goal_min_abs < max(abs(self.goal_low), abs(self.goal_high)):
            raise ValueError(
                f"PointNavFamily: goal_min_abs must be in [0, max(|goal_low|, |goal_high|)), got {self.goal_min_abs}"
            )

    @property
    def max_episode_steps(self) -> int:
        return self.horizon

    def draw_params(self, rng: np.random.Generator) -> tuple[float, ...]:
        goal = rng.uniform(self.goal_low, self.goal_high, size=2)
        while np.abs(goal).max() < self.goal_min_abs:  # the ring: redraw inside it
            goal = rng.uniform(self.goal_low, self.goal_high, size=2)
        return tuple(goal.tolist())

    def env_kwargs(self) -> dict[str, Any]:
        return {"horizon": self.horizon}

    def goal(self, task: Task) -> np.ndarray:
        return goal(task)

    def expert(self, task: Task) -> Callable[[np.ndarray], np.ndarray]:
        """Head straight for the goal at full speed; works on one observation or a batch."""
        target = goal(task).astype(np.float32)

        def act(obs: np.ndarray) -> np.ndarray:
            return np.clip(target - np.asarray(obs, dtype=np.float32), -MAX_ACTION, MAX_ACTION)

        return act
