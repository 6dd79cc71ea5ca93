"""The TaskVectorEnv contract, checked on every built-in family through both paths.

"native" is the family's batched numpy env, "generic" is GymTaskVectorEnv over its `make_env`;
samplers rely on the two behaving the same.
"""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.vector.utils import batch_space

from metaray.tasks import TaskVectorEnv, make_family
from metaray.tasks.generic import GymTaskVectorEnv

# Short episodes keep the tests fast.
FAMILY_KWARGS = {
    "bandit": {"num_arms": 3},
    "tabular-mdp": {"episode_length": 4},
    "point-nav": {"horizon": 5},
}
FAMILIES = sorted(FAMILY_KWARGS)


def build(name: str, path: str, num_tasks: int = 3, envs_per_task: int = 2, seed: int = 0):
    family = make_family(name, FAMILY_KWARGS[name])
    tasks = family.sample(num_tasks, np.random.default_rng(seed))
    if path == "native":
        env = family.make_vector_env(tasks, envs_per_task=envs_per_task, seed=seed)
    else:
        env = GymTaskVectorEnv(family, tasks, envs_per_task=envs_per_task, seed=seed)
    return family, tasks, env


def actions_for(env: TaskVectorEnv, rng: np.random.Generator) -> np.ndarray:
    space = env.single_action_space
    if isinstance(space, gym.spaces.Discrete):
        return rng.integers(0, space.n, size=env.num_envs)
    return rng.uniform(space.low, space.high, size=(env.num_envs, *space.shape)).astype(np.float32)


@pytest.fixture(params=["native", "generic"])
def path(request) -> str:
    return request.param


@pytest.mark.parametrize("name", FAMILIES)
def test_spaces_shapes_and_dtypes(name, path):
    family, tasks, env = build(name, path)
    assert isinstance(env, TaskVectorEnv)
    assert env.num_envs == 6
    assert env.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    assert env.single_observation_space.dtype == np.float32
    assert env.observation_space == batch_space(env.single_observation_space, 6)
    assert env.action_space == batch_space(env.single_action_space, 6)
    assert env.tasks == [tasks[0], tasks[0], tasks[1], tasks[1], tasks[2], tasks[2]]

    obs, infos = env.reset()
    assert obs.dtype == np.float32 and obs.shape == (6, *env.single_observation_space.shape)
    assert obs in env.observation_space
    obs, rewards, terminated, truncated, infos = env.step(
        actions_for(env, np.random.default_rng(1))
    )
    assert obs.dtype == np.float32 and obs.shape == (6, *env.single_observation_space.shape)
    assert rewards.shape == (6,) and rewards.dtype.kind == "f"
    assert terminated.shape == truncated.shape == (6,)
    assert terminated.dtype == truncated.dtype == np.bool_
    env.close()


@pytest.mark.parametrize("name", FAMILIES)
def test_same_step_autoreset_returns_final_obs(name, path):
    family, _, env = build(name, path)
    start, _ = env.reset()
    rng = np.random.default_rng(2)
    done = np.zeros(env.num_envs, dtype=bool)
    for _ in range(family.max_episode_steps):
        assert not done.any()
        obs, _, terminated, truncated, infos = env.step(actions_for(env, rng))
        done = terminated | truncated
        if not done.any():
            assert "final_obs" not in infos
    # point-nav and tabular episodes here are cut by their horizon, bandit ends on each pull
    assert done.all()
    assert not (terminated & truncated).any()
    np.testing.assert_array_equal(infos["_final_obs"], done)
    final = infos["final_obs"]
    assert isinstance(final, np.ndarray) and final.dtype == np.float32 and final.shape == obs.shape
    np.testing.assert_array_equal(obs, start)  # every slot already began its next episode
    env.close()


@pytest.mark.parametrize("name", ["tabular-mdp", "point-nav"])
def test_reset_mask_resets_only_masked_slots(name, path):
    family, _, env = build(name, path)
    start, _ = env.reset()
    rng = np.random.default_rng(3)
    for _ in range(2):
        obs, *_ = env.step(actions_for(env, rng))
    mask = np.array([True, False, False, True, False, False])
    options = {"reset_mask": mask}
    after, _ = env.reset(options=options)
    assert "reset_mask" in options  # the caller's dict is left alone
    np.testing.assert_array_equal(after[mask], start[mask])
    np.testing.assert_array_equal(after[~mask], obs[~mask])

    # unmasked slots reach the horizon 2 steps before the masked ones
    horizon = family.max_episode_steps
    for step in range(3, horizon + 3):
        _, _, terminated, truncated, _ = env.step(np.zeros_like(actions_for(env, rng)))
        assert not terminated.any()
        if step == horizon:
            np.testing.assert_array_equal(truncated, ~mask)
        elif step == horizon + 2:
            np.testing.assert_array_equal(truncated, mask)
        else:
            assert not truncated.any()

    unchanged, _ = env.reset(options={"reset_mask": np.zeros(6, dtype=bool)})
    assert unchanged.shape == start.shape
    env.close()


