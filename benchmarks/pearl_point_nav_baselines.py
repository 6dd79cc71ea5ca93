"""PEARL point-nav: reference policies on the held-out goals `metaray eval` draws for
configs/pearl-point-nav.yaml (500 goals, eval.seed): knowing the goal, standing still, random
actions, and PEARL's untrained networks through its evaluation protocol.

    python benchmarks/pearl_point_nav_baselines.py
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from metaray.cluster.config import load_config
from metaray.learner import pearl
from metaray.tasks import make_family, make_vector_env


def episode_return(family, tasks, act: Callable[[np.ndarray], np.ndarray]) -> float:
    """Mean return of one episode per task with actions act(observations)."""
    env = make_vector_env(family, tasks, seed=0)
    obs, _ = env.reset()
    total, alive = np.zeros(len(tasks)), np.ones(len(tasks), bool)
    for _ in range(family.max_episode_steps):
        obs, reward, terminated, truncated, _ = env.step(act(obs).astype(np.float32))
        total += reward * alive
        alive &= ~(terminated | truncated)
    return float(total.mean())


def main() -> None:
    config = load_config("configs/pearl-point-nav.yaml")
    algo = config.algo_config()
    family = make_family(config.task.family, config.task.kwargs)
    tasks = family.sample(config.eval.num_tasks * 5, np.random.default_rng(config.eval.seed), "test")
    goals = np.array([t.params for t in tasks])
    rng = np.random.default_rng(0)
    print(f"{len(tasks)} held-out goals, one episode each")
    print("knowing the goal  ", round(episode_return(family, tasks, lambda obs: np.clip(goals - obs, -0.1, 0.1)), 2))
    print("standing still    ", round(episode_return(family, tasks, lambda obs: np.zeros_like(obs)), 2))
    print("random actions    ", round(episode_return(family, tasks, lambda obs: rng.uniform(-0.1, 0.1, obs.shape)), 2))
    torch.manual_seed(0)
    env = family.make_env(tasks[0])
    agent = pearl.PEARLAgent(pearl.pearl_spec(env.observation_space, env.action_space, algo), algo)
    rows = pearl.evaluate(agent, family, tasks, algo, seed=config.eval.seed)
    print("untrained PEARL   ", np.round(np.mean([r["episode_returns"] for r in rows], 0), 2))


if __name__ == "__main__":
    main()
