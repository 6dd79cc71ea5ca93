"""PEARL (Rakelly et al. 2019): off-policy meta-RL, SAC conditioned on a latent task variable z
inferred from context by a probabilistic, permutation-invariant encoder.

The package, by role:
- `config`: `PEARLConfig`, every hyperparameter documented;
- `networks`: the encoder (product of Gaussians), actor and twin critics, `PEARLAgent`;
- `sampler`: `PEARLSampler`, the worker side (rounds of episodes per task, prior then posterior z);
- `buffer`: the learner's per-task replay (numpy rings);
- `learning`: `PEARLLearner`, SAC + the encoder's KL, `updates_per_step` gradient steps per env step;
- here: `evaluate` (the paper's test protocol) and `PEARL`, the algorithm as the runtime sees it.

It runs in stream mode: workers send whole rounds (the stream's 'trials'), the learner updates
once `rounds_per_update` have arrived.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch

from metaray.core import AlgorithmBase, LoopSpec
from metaray.learner.pearl.buffer import check_buffer_fits
from metaray.learner.pearl.config import PEARLConfig
from metaray.learner.pearl.learning import PEARLLearner, critic_target
from metaray.learner.pearl.networks import (
    PEARLAgent,
    kl_to_unit_gaussian,
    pearl_spec,
    product_of_gaussians,
)
from metaray.learner.pearl.sampler import PEARLSampler, Rounds, concat_rounds, train_task_set
from metaray.networks import get_weights
from metaray.tasks import Task, TaskFamily


def evaluate(agent: PEARLAgent, family: TaskFamily, tasks: list[Task], config: PEARLConfig, seed: int) -> list[dict[str, Any]]:
    """The paper's test protocol on each task: z from the prior for the first episode, then from
    the posterior over everything seen so far, updated after each episode; `return_pre` is the
    first episode's return, `return_post` the mean of the `eval_episodes` after the
    `eval_adaptation_episodes`, `episode_returns` every episode's (the adaptation curve)."""
    sampler = PEARLSampler(family, config, len(tasks), seed, tasks=tasks, evaluation=True)
    sampler.set_weights(0, get_weights(agent))
    sampler.restart()  # the rounds start with these weights
    with torch.no_grad():
        batch, _ = sampler.sample(min_trials=len(tasks))
    by_task = dict(zip(batch.task_ids.tolist(), batch.episode_returns.tolist(), strict=True))
    successes = dict(zip(batch.task_ids.tolist(), sampler.last_successes, strict=True)) if sampler.last_successes else {}
    k = config.eval_adaptation_episodes
    out = []
    for task in tasks:
        episodes = by_task[task.task_id]
        row = {"task_id": task.task_id, "return_pre": float(episodes[0]), "return_post": float(np.mean(episodes[k:])),
               "episode_returns": [round(float(r), 4) for r in episodes]}
        if task.task_id in successes:
            row["success_rate_pre"] = float(successes[task.task_id][0])
            row["success_rate"] = float(np.mean(successes[task.task_id][k:]))
        out.append(row)
    return out


class PEARL(AlgorithmBase):
    """PEARL as a stream algorithm (see metaray.core.Algorithm)."""

    name = "pearl"
    mode = "stream"
    Config = PEARLConfig

    def make_policy(self, obs_space: gym.Space, act_space: gym.Space, config: PEARLConfig) -> PEARLAgent:
        return PEARLAgent(pearl_spec(obs_space, act_space, config), config)

    def make_sampler(self, family: TaskFamily, config: PEARLConfig, seed: int, tasks: list[Task] | None = None) -> PEARLSampler:
        return PEARLSampler(family, config, config.slots_per_worker, seed, tasks=tasks)

    def make_learner(self, policy: PEARLAgent, config: PEARLConfig, device: torch.device, seed: int) -> PEARLLearner:
        return PEARLLearner(policy, config, device, seed)

    def evaluate(self, policy: PEARLAgent, family: TaskFamily, tasks: list[Task], config: PEARLConfig,
                 seed: int) -> list[dict[str, Any]]:
        return evaluate(policy, family, tasks, config, seed)

    def loop_spec(self, config: PEARLConfig) -> LoopSpec:
        return LoopSpec(trials_per_call=config.slots_per_worker, trials_per_update=config.rounds_per_update,
                        max_policy_lag=config.max_policy_lag, sync=config.sync)

    def check_family(self, family: TaskFamily, config: PEARLConfig) -> None:
        """Continuous actions only; the replay must fit in memory."""
        super().check_family(family, config)
        env = family.make_env(family.sample(1, np.random.default_rng(0), "train")[0])
        try:
            spec = pearl_spec(env.observation_space, env.action_space, config)
        finally:
            env.close()
        check_buffer_fits(config.num_train_tasks, config.buffer_size_per_task, spec.obs_dim, spec.act_dim)


__all__ = [
    "PEARL", "PEARLAgent", "PEARLConfig", "PEARLLearner", "PEARLSampler", "Rounds", "concat_rounds", "critic_target",
    "evaluate", "kl_to_unit_gaussian", "pearl_spec", "product_of_gaussians", "train_task_set",
]
