"""The normalised score's two ends, measured on the same tasks as the score (metaray.tasks.reference)."""

from __future__ import annotations

import numpy as np
import pytest

from metaray.cluster.scheduler import expert_return  # one episode of expert(task) on make_env(task)
from metaray.tasks import make_family
from metaray.tasks.reference import (
    expert_returns,
    normalised_score,
    random_policy_returns,
    reference_returns,
)


def test_each_task_gets_its_own_experts_return_on_point_nav():
    family = make_family("point-nav", {})
    tasks = family.sample(4, np.random.default_rng(3), "test")
    got = expert_returns(family, tasks, episodes=3, seed=11)
    # slot i runs tasks[i // episodes]: a mix-up would give a task another goal's return
    want = {t.task_id: expert_return(family, t, seed=0) for t in tasks}
    assert got == pytest.approx(want, abs=1e-5)
    assert len({round(v, 3) for v in got.values()}) == len(tasks)


def test_halfcheetah_vel_expert_through_its_batched_policy_matches_single_envs():
    family = make_family("halfcheetah-vel", {})
    tasks = family.sample(20, np.random.default_rng(0), "test")[:2]
    assert abs(tasks[0].params[0] - tasks[1].params[0]) > 0.5  # the other task's target would cost ~100
    got = expert_returns(family, tasks, episodes=1, seed=5)
    # slot i of a vector env seeded s draws as a single env reset with seed s + i; expert_returns
    # seeds seed + 2. Not to the bit: the policy's matrix products round differently for 2 rows than
    # for 1, and 200 steps of contact dynamics carry that (0.05 here).
    want = {t.task_id: expert_return(family, t, seed=5 + 2 + i) for i, t in enumerate(tasks)}
    assert got == pytest.approx(want, abs=1.0)
    assert all(v > -80 for v in got.values())  # the shipped expert tracks its target


def test_random_actions_are_seeded_and_score_below_the_expert():
    family = make_family("point-nav", {})
    tasks = family.sample(5, np.random.default_rng(4), "test")
    first = random_policy_returns(family, tasks, episodes=4, seed=2)
    assert random_policy_returns(family, tasks, episodes=4, seed=2) == first
    assert random_policy_returns(family, tasks, episodes=4, seed=3) != first
    ends = reference_returns(family, tasks, episodes=4, seed=2)
    assert all(e["expert_return"] > e["random_return"] for e in ends.values())
    assert {k: e["random_return"] for k, e in ends.items()} == first


def test_discrete_actions_and_the_score():
    family = make_family("bandit", {"num_arms": 5})  # one pull an episode
    tasks = family.sample(3, np.random.default_rng(0), "test")
    ends = reference_returns(family, tasks, episodes=400, seed=0)
    for task in tasks:  # the best arm's mean and the arms' mean, to a few standard errors (0.025)
        means = np.asarray(task.params)
        assert ends[task.task_id]["expert_return"] == pytest.approx(means.max(), abs=0.1)
        assert ends[task.task_id]["random_return"] == pytest.approx(means.mean(), abs=0.1)
    assert normalised_score(3.0, expert_return=5.0, random_return=1.0) == 0.5
    assert np.isnan(normalised_score(3.0, expert_return=1.0, random_return=1.0))


def test_a_family_without_an_expert_is_refused_in_one_line():
    family = make_family("ant-dir", {})
    with pytest.raises(ValueError, match="no expert"):
        reference_returns(family, family.sample(1, np.random.default_rng(0)), episodes=1, seed=0)
