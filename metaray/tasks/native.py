"""Building blocks for families whose environments are plain numpy arithmetic.

Such a family gets two environments from one description of its dynamics: a single
`gymnasium.Env` (`TaskEnv`, for users and the generic path) and a natively batched vector env
(`BatchedTaskEnv`, the fast path) whose `step` advances every slot with a few array operations.
Both enforce the same conventions: a task set with `set_task` takes effect at the next reset, an
episode is cut after `max_episode_steps` steps (truncated unless it terminated on that step).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector.utils import batch_space

from metaray.tasks.base import (
    SeededFamily,
    Task,
    TaskVectorEnv,
    check_state_slots,
    task_from_json,
    task_to_json,
)


def check_task(task: Task, family: str, num_params: int) -> None:
    """Reject a task of another family or of the wrong size before it corrupts a slot."""
    if not isinstance(task, Task):
        raise TypeError(f"expected a Task, got {type(task).__name__}")
    if task.family != family:
        raise ValueError(f"task of family {task.family!r} given to a {family!r} environment")
    if len(task.params) != num_params:
        raise ValueError(
            f"{family} task has {len(task.params)} parameters, this environment expects {num_params}"
        )


def check_int(owner: str, name: str, value: Any, minimum: int = 1) -> None:
    """Validate an integer constructor kwarg with a message naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{owner}: {name} must be an integer >= {minimum}, got {value!r}")


