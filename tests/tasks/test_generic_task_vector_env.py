"""GymTaskVectorEnv: where it departs from a bare SyncVectorEnv."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from metaray.tasks import Task
from metaray.tasks.generic import GymTaskVectorEnv
from metaray.tasks.point_nav import PointNavFamily


class NoSetTask:
    name = "plain"
    max_episode_steps = 10

    def sample(self, n, rng, split="train"):
        return [Task(self.name, split, i, ()) for i in range(n)]

    def make_env(self, task=None):
        return gym.make("CartPole-v1")


def test_env_without_set_task_is_refused():
    family = NoSetTask()
    with pytest.raises(TypeError, match="set_task"):
        GymTaskVectorEnv(family, family.sample(2, np.random.default_rng(0)))


def test_all_false_mask_and_mask_before_first_reset():
    family = PointNavFamily(horizon=4)
    env = GymTaskVectorEnv(family, family.sample(2, np.random.default_rng(0)), seed=0)
    with pytest.raises(RuntimeError, match="first reset"):
        env.reset(options={"reset_mask": np.zeros(2, dtype=bool)})
    obs, _ = env.reset()
    moved, *_ = env.step(np.full((2, 2), 0.05, dtype=np.float32))
    same, infos = env.reset(options={"reset_mask": np.zeros(2, dtype=bool)})
    np.testing.assert_array_equal(same, moved)
    assert infos == {}


def test_slot_envs_keep_their_own_metadata():
    family = PointNavFamily()
    env = GymTaskVectorEnv(family, family.sample(1, np.random.default_rng(0)))
    assert env.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    assert len(env.envs) == 1
    env.close()
    assert env.closed


def test_last_step_termination_is_not_also_truncated():
    class OneStepNav(PointNavFamily):
        def make_env(self, task=None):
            return gym.wrappers.TimeLimit(super().make_env(task), max_episode_steps=1)

    family = OneStepNav()
    env = GymTaskVectorEnv(family, [Task("point-nav", "test", 0, (0.1, 0.0))], envs_per_task=2)
    env.reset()
    _, _, terminated, truncated, _ = env.step(np.array([[0.1, 0.0], [0.0, 0.0]]))
    np.testing.assert_array_equal(terminated, [True, False])
    np.testing.assert_array_equal(truncated, [False, True])


def test_sync_vector_env_does_not_leak_autoreset_mode_into_env_classes():
    from metaray.tasks.native import TaskEnv
    from metaray.tasks.point_nav import PointNavEnv

    family = PointNavFamily()
    GymTaskVectorEnv(family, family.sample(1, np.random.default_rng(0))).close()
    assert "autoreset_mode" not in PointNavEnv.metadata
    assert "autoreset_mode" not in TaskEnv.metadata

    class ClassMetadataEnv(gym.Env):  # a user env with the usual class-level metadata
        metadata = {"render_modes": []}
        observation_space = gym.spaces.Box(0, 1, (1,), np.float32)
        action_space = gym.spaces.Discrete(2)

        def set_task(self, task):
            pass

    class Family(NoSetTask):
        def make_env(self, task=None):
            return ClassMetadataEnv()

    family = Family()
    GymTaskVectorEnv(family, family.sample(1, np.random.default_rng(0))).close()
    assert ClassMetadataEnv.metadata == {"render_modes": []}


def test_info_keys_keep_what_samplers_read_and_drop_the_rest():
    """With the samplers' info keys, the per-slot MuJoCo terms are not batched, but the episode
    ends (final_obs / final_info) and env failures still are, with the same values."""
    from metaray.tasks import SAMPLER_INFO_KEYS, make_family
    from metaray.tasks.faulty import FaultyFamily

    family = make_family("halfcheetah-vel", {"horizon": 2})
    tasks = family.sample(2, np.random.default_rng(0))
    full = GymTaskVectorEnv(family, tasks, seed=3)
    lean = GymTaskVectorEnv(family, tasks, seed=3, info_keys=SAMPLER_INFO_KEYS)
    full.reset(), lean.reset()
    actions = np.full((2, 6), 0.3, dtype=np.float32)
    for t in range(2):
        f_out, l_out = full.step(actions), lean.step(actions)
        for a, b in zip(f_out[:4], l_out[:4], strict=True):
            np.testing.assert_array_equal(a, b)
        if t == 0:
            assert "x_velocity" in f_out[4] and l_out[4] == {}
    f_infos, l_infos = f_out[4], l_out[4]
    assert "x_velocity" in f_infos["final_info"] and l_infos["final_info"] == {}
    np.testing.assert_array_equal(l_infos["final_obs"], f_infos["final_obs"])
    np.testing.assert_array_equal(l_infos["_final_obs"], [True, True])

    faulty = FaultyFamily(nan_rate=1.0)
    env = GymTaskVectorEnv(faulty, faulty.sample(2, np.random.default_rng(0)), seed=0, info_keys=SAMPLER_INFO_KEYS)
    env.reset()
    *_, infos = env.step(np.zeros((2, 2), np.float32))
    np.testing.assert_array_equal(infos["env_failure"], [True, True])
