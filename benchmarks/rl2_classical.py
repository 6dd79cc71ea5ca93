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
Results go to benchmarks/results/rl2_classical/<date>-<commit>/rl2_classical.json (one entry per config). The algorithms live
in the library (metaray/tasks/classical.py; one at a time: `metaray baseline CONFIG NAME`, or a
suite run with `baseline: NAME`); this runs them all on a config in one go.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from metaray.bench.provenance import script_output
from metaray.cluster.config import load_config
from metaray.tasks import make_family, make_vector_env
from metaray.tasks.classical import (
    BAYES_OPTIMAL_MAX_PULLS,
    bandit_greedy,
    bandit_random,
    bandit_thompson,
    bandit_ucb1,
    bayes_optimal_chooser,
    run_bandit,
    run_mdp,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


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
        if totals.ndim == 2 and config.task.family == "bandit":
            totals = totals.sum(1)  # a pull per "episode": the trial's total
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
        for agent in ("random", "greedy-planning", "psrl"):
            record({"psrl": "PSRL", "greedy-planning": "greedy"}.get(agent, agent),
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
    store = script_output(__file__, "rl2_classical.json")
    rows = json.loads(store.read_text()) if store.exists() else []
    for path in args.configs:
        row = evaluate_config(path, args.seed)
        rows = [r for r in rows if r["config"] != row["config"]] + [row]
        store.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
