"""Classical algorithms for the bandit and tabular-MDP families: the baselines Duan et al. 2016
compare RL² with, run on the same held-out tasks and through the same batched envs
(`metaray baseline CONFIG NAME`, or a suite run with `baseline: NAME`).

Bandits (Bernoulli arms, means ~ U[0, 1]): random, greedy (posterior mean), UCB1, Thompson
sampling (Beta(1, 1) prior) and, for short horizons, the Bayes-optimal policy for the known
U[0, 1] prior and horizon (exact dynamic programming over the arms' Beta posteriors; Gittins'
index is its infinite-horizon discounted counterpart). Tabular MDPs (rewards N(N(1, 1), 1),
transitions Dirichlet(1), episodes of fixed length from state 0): random, posterior-mean greedy
planning and PSRL (one MDP drawn from the posterior per episode, solved by finite-horizon value
iteration). The Bayesian agents use the family's true prior.

Every baseline returns each slot's reward per episode of the trial, [slots, episodes] (a
bandit's episode is one pull), as RL²'s evaluation does.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np

BAYES_OPTIMAL_MAX_PULLS = 12  # the exact DP's state space grows quickly beyond this

Chooser = Callable[[np.ndarray, np.ndarray, int, np.random.Generator], np.ndarray]


# ---------------------------------------------------------------------------- bandits


def run_bandit(env: Any, num_arms: int, pulls: int, choose: Chooser, rng: np.random.Generator) -> np.ndarray:
    """Reward of every pull per slot [slots, pulls]; `choose(successes, failures, t, rng)` -> arms."""
    n = env.num_envs
    successes = np.zeros((n, num_arms))
    failures = np.zeros((n, num_arms))
    rewards = np.zeros((n, pulls))
    env.reset()
    slots = np.arange(n)
    for t in range(pulls):
        arms = choose(successes, failures, t, rng)
        _, reward, _, _, _ = env.step(arms.astype(np.int64))
        successes[slots, arms] += reward
        failures[slots, arms] += 1 - reward
        rewards[:, t] = reward
    return rewards


def argmax_random_ties(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.argmax(scores + 1e-9 * rng.random(scores.shape), axis=1)


def bandit_random(s: np.ndarray, f: np.ndarray, t: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(s.shape[1], size=s.shape[0])


def bandit_greedy(s: np.ndarray, f: np.ndarray, t: int, rng: np.random.Generator) -> np.ndarray:
    return argmax_random_ties((s + 1) / (s + f + 2), rng)


def bandit_ucb1(s: np.ndarray, f: np.ndarray, t: int, rng: np.random.Generator) -> np.ndarray:
    pulls = s + f
    untried = pulls == 0
    ucb = s / np.maximum(pulls, 1) + np.sqrt(2 * math.log(max(t, 1)) / np.maximum(pulls, 1))
    return argmax_random_ties(np.where(untried, np.inf, ucb), rng)


def bandit_thompson(s: np.ndarray, f: np.ndarray, t: int, rng: np.random.Generator) -> np.ndarray:
    return np.argmax(rng.beta(s + 1, f + 1), axis=1)


def bayes_optimal_chooser(num_arms: int, pulls: int) -> tuple[Chooser, Callable[..., float]]:
    """The policy that maximises expected total reward under arm means ~ U[0, 1] i.i.d., and its
    value function. A state is the multiset of per-arm (successes, failures); arms are
    exchangeable under the prior, so it is stored sorted. Exact for the horizon `pulls`."""

    @functools.cache
    def value(state: tuple[tuple[int, int], ...], left: int) -> float:
        return max(q for _, q in action_values(state, left)) if left else 0.0

    def action_values(state: tuple[tuple[int, int], ...], left: int) -> list[tuple[tuple[int, int], float]]:
        out, seen = [], set()
        for i, (s, f) in enumerate(state):
            if (s, f) in seen:
                continue
            seen.add((s, f))
            p = (s + 1) / (s + f + 2)
            win = tuple(sorted(state[:i] + ((s + 1, f),) + state[i + 1:]))
            lose = tuple(sorted(state[:i] + ((s, f + 1),) + state[i + 1:]))
            out.append(((s, f), p * (1 + value(win, left - 1)) + (1 - p) * value(lose, left - 1)))
        return out

    def choose(s: np.ndarray, f: np.ndarray, t: int, rng: np.random.Generator) -> np.ndarray:
        arms = np.empty(s.shape[0], np.int64)
        for slot in range(s.shape[0]):
            stats = [(int(a), int(b)) for a, b in zip(s[slot], f[slot], strict=True)]
            best, _ = max(action_values(tuple(sorted(stats)), pulls - t), key=lambda kv: kv[1])
            candidates = [arm for arm, st in enumerate(stats) if st == best]
            arms[slot] = candidates[rng.integers(len(candidates))]
        return arms

    return choose, value


# ---------------------------------------------------------------------------- tabular MDPs


def plan(rewards: np.ndarray, transitions: np.ndarray, horizon: int) -> np.ndarray:
    """Finite-horizon greedy actions [N, horizon, S] for MDPs [N, S, A] / [N, S, A, S]."""
    n, s, _ = rewards.shape
    v = np.zeros((n, s))
    policy = np.zeros((n, horizon, s), np.int64)
    for h in range(horizon - 1, -1, -1):
        q = rewards + np.einsum("nsap,np->nsa", transitions, v)
        policy[:, h] = q.argmax(axis=2)
        v = q.max(axis=2)
    return policy


def run_mdp(env: Any, num_states: int, num_actions: int, episode_length: int, episodes: int,
            agent: str, rng: np.random.Generator) -> np.ndarray:
    """Each episode's reward per slot [slots, episodes] over a trial of `episodes` episodes.

    Posterior for the prior the family draws from: reward mean ~ N(1, 1) with unit reward noise
    (conjugate Normal), transition rows ~ Dirichlet(1) (conjugate counts).
    """
    n = env.num_envs
    slots = np.arange(n)
    reward_sum = np.zeros((n, num_states, num_actions))
    visits = np.zeros((n, num_states, num_actions))
    counts = np.ones((n, num_states, num_actions, num_states))  # Dirichlet(1) prior
    total = np.zeros((n, episodes))
    obs, _ = env.reset()
    for episode in range(episodes):
        post_var = 1.0 / (1.0 + visits)
        post_mean = post_var * (1.0 + reward_sum)
        if agent == "psrl":
            r = post_mean + np.sqrt(post_var) * rng.standard_normal(post_mean.shape)
            g = rng.standard_gamma(counts)
            policy = plan(r, g / g.sum(-1, keepdims=True), episode_length)
        elif agent == "greedy-planning":
            policy = plan(post_mean, counts / counts.sum(-1, keepdims=True), episode_length)
        for h in range(episode_length):
            state = obs.argmax(axis=1)
            action = rng.integers(num_actions, size=n) if agent == "random" else policy[slots, h, state]
            obs, reward, terminated, truncated, _ = env.step(action.astype(np.int64))
            nxt = obs.argmax(axis=1)  # after the episode's last step this is the reset state
            reward_sum[slots, state, action] += reward
            visits[slots, state, action] += 1
            if h < episode_length - 1:
                counts[slots, state, action, nxt] += 1
            total[:, episode] += reward
        if not (terminated | truncated).all():
            raise RuntimeError("tabular-mdp episodes must all end after episode_length steps")
    return total


# ---------------------------------------------------------------------------- registry

_BANDIT = {"random": bandit_random, "greedy": bandit_greedy, "ucb1": bandit_ucb1, "thompson": bandit_thompson}
_MDP = ("random", "greedy-planning", "psrl")


def baselines_for(family_name: str, episodes: int = 0) -> list[str]:
    """Baseline names available for a family (and trial length: the exact Bayes-optimal bandit
    policy only up to BAYES_OPTIMAL_MAX_PULLS pulls)."""
    if family_name == "bandit":
        return [*_BANDIT, *(["bayes-optimal"] if 0 < episodes <= BAYES_OPTIMAL_MAX_PULLS else [])]
    if family_name == "tabular-mdp":
        return list(_MDP)
    return []


def run_baseline(name: str, family: Any, env: Any, episodes: int, rng: np.random.Generator) -> np.ndarray:
    """[slots, episodes] rewards of baseline `name` on a vector env of the family's tasks."""
    if family.name == "bandit":
        k = family.num_arms
        if name == "bayes-optimal":
            choose, _ = bayes_optimal_chooser(k, episodes)
            return run_bandit(env, k, episodes, choose, rng)
        return run_bandit(env, k, episodes, _BANDIT[name], rng)
    kw = family.env_kwargs()
    return run_mdp(env, kw["num_states"], kw["num_actions"], kw["episode_length"], episodes, name, rng)
