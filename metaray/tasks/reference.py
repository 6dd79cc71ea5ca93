"""The two ends of a normalised score on given tasks: the family's expert and uniformly random
actions. normalised = (R − R_random) / (R_expert − R_random), so a score is comparable across
tasks and with published ones only when both ends are measured on the same tasks as R."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from metaray.tasks.base import SAMPLER_INFO_KEYS, Task, TaskFamily, TaskVectorEnv
from metaray.tasks.registry import make_vector_env


def _episode_returns(family: TaskFamily, tasks: Sequence[Task], episodes: int, seed: int,
                     make_act: Callable[[TaskVectorEnv], Callable[[np.ndarray], np.ndarray]]) -> dict[int, float]:
    """Mean true return per task of `episodes` episodes each, slot i on tasks[i // episodes],
    acting by `make_act(env)`."""
    env = make_vector_env(family, tasks, episodes, seed=seed, info_keys=SAMPLER_INFO_KEYS)
    act = make_act(env)
    totals, alive = np.zeros(env.num_envs), np.ones(env.num_envs, bool)
    obs, _ = env.reset()
    try:
        for _ in range(family.max_episode_steps):
            obs, reward, terminated, truncated, _ = env.step(act(obs))
            totals += np.asarray(reward, np.float64) * alive
            alive &= ~(np.asarray(terminated) | np.asarray(truncated))
            if not alive.any():
                break
    finally:
        env.close()
    per_task = totals.reshape(len(tasks), episodes).mean(1)
    return {t.task_id: float(r) for t, r in zip(tasks, per_task, strict=True)}


def random_policy_returns(family: TaskFamily, tasks: Sequence[Task], episodes: int, seed: int) -> dict[int, float]:
    """Mean true return of uniformly random actions per task (the normalised score's zero)."""
    rng = np.random.default_rng(seed + 1)

    def make_act(env: TaskVectorEnv) -> Callable[[np.ndarray], np.ndarray]:
        space = env.single_action_space
        if hasattr(space, "n"):  # Discrete
            return lambda obs: rng.integers(0, space.n, env.num_envs)
        return lambda obs: rng.uniform(space.low, space.high, (env.num_envs, *space.shape)).astype(np.float32)

    return _episode_returns(family, tasks, episodes, seed + 1, make_act)


def has_expert(family: TaskFamily) -> bool:
    return callable(getattr(family, "expert", None))


def expert_returns(family: TaskFamily, tasks: Sequence[Task], episodes: int, seed: int) -> dict[int, float]:
    """Mean true return of the family's expert (`expert(task)`, or `batched_expert(tasks)` where
    the family has one) per task: the normalised score's one."""
    batched = getattr(family, "batched_expert", None)

    def make_act(env: TaskVectorEnv) -> Callable[[np.ndarray], np.ndarray]:
        if callable(batched):
            return batched([t for t in tasks for _ in range(episodes)])
        experts = [family.expert(t) for t in tasks]
        return lambda obs: np.stack([np.asarray(experts[i // episodes](o)) for i, o in enumerate(obs)])

    return _episode_returns(family, tasks, episodes, seed + 2, make_act)


def reference_returns(family: TaskFamily, tasks: Sequence[Task], episodes: int, seed: int) -> dict[int, dict[str, float]]:
    """Per task id: `expert_return` and `random_return` (the mean of `episodes` episodes each)."""
    if not has_expert(family):
        raise ValueError(f"a normalised score needs the family's expert: task family {family.name!r} has no expert(task)")
    expert = expert_returns(family, tasks, episodes, seed)
    random = random_policy_returns(family, tasks, episodes, seed)
    return {t.task_id: {"expert_return": expert[t.task_id], "random_return": random[t.task_id]} for t in tasks}


def normalised_score(value: float, expert_return: float, random_return: float) -> float:
    """(R − R_random) / (R_expert − R_random); NaN where both ends are equal."""
    gap = expert_return - random_return
    return (value - random_return) / gap if abs(gap) > 1e-8 else float("nan")