@pytest.mark.parametrize("name", FAMILIES)
def test_bad_reset_mask_is_rejected(name, path):
    _, _, env = build(name, path)
    env.reset()
    with pytest.raises(ValueError, match="reset_mask"):
        env.reset(options={"reset_mask": np.ones(5, dtype=bool)})
    with pytest.raises(ValueError, match="reset_mask"):
        env.reset(options={"reset_mask": np.ones(6, dtype=np.int64)})
    env.close()


@pytest.mark.parametrize("name", FAMILIES)
def test_seeded_envs_repeat_exactly(name, path):
    runs = []
    for _ in range(2):
        _, _, env = build(name, path, seed=7)
        rng = np.random.default_rng(11)
        obs, _ = env.reset()
        trace = [obs]
        for _ in range(12):
            obs, rewards, terminated, truncated, _ = env.step(actions_for(env, rng))
            trace += [obs, rewards, terminated, truncated]
        runs.append(trace)
        env.close()
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", FAMILIES)
def test_set_task_replaces_the_slot_task(name, path):
    family, tasks, env = build(name, path)
    new = family.sample(1, np.random.default_rng(99), split="test")[0]
    env.set_task(4, new)
    assert env.tasks[4] == new and env.tasks[5] == tasks[2]
    env.set_tasks([new] * 6)
    assert env.tasks == [new] * 6
    with pytest.raises(ValueError):
        env.set_tasks([new])
    env.close()


@pytest.mark.parametrize("name", FAMILIES)
def test_native_env_rejects_foreign_tasks(name):
    _, _, env = build(name, "native")
    other = make_family("point-nav" if name != "point-nav" else "bandit")
    with pytest.raises(ValueError, match="family"):
        env.set_task(0, other.sample(1, np.random.default_rng(0))[0])


@pytest.mark.parametrize("name", FAMILIES)
def test_reset_comes_first_and_resets_every_slot(name, path):
    _, _, env = build(name, path)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(actions_for(env, np.random.default_rng(0)))
    with pytest.raises(RuntimeError, match="first reset"):
        env.reset(options={"reset_mask": np.array([True] * 5 + [False])})
    env.reset(options={"reset_mask": np.ones(6, dtype=bool)})
    env.close()


@pytest.mark.filterwarnings("ignore:.*Box observation space m")  # point-nav is unbounded
@pytest.mark.parametrize("name", FAMILIES)
def test_single_env_passes_gymnasium_checker(name):
    family = make_family(name, FAMILY_KWARGS[name])
    env = family.make_env(family.sample(1, np.random.default_rng(0))[0])
    check_env(env, skip_render_check=True)
    assert env.observation_space.dtype == np.float32
    assert family.make_env().reset(seed=0)[0] in env.observation_space  # default task


@pytest.mark.parametrize("name", FAMILIES)
def test_sampling_is_reproducible_and_splits_are_disjoint(name):
    family = make_family(name)
    train = family.sample(50, np.random.default_rng(5))
    assert train == family.sample(50, np.random.default_rng(5))
    assert len({t.task_id for t in train}) == 50
    test = family.sample(50, np.random.default_rng(5), split="test")
    # same ids, different splits: the parameters still differ
    assert [t.task_id for t in test] == [t.task_id for t in train]
    assert not {t.params for t in train} & {t.params for t in test}
    assert all(t.split == "train" and t.family == family.name for t in train)
    assert all(isinstance(p, float) for t in train for p in t.params)
    with pytest.raises(ValueError, match="split"):
        family.sample(1, np.random.default_rng(0), split="valid")


@pytest.mark.parametrize("name", FAMILIES)
def test_families_and_tasks_pickle(name):
    family = make_family(name, FAMILY_KWARGS[name])
    clone = pickle.loads(pickle.dumps(family))
    assert clone == family
    task = family.sample(1, np.random.default_rng(0))[0]
    assert pickle.loads(pickle.dumps(task)) == task
