"""Bandit: rewards are Bernoulli draws with the pulled arm's mean, one pull per episode."""

from __future__ import annotations

import numpy as np
import pytest

from metaray.tasks import Task
from metaray.tasks.bandit import BanditFamily, arm_means


def test_arm_means_are_the_task_params_in_unit_interval():
    family = BanditFamily(num_arms=4)
    tasks = family.sample(20, np.random.default_rng(0))
    for task in tasks:
        means = family.arm_means(task)
        assert means.shape == (4,)
        assert ((means >= 0) & (means <= 1)).all()
        np.testing.assert_array_equal(means, arm_means(task))


def test_batched_empirical_means_match_arm_means():
    family = BanditFamily(num_arms=5)
    task = family.sample(1, np.random.default_rng(1))[0]
    env = family.make_vector_env([task], envs_per_task=2000, seed=0)
    obs, _ = env.reset()
    np.testing.assert_array_equal(obs, np.zeros((2000, 1), dtype=np.float32))
    for arm in range(5):
        pulls = []
        for _ in range(10):
            obs, rewards, terminated, truncated, infos = env.step(np.full(2000, arm))
            assert terminated.all() and not truncated.any()
            assert set(np.unique(rewards)) <= {0.0, 1.0}
            np.testing.assert_array_equal(infos["_final_obs"], np.ones(2000, dtype=bool))
            pulls.append(rewards)
        # 20000 pulls: standard error <= 0.0036
        assert np.mean(pulls) == pytest.approx(arm_means(task)[arm], abs=0.02)


def test_single_env_empirical_mean_and_episode_of_one_pull():
    family = BanditFamily(num_arms=3)
    task = Task("bandit", "train", 0, (0.2, 0.9, 0.5))
    env = family.make_env(task)
    env.reset(seed=0)
    total = 0.0
    for _ in range(4000):
        obs, reward, terminated, truncated, _ = env.step(1)
        assert terminated and not truncated
        np.testing.assert_array_equal(obs, np.zeros(1, dtype=np.float32))
        total += reward
        env.reset()
    assert total / 4000 == pytest.approx(0.9, abs=0.03)
    with pytest.raises(ValueError, match="arm"):
        env.step(3)


def test_set_task_takes_effect_after_reset():
    family = BanditFamily(num_arms=2)
    always_first = Task("bandit", "test", 1, (1.0, 0.0))
    never = Task("bandit", "test", 2, (0.0, 0.0))
    env = family.make_vector_env([never, never], seed=0)
    env.reset()
    env.set_task(1, always_first)
    env.reset(options={"reset_mask": np.array([False, True])})
    for _ in range(5):
        _, rewards, *_ = env.step(np.array([0, 0]))
        np.testing.assert_array_equal(rewards, [0.0, 1.0])


def test_batched_actions_are_checked():
    family = BanditFamily(num_arms=2)
    env = family.make_vector_env(family.sample(2, np.random.default_rng(0)), seed=0)
    env.reset()
    with pytest.raises(ValueError, match="arms"):
        env.step(np.array([0, 2]))
    with pytest.raises(ValueError, match="integer"):
        env.step(np.array([0.0, 1.0]))


def test_expert_pulls_the_best_arm():
    family = BanditFamily()
    task = Task("bandit", "train", 0, (0.1, 0.7, 0.3, 0.2, 0.6))
    assert family.expert(task)(np.zeros(1)) == 1


@pytest.mark.parametrize("bad", [1, 0, -3, 2.5, "5", True])
def test_num_arms_is_validated(bad):
    with pytest.raises(ValueError, match="num_arms"):
        BanditFamily(num_arms=bad)


def test_family_basics():
    family = BanditFamily(num_arms=7)
    assert family.name == "bandit" and family.max_episode_steps == 1
    assert family.make_env().action_space.n == 7
