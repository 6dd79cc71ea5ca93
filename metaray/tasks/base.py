"""The task contract: what a task is, what a task family provides, and the batched vector env.

`tasks` imports no other part of metaray, so a user's family depends only on this file,
numpy and gymnasium.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Task:
    """One task of a family: a small frozen, picklable value.

    `params` is a flat tuple of floats the family interprets (arm means, a goal, a target
    velocity, ...); `task_id` is the seed the parameters were drawn from, unique within a split.
    """

    family: str
    split: str
    task_id: int
    params: tuple[float, ...] = field(repr=False)

    def array(self) -> np.ndarray:
        return np.asarray(self.params, dtype=np.float64)


def split_rng(family: str, split: str, task_id: int) -> np.random.Generator:
    """The generator a task's parameters are drawn from.

    Train and test tasks come from disjoint seed streams (the split is part of the seed), so the
    two splits never share a task.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    family_key = int.from_bytes(hashlib.blake2b(family.encode(), digest_size=8).digest(), "little")
    return np.random.default_rng([family_key, SPLITS.index(split), int(task_id)])


def draw_task_ids(n: int, rng: np.random.Generator) -> list[int]:
    """n distinct task ids (seeds) drawn from `rng`."""
    ids: list[int] = []
    seen: set[int] = set()
    while len(ids) < n:
        for i in rng.integers(0, 2**31 - 1, size=n - len(ids)).tolist():
            if i not in seen:
                seen.add(i)
                ids.append(i)
    return ids


class SeededFamily:
    """Task sampling shared by the built-in families: a task's parameters are a pure function of
    (family, split, task_id), drawn by the subclass's `draw_params(rng)`."""

    name: str

    def draw_params(self, rng: np.random.Generator) -> tuple[float, ...]:
        raise NotImplementedError

    def env_kwargs(self) -> dict[str, Any]:
        return {}

    def task(self, split: str, task_id: int) -> Task:
        """The task with this id in this split (always the same parameters)."""
        params = self.draw_params(split_rng(self.name, split, task_id))
        return Task(self.name, split, int(task_id), tuple(float(p) for p in params))

    def sample(self, n: int, rng: np.random.Generator, split: str = "train") -> list[Task]:
        """n distinct tasks of `split`; train and test tasks come from disjoint seed streams."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"{type(self).__name__}.sample: n must be an integer >= 0, got {n!r}")
        return [self.task(split, task_id) for task_id in draw_task_ids(n, rng)]


class TaskVectorEnv(gym.vector.VectorEnv):
    """A vector env whose slots each hold their own task.

    Conventions shared by every metaray vector env:
    - `autoreset_mode` is SAME_STEP: when a slot's episode ends, `step` already returns the
      first observation of its next episode; the last observation is in `infos["final_obs"]`.
      On steps where some slot ended, `infos["final_obs"]` is an array batched like the
      observations (for Box observations; row i is meaningful where `infos["_final_obs"][i]`)
      and `infos["_final_obs"]` is that bool mask; on other steps neither key is present.
      An episode that terminates on its last allowed step is terminated, not truncated.
    - `set_task(slot, task)` changes a slot's task; it takes effect at that slot's next reset
      (an explicit masked reset or the automatic one), never in the middle of an episode.
      `tasks[slot]` is the task the slot was last given.
    - `reset(options={"reset_mask": mask})` (a bool array, one entry per slot) resets only the
      masked slots and returns the observations of all slots; an all-False mask changes nothing.
      The first reset resets every slot.
    """

    metadata: dict[str, Any] = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}
    tasks: list[Task]

    def set_task(self, slot: int, task: Task) -> None:
        raise NotImplementedError

    def set_tasks(self, tasks: list[Task]) -> None:
        if len(tasks) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} tasks, got {len(tasks)}")
        for slot, task in enumerate(tasks):
            self.set_task(slot, task)

    def get_rng_state(self) -> list[dict[str, Any]]:
        """The env's random state (JSON-able), for exact checkpoint/resume."""
        return [self.np_random.bit_generator.state]

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Everything the env's future depends on (per-slot tasks, pending tasks, in-episode
        state, step counters, random state), as a JSON-able dict and named arrays (copies), so
        that a checkpoint keeps episodes in flight instead of restarting them.

        Optional: an env that cannot save its state raises NotImplementedError (the default);
        its sampler then restarts its episodes at a checkpoint and after a resume."""
        raise NotImplementedError(f"{type(self).__name__} cannot save its state")

    def set_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Continue from `get_state()`'s state: stepping with the same actions then gives the same
        observations, rewards and dones as the env it was taken from (same number of slots)."""
        raise NotImplementedError(f"{type(self).__name__} cannot restore a state")

    def set_rng_state(self, states: list[dict[str, Any]]) -> None:
        """Continue from `get_rng_state()`'s state; later resets do not reseed."""
        self.np_random.bit_generator.state = states[0]


def task_to_json(task: Task) -> dict[str, Any]:
    """A task as JSON (env and sampler state in checkpoints, which never hold pickles)."""
    return {"family": task.family, "split": task.split, "task_id": int(task.task_id),
            "params": [float(p) for p in task.params]}


def task_from_json(data: dict[str, Any]) -> Task:
    """The task `task_to_json` wrote (floats round-trip exactly through JSON)."""
    return Task(str(data["family"]), str(data["split"]), int(data["task_id"]),
                tuple(float(p) for p in data["params"]))


def check_state_slots(env: TaskVectorEnv, meta: dict[str, Any]) -> None:
    """Refuse a state taken from an env with another number of slots."""
    if len(meta["tasks"]) != env.num_envs:
        raise ValueError(f"state of an env with {len(meta['tasks'])} slots given to one with {env.num_envs}")


# The per-slot info keys the samplers read (with final_obs / final_info / env_failure, which
# every vector env keeps): what they pass to `make_vector_env(info_keys=...)`.
SAMPLER_INFO_KEYS = ("success",)


def step_success(infos: dict[str, Any], num_envs: int) -> np.ndarray | None:
    """Which slots reported `info["success"]` on this step (None when no slot reports success).

    Families with a success notion (Meta-World) put it in each step's info; an episode counts as
    a success if any of its steps does. In SAME_STEP mode the last step's info of an ended
    episode is in `infos["final_info"]`, so both places are read.
    """
    out = None
    for source in (infos, infos.get("final_info") or {}):
        if "success" in source:
            flags = np.asarray(source["success"], dtype=np.float64) >= 1.0
            mask = np.asarray(source.get("_success", np.ones(num_envs, bool)), bool)
            out = (flags & mask) if out is None else out | (flags & mask)
    return out


@runtime_checkable
class TaskFamily(Protocol):
    """A distribution over tasks and the environments that run them.

    Optional extras a family may define: `make_vector_env(tasks, envs_per_task)` (the fast
    path; without it metaray wraps `make_env` in a SyncVectorEnv) and `expert(task)`.
    """

    name: str
    max_episode_steps: int

    def sample(self, n: int, rng: np.random.Generator, split: str = "train") -> list[Task]: ...

    def make_env(self, task: Task | None = None) -> gym.Env: ...
