"""The classical baselines the RL² table is compared against compute what they claim, and
`metaray baseline` runs them on a config's held-out tasks."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from metaray.tasks import classical, make_family, make_vector_env

ROOT = Path(__file__).resolve().parents[2]


def test_bayes_optimal_bandit_values_match_hand_computation():
    # One pull of a U[0,1] arm: 1/2. Two arms, two pulls: pull one (1/2); after a win its
    # posterior mean is 2/3 (stay), after a loss 1/3 < 1/2 (switch): 1/2 + 1/2*2/3 + 1/2*1/2.
    _, value = classical.bayes_optimal_chooser(2, 2)
    assert value(((0, 0), (0, 0)), 1) == pytest.approx(0.5)
    assert value(((0, 0), (0, 0)), 2) == pytest.approx(0.5 + 1 / 3 + 1 / 4)
    # Never below the best fixed rule it contains (greedy on the posterior mean), and at most
    # the clairvoyant E[max of k uniforms] = k/(k+1) per pull.
    _, value5 = classical.bayes_optimal_chooser(3, 5)
    assert 5 * 0.5 < value5(((0, 0),) * 3, 5) < 5 * 3 / 4


def test_bayes_optimal_chooser_beats_random_on_real_bandits():
    family = make_family("bandit", {"num_arms": 3})
    tasks = family.sample(300, np.random.default_rng(0), "test")
    rng = np.random.default_rng(1)
    choose, value = classical.bayes_optimal_chooser(3, 6)
    best = classical.run_bandit(make_vector_env(family, tasks, seed=2), 3, 6, choose, rng)
    rand = classical.run_bandit(make_vector_env(family, tasks, seed=2), 3, 6, classical.bandit_random, rng)
    assert best.shape == (300, 6)  # the reward of every pull
    best, rand = best.sum(1), rand.sum(1)
    assert best.mean() > rand.mean() + 0.5
    # the simulated mean estimates the DP's exact expectation (standard error ~0.07 here)
    assert abs(best.mean() - value(((0, 0),) * 3, 6)) < 0.25


def test_finite_horizon_planner_matches_brute_force():
    rng = np.random.default_rng(0)
    s, a, horizon = 3, 2, 3
    rewards = rng.normal(size=(1, s, a))
    transitions = rng.dirichlet(np.ones(s), size=(1, s, a))
    policy = classical.plan(rewards, transitions, horizon)

    def value(state, h, act):  # expected return of following act(state, h) from step h
        if h == horizon:
            return 0.0
        x = act(state, h)
        return rewards[0, state, x] + sum(transitions[0, state, x, n] * value(n, h + 1, act) for n in range(s))

    planned = value(0, 0, lambda st, h: policy[0, h, st])
    # every deterministic non-stationary policy: a table of actions per (step, state)
    best = max(value(0, 0, lambda st, h, t=table: t[h * s + st])
               for table in itertools.product(range(a), repeat=horizon * s))
    assert planned == pytest.approx(best)


def test_psrl_beats_random_on_real_tabular_mdps():
    family = make_family("tabular-mdp", {"num_states": 4, "num_actions": 3, "episode_length": 5})
    tasks = family.sample(200, np.random.default_rng(0), "test")
    rng = np.random.default_rng(1)
    per_episode = {agent: classical.run_mdp(make_vector_env(family, tasks, seed=3), 4, 3, 5, 8, agent, rng)
                   for agent in ("random", "psrl")}
    assert all(r.shape == (200, 8) for r in per_episode.values())  # each episode's return per task
    totals = {agent: r.sum(1).mean() for agent, r in per_episode.items()}
    assert totals["psrl"] > totals["random"] + 5
    # PSRL learns within the trial: its last episodes earn more than its first; random's do not
    assert per_episode["psrl"][:, -2:].mean() > per_episode["psrl"][:, :2].mean() + 0.5


def test_metaray_baseline_runs_on_the_configs_held_out_tasks_and_rejects_what_does_not_apply(tmp_path):
    out = tmp_path / "greedy.json"
    cmd = [sys.executable, "-m", "metaray.cli", "baseline", str(ROOT / "configs" / "rl2-bandit-n10-k5.yaml")]
    done = subprocess.run([*cmd, "greedy", "--num-tasks", "300", "--output", str(out)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    greedy = json.loads(out.read_text())
    assert greedy["num_tasks"] == 300 and len(greedy["tasks"]) == 300 and len(greedy["episode_return_means"]) == 10
    assert greedy["mean_return"] == pytest.approx(np.mean([t["trial_return"] for t in greedy["tasks"]]))
    rand = subprocess.run([*cmd, "random", "--num-tasks", "300", "--json"], capture_output=True, text=True, timeout=120)
    assert rand.returncode == 0 and json.loads(rand.stdout)["mean_return"] < greedy["mean_return"] - 0.5
    # the same tasks as `metaray eval` draws: the config's eval seed picks them
    family = make_family("bandit", {"num_arms": 5})
    ids = [t.task_id for t in family.sample(300, np.random.default_rng(12345), "test")]
    assert [t["task_id"] for t in greedy["tasks"]] == ids

    wrong = subprocess.run([*cmd, "psrl"], capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2 and "available: random, greedy, ucb1, thompson, bayes-optimal" in wrong.stderr
    nav = subprocess.run([sys.executable, "-m", "metaray.cli", "baseline", str(ROOT / "configs" / "maml-trpo-point-nav.yaml"),
                          "greedy"], capture_output=True, text=True, timeout=120)
    assert nav.returncode == 2 and nav.stderr.count("\n") == 1 and "algo maml has no baselines on family point-nav" in nav.stderr
