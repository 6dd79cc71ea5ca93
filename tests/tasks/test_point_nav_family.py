"""Point navigation: clipped moves, reward -distance, done within 0.01, horizon truncation."""

from __future__ import annotations

import numpy as np
import pytest

from metaray.tasks import Task
from metaray.tasks.point_nav import PointNavFamily, goal


def nav_task(x: float, y: float) -> Task:
    return Task("point-nav", "test", 0, (x, y))


def test_goals_are_uniform_in_the_configured_square():
    family = PointNavFamily(goal_low=-0.3, goal_high=0.2)
    goals = np.array([goal(t) for t in family.sample(500, np.random.default_rng(0))])
    assert goals.min() >= -0.3 and goals.max() <= 0.2
    np.testing.assert_allclose(goals.mean(0), -0.05, atol=0.02)


def test_reward_is_minus_distance_after_the_clipped_move():
    family = PointNavFamily()
    env = family.make_vector_env([nav_task(0.3, -0.4), nav_task(-0.2, 0.1)], seed=0)
    obs, _ = env.reset()
    np.testing.assert_array_equal(obs, np.zeros((2, 2), dtype=np.float32))
    obs, rewards, terminated, truncated, _ = env.step(np.array([[5.0, -5.0], [0.05, -0.02]]))
    np.testing.assert_allclose(obs, [[0.1, -0.1], [0.05, -0.02]], rtol=1e-6)
    expected = -np.linalg.norm(obs.astype(np.float64) - [[0.3, -0.4], [-0.2, 0.1]], axis=1)
    np.testing.assert_allclose(rewards, expected, rtol=1e-6)
    assert not terminated.any() and not truncated.any()


def test_termination_needs_both_coordinates_within_tolerance():
    family = PointNavFamily()
    tasks = [nav_task(0.2, 0.2), nav_task(0.2, 0.2115), nav_task(0.195, 0.205)]
    env = family.make_vector_env(tasks, seed=0)
    env.reset()
    env.step(np.full((3, 2), 0.1))
    obs, rewards, terminated, truncated, infos = env.step(np.full((3, 2), 0.1))
    np.testing.assert_array_equal(terminated, [True, False, True])
    assert not truncated.any()
    np.testing.assert_array_equal(infos["_final_obs"], [True, False, True])
    np.testing.assert_allclose(infos["final_obs"][[0, 2]], [[0.2, 0.2], [0.2, 0.2]], rtol=1e-6)
    np.testing.assert_allclose(infos["final_obs"][1], obs[1])
    np.testing.assert_array_equal(obs[[0, 2]], np.zeros((2, 2), dtype=np.float32))
    assert rewards[0] == pytest.approx(0.0, abs=1e-12)


def test_truncation_at_the_horizon():
    family = PointNavFamily()
    env = family.make_vector_env([nav_task(0.5, 0.5)], envs_per_task=3, seed=0)
    env.reset()
    for step in range(1, 101):
        obs, rewards, terminated, truncated, _ = env.step(np.zeros((3, 2)))
        assert not terminated.any()
        assert truncated.all() == (step == 100) and truncated.any() == (step == 100)
        np.testing.assert_allclose(rewards, -np.sqrt(0.5))


def test_batched_env_equals_single_envs_step_for_step():
    family = PointNavFamily(horizon=30)
    tasks = family.sample(3, np.random.default_rng(1)) + [nav_task(0.1, 0.0)]
    batched = family.make_vector_env(tasks, envs_per_task=2, seed=0)
    singles = [family.make_env(task) for task in batched.tasks]
    obs, _ = batched.reset()
    for slot, env in enumerate(singles):
        np.testing.assert_array_equal(env.reset(seed=slot)[0], obs[slot])
    rng = np.random.default_rng(2)
    ended = 0
    for _ in range(75):
        actions = rng.uniform(-0.2, 0.2, size=(8, 2)).astype(np.float32)
        actions[6:] = (0.1, 0.0)  # the last task's slots reach their goal on the first step
        obs, rewards, terminated, truncated, infos = batched.step(actions)
        for slot, env in enumerate(singles):
            o, r, term, trunc, _ = env.step(actions[slot])
            assert (r, term, trunc) == (rewards[slot], terminated[slot], truncated[slot])
            if term or trunc:
                ended += 1
                np.testing.assert_array_equal(infos["final_obs"][slot], o)
                o, _ = env.reset()
            np.testing.assert_array_equal(o, obs[slot])
    assert ended > 6 + 75  # truncations of random walks and many goal hits


def test_set_task_applies_at_the_slots_next_reset():
    family = PointNavFamily()
    env = family.make_vector_env([nav_task(0.5, 0.0), nav_task(0.5, 0.0)], seed=0)
    env.reset()
    env.set_task(0, nav_task(0.0, -0.3))
    _, rewards, *_ = env.step(np.zeros((2, 2)))
    np.testing.assert_allclose(rewards, [-0.5, -0.5])  # the running episode keeps its goal
    env.reset(options={"reset_mask": np.array([True, False])})
    _, rewards, *_ = env.step(np.zeros((2, 2)))
    np.testing.assert_allclose(rewards, [-0.3, -0.5])


def test_single_env_set_task_and_reset():
    family = PointNavFamily()
    env = family.make_env(nav_task(0.5, 0.0))
    env.reset(seed=0)
    env.set_task(nav_task(0.0, 0.4))
    assert env.step(np.zeros(2))[1] == pytest.approx(-0.5)
    env.reset()
    assert env.step(np.zeros(2))[1] == pytest.approx(-0.4)
    with pytest.raises(ValueError, match="point-nav"):
        env.set_task(Task("bandit", "train", 0, (0.1, 0.2)))


def test_expert_reaches_the_goal():
    family = PointNavFamily()
    for task in family.sample(10, np.random.default_rng(3)):
        expert = family.expert(task)
        env = family.make_env(task)
        obs, _ = env.reset(seed=0)
        steps, terminated, truncated = 0, False, False
        while not (terminated or truncated):
            obs, _, terminated, truncated, _ = env.step(expert(obs))
            steps += 1
        assert terminated and steps <= int(np.abs(goal(task)).max() / 0.1) + 2


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"horizon": 0}, "horizon"),
        ({"goal_low": 1.0}, "goal_low"),
        ({"goal_high": float("nan")}, "goal_high"),
    ],
)
def test_kwargs_are_validated(kwargs, field):
    with pytest.raises(ValueError, match=field):
        PointNavFamily(**kwargs)
