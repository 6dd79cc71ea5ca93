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

from metaray.core import AlgorithmBase, LoopSpec, WireSpec
from metaray.learner.pearl.buffer import check_buffer_fits
from metaray.learner.pearl.config import PEARLConfig
from metaray.learner.pearl.learning import PEARLLearner, critic_target
from metaray.learner.pearl.networks import (
    PEARLAgent,
    kl_to_unit_gaussian,
    pearl_spec,
    product_of_gaussians,
)
from metaray.learner.pearl.sampler import (
    PEARLSampler,
    Rounds,
    concat_rounds,
    make_rounds,
    train_task_set,
)
from metaray.networks import get_weights
from metaray.protocol import RolloutArrays
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

    def task_set(self, family: TaskFamily, config: PEARLConfig) -> list[Task]:
        """The fixed train tasks (per-task replay): actors outside Ray are assigned these too."""
        return train_task_set(family, config)

    def wire_spec(self, config: PEARLConfig) -> WireSpec:
        """An actor outside Ray runs one round of its task (the policy's z from the prior, then
        from the posterior, on its side) and sends it with s' and terminals."""
        return WireSpec(("round",), 1, config.episodes_per_round, config.max_policy_lag, transitions=True)

    def to_rollouts(self, payload: Rounds) -> list[RolloutArrays]:
        """Each round as one rollout; its actions are the actor's normalised ones, in [-1, 1]."""
        out = []
        for r, task_id in enumerate(payload.task_ids.tolist()):
            rows = payload.round_index == r
            out.append(RolloutArrays(task_id, int(payload.round_versions[r]), "round", payload.obs[rows],
                                     payload.actions[rows], payload.rewards[rows], payload.dones[rows],
                                     np.zeros(int(rows.sum()), np.float32), next_obs=payload.next_obs[rows],
                                     terminals=payload.terminals[rows]))
        return out

    def from_rollouts(self, rollouts: list[RolloutArrays], config: PEARLConfig, obs_space: gym.Space,
                      act_space: gym.Space) -> Rounds:
        """Pushed rounds as `Rounds`: the context is the episodes before the extra posterior ones
        (counted from `dones`); actions are clipped into [-1, 1]."""
        context_episodes = config.prior_episodes + config.posterior_episodes
        rows = []
        for r in rollouts:
            dones = np.asarray(r.dones, bool)
            episode = np.cumsum(dones) - dones  # each step's episode within the round
            returns = np.bincount(episode, np.asarray(r.rewards, np.float64), minlength=config.episodes_per_round)
            rows.append((np.asarray(r.obs, np.float32), np.clip(np.asarray(r.actions, np.float32), -1.0, 1.0),
                         np.asarray(r.rewards, np.float32), np.asarray(r.next_obs, np.float32),
                         np.asarray(r.terminals, bool), dones, episode < context_episodes, r.task_id, r.policy_version,
                         returns[: config.episodes_per_round]))
        spec = pearl_spec(obs_space, act_space, config)
        return make_rounds(rows, spec.obs_dim, spec.act_dim, config.episodes_per_round)

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
