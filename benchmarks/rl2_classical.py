"""Classical bandit and tabular-MDP algorithms on the held-out tasks RL² is evaluated on.

Duan et al. 2016 compare RL² with hand-designed algorithms (Gittins index, UCB1, Thompson
sampling, PSRL, ...). This runs such algorithms here, on exactly the test tasks `metaray eval`
draws for a config (same family, `eval.num_tasks`, `eval.seed`) and through the same batched
envs, so the RL² table compares against numbers measured on one task set, not against a paper.

    python benchmarks/rl2_classical.py configs/rl2-bandit-n10-k5.yaml configs/rl2-tabular-mdp-n10.yaml

Bandits (Bernoulli arms, means ~ U[0, 1]): random, greedy (posterior mean), UCB1, Thompson
sampling (Beta(1, 1) prior) and, where the horizon is small enough, the Bayes-optimal policy for
the known U[0, 1] prior and horizon (exact dynamic programming over the arms' Beta posteriors;
Gittins' index is its infinite-horizon discounted counterpart). Tabular MDPs (rewards
N(N(1, 1), 1), transitions Dirichlet(1), episodes of fixed length from state 0): random,
posterior-mean greedy planning, and PSRL (posterior sampling, one MDP drawn per episode and
solved by finite-horizon value iteration). Both Bayesian agents use the family's true prior.
Results go to benchmarks/results/rl2_classical.json (one entry per config).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time
from pathlib import Path

import numpy as np

from metaray.cluster.config import load_config
from metaray.tasks import make_family, make_vector_env

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BAYES_OPTIMAL_MAX_PULLS = 12  # the exact DP's state space grows quickly beyond this


# ---------------------------------------------------------------------------- bandits


def run_bandit(env, num_arms: int, pulls: int, choose, rng: np.random.Generator) -> np.ndarray:
    """Total reward per slot of `pulls` pulls; `choose(successes, failures, t, rng)` -> arms."""
    n = env.num_envs
    successes = np.zeros((n, num_arms))
    failures = np.zeros((n, num_arms))
    total = np.zeros(n)
    env.reset()
    slots = np.arange(n)
    for t in range(pulls):
        arms = choose(successes, failures, t, rng)
        _, reward, _, _, _ = env.step(arms.astype(np.int64))
        successes[slots, arms] += reward
        failures[slots, arms] += 1 - reward
        total += reward
    return total


def argmax_random_ties(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.argmax(scores + 1e-9 * rng.random(scores.shape), axis=1)


def bandit_random(s, f, t, rng):
    return rng.integers(s.shape[1], size=s.shape[0])


def bandit_greedy(s, f, t, rng):
    return argmax_random_ties((s + 1) / (s + f + 2), rng)


def bandit_ucb1(s, f, t, rng):
    pulls = s + f
    untried = pulls == 0
    ucb = s / np.maximum(pulls, 1) + np.sqrt(2 * math.log(max(t, 1)) / np.maximum(pulls, 1))
    return argmax_random_ties(np.where(untried, np.inf, ucb), rng)


def bandit_thompson(s, f, t, rng):
    return np.argmax(rng.beta(s + 1, f + 1), axis=1)


def bayes_optimal_chooser(num_arms: int, pulls: int):
    """The policy that maximises expected total reward under arm means ~ U[0, 1] i.i.d.

    A state is the multiset of per-arm (successes, failures); arms are exchangeable under the
    prior, so it is stored sorted. Exact for the horizon `pulls`.
    """

    @functools.cache
    def value(state: tuple[tuple[int, int], ...], left: int) -> float:
        return max(q for _, q in action_values(state, left)) if left else 0.0

    def action_values(state, left):
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

    def choose(s, f, t, rng):
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


def run_mdp(env, num_states: int, num_actions: int, episode_length: int, episodes: int,
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
    total = np.zeros((n, episodes))  # each episode's return
    obs, _ = env.reset()
    for episode in range(episodes):
        post_var = 1.0 / (1.0 + visits)
        post_mean = post_var * (1.0 + reward_sum)
        if agent == "psrl":
            r = post_mean + np.sqrt(post_var) * rng.standard_normal(post_mean.shape)
            g = rng.standard_gamma(counts)
            p = g / g.sum(-1, keepdims=True)
            policy = plan(r, p, episode_length)
        elif agent == "greedy":
            policy = plan(post_mean, counts / counts.sum(-1, keepdims=True), episode_length)
        for h in range(episode_length):
            state = obs.argmax(axis=1)
            if agent == "random":
                action = rng.integers(num_actions, size=n)
            else:
                action = policy[slots, h, state]
            obs, reward, terminated, truncated, _ = env.step(action.astype(np.int64))
            nxt = obs.argmax(axis=1)  # after the episode's last step this is the reset state
            reward_sum[slots, state, action] += reward
            visits[slots, state, action] += 1
            if h < episode_length - 1:
                counts[slots, state, action, nxt] += 1
            total[:, episode] += reward
        assert (terminated | truncated).all(), "episodes must all end after episode_length steps"
    return total


# ---------------------------------------------------------------------------- driver


def evaluate_config(path: Path, seed: int) -> dict:
    config = load_config(path)
    family = make_family(config.task.family, config.task.kwargs)
    episodes = config.algo_config().episodes_per_trial
    tasks = family.sample(config.eval.num_tasks, np.random.default_rng(config.eval.seed), "test")
    rng = np.random.default_rng(seed)
    results: dict[str, dict] = {}

    def record(name: str, fn) -> None:
        start = time.time()
        env = make_vector_env(family, tasks, seed=int(rng.integers(2**31)))
        totals = fn(env)
        per_episode = None
        if totals.ndim == 2:  # [tasks, episodes]: the within-trial curve, as `metaray eval` reports RL²'s
            per_episode, totals = totals.mean(0), totals.sum(1)
        results[name] = {"mean_return": round(float(totals.mean()), 3),
                         "stderr": round(float(totals.std(ddof=1) / math.sqrt(len(totals))), 3),
                         "seconds": round(time.time() - start, 1),
                         **({"episode_return_means": np.round(per_episode, 3).tolist()} if per_episode is not None else {})}
        print(f"  {name:<16} {results[name]['mean_return']:8.3f} ± {results[name]['stderr']:.3f}", flush=True)

    print(f"{path} ({len(tasks)} held-out tasks, trial of {episodes} episodes)", flush=True)
    if config.task.family == "bandit":
        k = family.num_arms
        for name, chooser in [("random", bandit_random), ("greedy", bandit_greedy),
                              ("UCB1", bandit_ucb1), ("Thompson", bandit_thompson)]:
            record(name, lambda env, c=chooser: run_bandit(env, k, episodes, c, rng))
        if episodes <= BAYES_OPTIMAL_MAX_PULLS:
            choose, value = bayes_optimal_chooser(k, episodes)
            record("Bayes-optimal", lambda env: run_bandit(env, k, episodes, choose, rng))
            # Its expectation under the prior, exactly: what the sample above estimates.
            results["Bayes-optimal"]["prior_expectation"] = round(value(((0, 0),) * k, episodes), 3)
    elif config.task.family == "tabular-mdp":
        kw = family.env_kwargs()
        for agent in ("random", "greedy", "psrl"):
            record({"psrl": "PSRL"}.get(agent, agent),
                   lambda env, a=agent: run_mdp(env, kw["num_states"], kw["num_actions"],
                                                kw["episode_length"], episodes, a, rng))
    else:
        raise SystemExit(f"{path}: no classical baselines for family {config.task.family!r}")
    return {"config": str(path), "family": config.task.family, "task_kwargs": config.task.kwargs,
            "episodes_per_trial": episodes, "test_tasks": len(tasks), "eval_seed": config.eval.seed,
            "baseline_seed": seed, "date": time.strftime("%Y-%m-%d"), "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", type=Path, help="RL² bandit / tabular-mdp configs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the baselines' own randomness")
    args = parser.parse_args()
    store = RESULTS / "rl2_classical.json"
    rows = json.loads(store.read_text()) if store.exists() else []
    for path in args.configs:
        row = evaluate_config(path, args.seed)
        rows = [r for r in rows if r["config"] != row["config"]] + [row]
        store.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
