"""Tabular MDP: start in state 0, one-hot obs, Dirichlet transitions, N(mean, 1) rewards."""

from __future__ import annotations

import numpy as np
import pytest

from metaray.tasks.tabular_mdp import TabularMDPFamily


def test_task_tables_are_valid_distributions():
    family = TabularMDPFamily()
    for task in family.sample(10, np.random.default_rng(0)):
        rewards, transitions = family.tables(task)
        assert rewards.shape == (10, 5) and transitions.shape == (10, 5, 10)
        assert len(task.params) == 10 * 5 + 10 * 5 * 10
        np.testing.assert_allclose(transitions.sum(-1), 1.0)
        assert (transitions >= 0).all()
    # reward means ~ N(1, 1) over many tasks
    means = np.concatenate(
        [family.tables(t)[0].ravel() for t in family.sample(200, np.random.default_rng(1))]
    )
    assert means.mean() == pytest.approx(1.0, abs=0.05)
    assert means.std() == pytest.approx(1.0, abs=0.05)


def test_transitions_and_rewards_follow_the_task_empirically():
    family = TabularMDPFamily()
    task = family.sample(1, np.random.default_rng(2))[0]
    rewards_table, transitions = family.tables(task)
    n = 20000
    env = family.make_vector_env([task], envs_per_task=n, seed=0)
    obs, _ = env.reset()
    np.testing.assert_array_equal(obs.argmax(1), 0)
    np.testing.assert_array_equal(obs.sum(1), 1.0)

    obs, rewards, *_ = env.step(np.full(n, 3))
    states = obs.argmax(1)
    frequencies = np.bincount(states, minlength=10) / n
    np.testing.assert_allclose(frequencies, transitions[0, 3], atol=0.015)
    assert rewards.mean() == pytest.approx(rewards_table[0, 3], abs=0.04)
    assert rewards.std() == pytest.approx(1.0, abs=0.04)

    # second step: from each state the slots reached, action 1
    obs, rewards, *_ = env.step(np.ones(n, dtype=np.int64))
    nxt = obs.argmax(1)
    for s in np.unique(states):
        here = states == s
        if here.sum() < 2000:
            continue
        frequencies = np.bincount(nxt[here], minlength=10) / here.sum()
        np.testing.assert_allclose(frequencies, transitions[s, 1], atol=0.035)
        assert rewards[here].mean() == pytest.approx(rewards_table[s, 1], abs=0.08)


def test_episodes_truncate_after_episode_length_and_restart_in_state_zero():
    family = TabularMDPFamily()
    env = family.make_vector_env(family.sample(4, np.random.default_rng(3)), seed=1)
    env.reset()
    rng = np.random.default_rng(0)
    for step in range(1, 31):
        obs, _, terminated, truncated, infos = env.step(rng.integers(0, 5, size=4))
        assert not terminated.any()
        assert truncated.all() == (step % 10 == 0) and truncated.any() == (step % 10 == 0)
        if step % 10 == 0:
            np.testing.assert_array_equal(obs.argmax(1), 0)
            assert infos["final_obs"].sum(1).tolist() == [1.0] * 4


def test_single_env_matches_a_one_slot_batched_env_with_the_same_seed():
    family = TabularMDPFamily(episode_length=7)
    task = family.sample(1, np.random.default_rng(4))[0]
    single = family.make_env(task)
    batched = family.make_vector_env([task], seed=123)
    obs, _ = single.reset(seed=123)
    bobs, _ = batched.reset()
    rng = np.random.default_rng(5)
    for _ in range(20):
        np.testing.assert_array_equal(bobs[0], obs)
        action = int(rng.integers(0, 5))
        obs, reward, terminated, truncated, _ = single.step(action)
        bobs, brewards, bterm, btrunc, _ = batched.step(np.array([action]))
        assert brewards[0] == reward and bterm[0] == terminated and btrunc[0] == truncated
        if terminated or truncated:
            obs, _ = single.reset()


def test_set_task_changes_the_dynamics_at_reset():
    family = TabularMDPFamily(num_states=3, num_actions=2, episode_length=5)
    rewards = [5.0] * 6
    go_to_2 = [0.0, 0.0, 1.0] * 6
    task = family.sample(1, np.random.default_rng(0))[0]
    fixed = type(task)("tabular-mdp", "test", 9, tuple(rewards + go_to_2))
    env = family.make_vector_env([task, task], seed=0)
    env.reset()
    env.set_task(0, fixed)
    env.reset(options={"reset_mask": np.array([True, False])})
    obs, r, *_ = env.step(np.array([1, 1]))
    assert obs[0].argmax() == 2
    assert env.tasks[0] == fixed and env.tasks[1] == task
    assert r[0] == pytest.approx(5.0, abs=6)  # N(5, 1)


@pytest.mark.parametrize(
    "kwargs", [{"num_states": 0}, {"num_actions": 1.5}, {"episode_length": -1}]
)
def test_kwargs_are_validated(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        TabularMDPFamily(**kwargs)


def test_spaces_follow_kwargs():
    env = TabularMDPFamily(num_states=4, num_actions=3).make_env()
    assert env.observation_space.shape == (4,) and env.action_space.n == 3