def check_float(owner: str, name: str, value: Any) -> None:
    """Validate a float constructor kwarg with a message naming it."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.integer, np.floating))
        or not np.isfinite(value)
    ):
        raise ValueError(f"{owner}: {name} must be a finite number, got {value!r}")


class TaskEnv(gym.Env):
    """A single environment running one task at a time.

    Subclasses define `family`, the spaces, `_load(task)` (read the task's parameters),
    `_reset_state()` -> first observation, and `_transition(action)` -> (obs, reward, terminated).
    """

    family: ClassVar[str]
    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, task: Task, max_episode_steps: int) -> None:
        # Our own dict: SyncVectorEnv writes its autoreset mode into its first env's metadata.
        self.metadata = {"render_modes": []}
        self.max_episode_steps = max_episode_steps
        self.set_task(task)
        self.task = task
        self._load(task)
        self._elapsed: int | None = None

    def num_params(self) -> int:
        raise NotImplementedError

    def set_task(self, task: Task) -> None:
        """Run `task` from the next reset on (the current episode keeps its task)."""
        check_task(task, self.family, self.num_params())
        self._next_task = task

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if self._next_task is not self.task:
            self.task = self._next_task
            self._load(self.task)
        self._elapsed = 0
        return self._reset_state(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._elapsed is None:
            raise RuntimeError("call reset() before step()")
        obs, reward, terminated = self._transition(action)
        self._elapsed += 1
        truncated = not terminated and self._elapsed >= self.max_episode_steps
        if terminated or truncated:
            self._elapsed = None
        return obs, float(reward), bool(terminated), bool(truncated), {}

    def _load(self, task: Task) -> None:
        raise NotImplementedError

    def _reset_state(self) -> np.ndarray:
        raise NotImplementedError

    def _transition(self, action: Any) -> tuple[np.ndarray, float, bool]:
        raise NotImplementedError


class BatchedTaskEnv(TaskVectorEnv):
    """A vector env whose slots advance together as numpy arrays.

    Slot `i` runs `tasks[i // envs_per_task]`. Each task is turned into named arrays
    (`_task_arrays`), stacked over slots into `self.params[name]` with a leading slot axis.
    `set_task` writes the slot's row of a pending copy, which a reset of that slot (explicit or
    automatic) copies into `self.params`.

    Subclasses define `family`, `num_params`, `_task_arrays(task)`, `_reset_state(mask)` (reset
    the episode state of the masked slots), `_observe()` (observations of all slots) and
    `_transition(actions)` -> (rewards, terminated) for all slots, without Python loops.
    Defining `_episode_arrays()` (the arrays holding the episode state) lets the env save and
    restore its whole state (`get_state` / `set_state`).
    """

    family: ClassVar[str]

    def __init__(
        self,
        tasks: Sequence[Task],
        envs_per_task: int,
        seed: int | None,
        *,
        num_params: int,
        max_episode_steps: int,
        single_observation_space: gym.Space,
        single_action_space: gym.Space,
    ) -> None:
        check_int(type(self).__name__, "envs_per_task", envs_per_task)
        if len(tasks) == 0:
            raise ValueError(f"{type(self).__name__} needs at least one task")
        self.num_params = num_params
        for task in tasks:
            check_task(task, self.family, num_params)
        self.tasks = [task for task in tasks for _ in range(envs_per_task)]
        self.num_envs = len(self.tasks)
        self.max_episode_steps = max_episode_steps
        self.metadata = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}
        self.single_observation_space = single_observation_space
        self.single_action_space = single_action_space
        self.observation_space = batch_space(single_observation_space, self.num_envs)
        self.action_space = batch_space(single_action_space, self.num_envs)
        self._np_random, self._np_random_seed = seeding.np_random(seed)

        per_task = [self._task_arrays(task) for task in tasks]
        self.params: dict[str, np.ndarray] = {
            name: np.repeat(np.stack([arrays[name] for arrays in per_task]), envs_per_task, axis=0)
            for name in per_task[0]
        }
        self._next_params = {name: array.copy() for name, array in self.params.items()}
        self._pending = np.zeros(self.num_envs, dtype=bool)
        self._elapsed = np.zeros(self.num_envs, dtype=np.int64)
        self._needs_reset = True

    def set_task(self, slot: int, task: Task) -> None:
        check_task(task, self.family, self.num_params)
        arrays = self._task_arrays(task)
        for name, array in self._next_params.items():
            array[slot] = arrays[name]
        self.tasks[slot] = task
        self._pending[slot] = True

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        mask = None if options is None else options.get("reset_mask")
        if mask is None:
            mask = np.ones(self.num_envs, dtype=bool)
        else:
            mask = np.asarray(mask)
            if mask.dtype != np.bool_ or mask.shape != (self.num_envs,):
                raise ValueError(
                    f"reset_mask must be a bool array of shape ({self.num_envs},), "
                    f"got dtype {mask.dtype} shape {mask.shape}"
                )
            if self._needs_reset and not mask.all():
                raise RuntimeError("the first reset() must reset every slot (no reset_mask)")
        self._reset_slots(mask)
        self._needs_reset = False
        return self._observe(), {}

    def step(
        self, actions: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Advance every slot; slots whose episode ended restart at once (SAME_STEP)."""
        if self._needs_reset:
            raise RuntimeError("call reset() before step()")
        rewards, terminated = self._transition(actions)
        self._elapsed += 1
        truncated = self._elapsed >= self.max_episode_steps
        done = terminated | truncated
        infos: dict[str, Any] = {}
        if done.any():
            truncated &= ~terminated  # an episode that reached its end is not also cut short
            # Like SyncVectorEnv's SAME_STEP, but `final_obs` is one dense array (rows of
            # slots that did not finish hold their current observation) instead of an object array.
            infos["final_obs"] = self._observe()
            infos["_final_obs"] = done
            self._reset_slots(done)
        return self._observe(), rewards, terminated, truncated, infos

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Tasks (given and running), in-episode state, step counters and random state."""
        episode = self._episode_arrays()  # NotImplementedError: the subclass keeps no account of its state
        meta = {"tasks": [task_to_json(task) for task in self.tasks], "rng": self.np_random.bit_generator.state,
                "needs_reset": self._needs_reset}
        arrays = {"elapsed": self._elapsed, "pending": self._pending,
                  **{f"params/{name}": array for name, array in self.params.items()},
                  **{f"next_params/{name}": array for name, array in self._next_params.items()},
                  **{f"episode/{name}": array for name, array in episode.items()}}
        return meta, {name: np.array(array, copy=True) for name, array in arrays.items()}

    def set_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        check_state_slots(self, meta)
        self.tasks = [task_from_json(task) for task in meta["tasks"]]
        self.np_random.bit_generator.state = meta["rng"]
        self._needs_reset = bool(meta["needs_reset"])
        targets = {"elapsed": self._elapsed, "pending": self._pending,
                   **{f"params/{name}": array for name, array in self.params.items()},
                   **{f"next_params/{name}": array for name, array in self._next_params.items()},
                   **{f"episode/{name}": array for name, array in self._episode_arrays().items()}}
        if set(targets) != set(arrays):
            raise ValueError(f"{type(self).__name__}.set_state: expected arrays {sorted(targets)}, got {sorted(arrays)}")
        for name, target in targets.items():  # in place: subclasses keep views and scratch arrays of them
            target[...] = arrays[name]

    def _episode_arrays(self) -> dict[str, np.ndarray]:
        """The arrays (not copies) that hold every slot's in-episode state; {} for a stateless
        env. Not defined: the env cannot save its state (a subclass may keep more than it says)."""
        raise NotImplementedError(f"{type(self).__name__} does not define _episode_arrays: it cannot save its state")

    def _reset_slots(self, mask: np.ndarray) -> None:
        if self._pending.any():
            load = mask & self._pending
            for name, array in self.params.items():
                array[load] = self._next_params[name][load]
            self._pending &= ~mask
        self._elapsed[mask] = 0
        self._reset_state(mask)

    def _task_arrays(self, task: Task) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _reset_state(self, mask: np.ndarray) -> None:
        raise NotImplementedError

    def _observe(self) -> np.ndarray:
        raise NotImplementedError

    def _transition(self, actions: Any) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class NativeFamily(SeededFamily):
    """Shared plumbing of the numpy families: task sampling and env construction.

    Subclasses set `name`, `env_class`, `vector_env_class` and define `max_episode_steps`,
    `draw_params(rng)` and `env_kwargs()` (the constructor kwargs both envs take).
    """

    name: ClassVar[str]
    env_class: ClassVar[type[TaskEnv]]
    vector_env_class: ClassVar[type[BatchedTaskEnv]]

    @property
    def max_episode_steps(self) -> int:
        raise NotImplementedError

    def make_env(self, task: Task | None = None) -> TaskEnv:
        """A single env; without a task it runs train task 0 until `set_task`."""
        return self.env_class(
            task if task is not None else self.task("train", 0), **self.env_kwargs()
        )

    def make_vector_env(
        self, tasks: Sequence[Task], envs_per_task: int = 1, seed: int | None = None
    ) -> BatchedTaskEnv:
        return self.vector_env_class(tasks, envs_per_task, seed, **self.env_kwargs())
