"""The slow path: a TaskVectorEnv over any family that only provides `make_env`.

Built on gymnasium's SyncVectorEnv in SAME_STEP autoreset mode. Each slot env is wrapped so that
a task given with `set_task` reaches the user's env only at that slot's next reset, whatever the
user's own `set_task` does; `final_obs` is turned into one dense array for Box observations so
both paths look alike to the samplers.
"""

from __future__ import annotations

from collections.abc import Sequence
from copy import deepcopy
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from metaray.tasks.base import Task, TaskFamily, TaskVectorEnv


class _TaskSlot(gym.Wrapper):
    """Holds a slot's next task and hands it to the wrapped env right before its reset."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        try:
            self._set_inner_task = env.get_wrapper_attr("set_task")
        except AttributeError:
            raise TypeError(
                f"{type(env.unwrapped).__name__} has no set_task(task) method; "
                "a task family's make_env must return an env with one"
            ) from None
        self._next_task: Task | None = None
        # SyncVectorEnv writes into its first env's metadata, often a class attribute: copy it.
        self.metadata = dict(env.metadata)

    def set_task(self, task: Task) -> None:
        self._next_task = task

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        if self._next_task is not None:
            self._set_inner_task(self._next_task)
            self._next_task = None
        return self.env.reset(**kwargs)


class GymTaskVectorEnv(TaskVectorEnv):
    """`family.make_env(task)` per slot, stepped one after another; same contract as the fast path."""

    def __init__(
        self,
        family: TaskFamily,
        tasks: Sequence[Task],
        envs_per_task: int = 1,
        seed: int | None = None,
    ) -> None:
        if (
            isinstance(envs_per_task, bool)
            or not isinstance(envs_per_task, int)
            or envs_per_task < 1
        ):
            raise ValueError(f"envs_per_task must be an integer >= 1, got {envs_per_task!r}")
        if len(tasks) == 0:
            raise ValueError("GymTaskVectorEnv needs at least one task")
        self.family = family
        self.tasks = [task for task in tasks for _ in range(envs_per_task)]
        self._vec = SyncVectorEnv(
            [self._slot_factory(family, task) for task in self.tasks],
            autoreset_mode=AutoresetMode.SAME_STEP,
        )
        self.num_envs = self._vec.num_envs
        self.metadata = {**self._vec.metadata, "autoreset_mode": AutoresetMode.SAME_STEP}
        self.single_observation_space = self._vec.single_observation_space
        self.single_action_space = self._vec.single_action_space
        self.observation_space = self._vec.observation_space
        self.action_space = self._vec.action_space
        self._dense_final_obs = isinstance(self.single_observation_space, gym.spaces.Box)
        self._first_seed = seed
        self._last_obs: Any = None

    @staticmethod
    def _slot_factory(family: TaskFamily, task: Task) -> Any:
        return lambda: _TaskSlot(family.make_env(task))

    @property
    def envs(self) -> list[gym.Env]:
        """The slot envs (each wrapped in the task-deferring wrapper)."""
        return self._vec.envs

    def set_task(self, slot: int, task: Task) -> None:
        self._vec.envs[slot].set_task(task)
        self.tasks[slot] = task

    def reset(
        self,
        *,
        seed: int | list[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[Any, dict[str, Any]]:
        if seed is None and self._first_seed is not None:
            seed = self._first_seed
        self._first_seed = None
        # SyncVectorEnv pops reset_mask out of the caller's dict and rejects an all-False mask.
        options = dict(options) if options else None
        if options is not None and "reset_mask" in options:
            mask = np.asarray(options["reset_mask"])
            if mask.dtype != np.bool_ or mask.shape != (self.num_envs,):
                raise ValueError(
                    f"reset_mask must be a bool array of shape ({self.num_envs},), "
                    f"got dtype {mask.dtype} shape {mask.shape}"
                )
            if self._last_obs is None and not mask.all():
                raise RuntimeError("the first reset() must reset every slot (no reset_mask)")
            if not mask.any():
                return deepcopy(self._last_obs), {}
            options["reset_mask"] = mask
        obs, infos = self._vec.reset(seed=seed, options=options)
        self._last_obs = obs
        return obs, infos

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self._last_obs is None:
            raise RuntimeError("call reset() before step()")
        obs, rewards, terminated, truncated, infos = self._vec.step(actions)
        truncated &= ~terminated  # TimeLimit sets both on a last-step termination; we don't
        if self._dense_final_obs and "final_obs" in infos:
            done = infos["_final_obs"]
            final = np.array(obs, copy=True)
            final[done] = np.stack(infos["final_obs"][done])
            infos["final_obs"] = final
        self._last_obs = obs
        return obs, rewards, terminated, truncated, infos

    def close_extras(self, **kwargs: Any) -> None:
        vec = getattr(self, "_vec", None)  # absent when __init__ failed
        if vec is not None:
            vec.close(**kwargs)
