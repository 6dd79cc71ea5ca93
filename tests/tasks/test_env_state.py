"""The optional env-state contract (`TaskVectorEnv.get_state` / `set_state`): a state restored
into a fresh env, stepped with the same actions, gives the same observations, rewards and dones
as the env it was taken from, mid-episode, with pending tasks and automatic resets in between."""

from __future__ import annotations

import json

import numpy as np
import pytest

from metaray.tasks import TaskVectorEnv, make_family, make_vector_env
from metaray.tasks.generic import GymTaskVectorEnv
from metaray.tasks.native import BatchedTaskEnv

FAMILY_KWARGS = {
    "bandit": {"num_arms": 3},
    "tabular-mdp": {"episode_length": 4},
    "point-nav": {"horizon": 5},
    "halfcheetah-vel": {"horizon": 6},
    "ant-dir": {"horizon": 6},  # Ant reads MuJoCo's derived torso position before each step
}


def actions(env: TaskVectorEnv, rng: np.random.Generator, n: int) -> list[np.ndarray]:
    space = env.single_action_space
    if hasattr(space, "n"):
        return [rng.integers(0, space.n, size=env.num_envs) for _ in range(n)]
    return [rng.uniform(space.low, space.high, size=(env.num_envs, *space.shape)).astype(space.dtype) for _ in range(n)]


def replay(env: TaskVectorEnv, steps: list[np.ndarray]) -> list[tuple[np.ndarray, ...]]:
    """Step through `steps`, with a masked reset of slot 1 halfway; every output, copied."""
    out = []
    for i, a in enumerate(steps):
        obs, reward, terminated, truncated, _ = env.step(a)
        out.append((obs.copy(), np.asarray(reward).copy(), terminated.copy(), truncated.copy()))
        if i == len(steps) // 2:
            mask = np.zeros(env.num_envs, bool)
            mask[1] = True
            out.append((env.reset(options={"reset_mask": mask})[0].copy(),))
    return out


@pytest.mark.parametrize("name", sorted(FAMILY_KWARGS))
def test_a_restored_env_steps_like_the_one_it_was_saved_from(name):
    family = make_family(name, FAMILY_KWARGS[name])
    env = make_vector_env(family, family.sample(3, np.random.default_rng(1)), envs_per_task=2, seed=4)
    rng = np.random.default_rng(0)
    env.reset()
    for a in actions(env, rng, 3):  # mid-episode
        env.step(a)
    env.set_task(0, family.sample(1, np.random.default_rng(9))[0])  # pending until slot 0's next reset
    meta, arrays = env.get_state()
    json.dumps(meta)  # checkpoints keep it as JSON
    assert all(isinstance(a, np.ndarray) for a in arrays.values())
    steps = actions(env, rng, 2 * family.max_episode_steps + 3)  # through automatic resets
    expected = replay(env, steps)

    fresh = make_vector_env(family, family.sample(3, np.random.default_rng(5)), envs_per_task=2, seed=99)
    fresh.reset()
    fresh.step(actions(fresh, rng, 1)[0])
    fresh.set_state(meta, arrays)
    assert fresh.tasks == env.tasks  # as given, slot 0's pending one included
    got = replay(fresh, steps)
    assert len(got) == len(expected)
    for e, g in zip(expected, got, strict=True):
        for x, y in zip(e, g, strict=True):
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name", ["point-nav", "halfcheetah-vel"])
def test_a_saved_state_is_a_copy(name):
    family = make_family(name, FAMILY_KWARGS[name])
    env = make_vector_env(family, family.sample(2, np.random.default_rng(1)), seed=4)
    env.reset()
    env.step(actions(env, np.random.default_rng(0), 1)[0])
    meta, arrays = env.get_state()
    before = {k: v.copy() for k, v in arrays.items()}
    env.step(actions(env, np.random.default_rng(1), 1)[0])
    assert all(np.array_equal(before[k], arrays[k]) for k in arrays)


def test_a_state_of_another_size_is_refused():
    family = make_family("point-nav", FAMILY_KWARGS["point-nav"])
    env = make_vector_env(family, family.sample(2, np.random.default_rng(1)), seed=4)
    env.reset()
    other = make_vector_env(family, family.sample(3, np.random.default_rng(1)), seed=4)
    with pytest.raises(ValueError, match="slots"):
        other.set_state(*env.get_state())


def test_envs_that_cannot_save_their_state_say_so():
    native = make_family("point-nav", FAMILY_KWARGS["point-nav"])
    tasks = native.sample(2, np.random.default_rng(1))
    # make_env envs without get_env_state (a user's, or the faulty test family)
    for family in (native, make_family("faulty", {})):
        env = GymTaskVectorEnv(family, family.sample(2, np.random.default_rng(1)), seed=0)
        env.reset()
        with pytest.raises(NotImplementedError):
            env.get_state()

    class Forgetful(type(native.make_vector_env(tasks))):
        """A user's batched env that does not say where its episode state lives."""

        _episode_arrays = BatchedTaskEnv._episode_arrays

    with pytest.raises(NotImplementedError):
        Forgetful(tasks, 1, 0, **native.env_kwargs()).get_state()
