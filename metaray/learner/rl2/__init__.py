"""RL² (Duan et al. 2016): a recurrent policy that learns to explore, trained with PPO.

The policy is a GRU over (observation, previous action, previous reward, previous done flag).
Its hidden state runs across all episodes of a trial (several episodes of one task) and is
reset between trials, so the "fast" learning happens in the hidden state and the "slow"
learning is plain PPO over whole trials.

The package, by role:
- `config`: `RL2Config`, every hyperparameter documented;
- `networks`: `RL2Policy` and its inputs;
- `sampler`: `RL2Sampler`, the worker side, and `Trials`, its batch of whole trials;
- `learning`: `RL2Learner`, GAE over each trial and PPO-clip with truncated BPTT;
- here: `evaluate` and `RL2`, the algorithm as the runtime sees it (`metaray.core`).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from metaray.core import AlgorithmBase, Baseline, LoopSpec, WireSpec
from metaray.learner.rl2.attention import check_context
from metaray.learner.rl2.config import RL2Config
from metaray.learner.rl2.learning import RL2Learner, trial_gae
from metaray.learner.rl2.networks import (
    RL2Policy,
    SpaceSpec,
    build_inputs,
    shift_previous,
    space_spec,
    trial_inputs,
)
from metaray.learner.rl2.sampler import RL2Sampler, Trials, concat_trials, pad_trials
from metaray.networks import get_weights, load_weights
from metaray.protocol import RolloutArrays
from metaray.tasks import Task, TaskFamily, make_vector_env
from metaray.tasks.classical import baselines_for, run_baseline


def make_policy(obs_space: gym.Space, act_space: gym.Space, config: RL2Config) -> RL2Policy:
    return RL2Policy(space_spec(obs_space, act_space, config), config)


def evaluate(policy: RL2Policy, family: TaskFamily, tasks: list[Task], config: RL2Config, seed: int) -> list[dict[str, Any]]:
    """One trial per task with fixed weights (the adaptation happens in the hidden state), actions
    at `config.eval_temperature`."""
    sampler = RL2Sampler(family, config, len(tasks), seed, split="test", tasks=tasks,
                         temperature=config.eval_temperature)
    sampler.set_weights(0, get_weights(policy))
    with torch.no_grad():
        batch, _ = sampler.sample(min_trials=len(tasks))
    returns = dict(zip(batch.task_ids.tolist(), batch.rewards.sum(1).tolist(), strict=True))
    episodes = dict(zip(batch.task_ids.tolist(), episode_returns(batch, config.episodes_per_trial), strict=True))
    # Families that report success: the share of the trial's episodes with a successful step, and
    # whether its last episode (the most adapted one) had one.
    success = {task_id: {"success_rate": rate, "success_last": last} for task_id, rate, last in sampler.trial_success}
    return [{"task_id": t.task_id, "trial_return": float(returns[t.task_id]), "episode_returns": episodes[t.task_id],
             **success.get(t.task_id, {})} for t in tasks]


def episode_returns(batch: Trials, episodes_per_trial: int) -> list[list[float]]:
    """Each trial's return split by episode (the within-trial learning curve): [B][episodes]."""
    mask = batch.mask.astype(bool)
    index = np.cumsum(batch.dones.astype(np.int64), axis=1) - batch.dones.astype(np.int64)  # episode of each step
    out = np.zeros((len(mask), episodes_per_trial))
    rows = np.broadcast_to(np.arange(len(mask))[:, None], mask.shape)
    np.add.at(out, (rows[mask], np.minimum(index[mask], episodes_per_trial - 1)), batch.rewards[mask])
    return np.round(out, 4).tolist()


def _classical(name: str, family: TaskFamily, tasks: list[Task], config: RL2Config, eval_seed: int,
               baseline_seed: int) -> list[dict[str, Any]]:
    """A classical baseline through the same batched envs as `evaluate`, one trial per task."""
    rng = np.random.default_rng(baseline_seed)
    env = make_vector_env(family, tasks, seed=int(rng.integers(2**31)))
    rewards = run_baseline(name, family, env, config.episodes_per_trial, rng)
    env.close()
    return [{"task_id": t.task_id, "trial_return": float(r.sum()), "episode_returns": np.round(r, 4).tolist()}
            for t, r in zip(tasks, rewards, strict=True)]


class RL2(AlgorithmBase):
    """RL² as a stream algorithm (see metaray.core.Algorithm)."""

    name = "rl2"
    mode = "stream"
    Config = RL2Config

    def make_policy(self, obs_space: gym.Space, act_space: gym.Space, config: RL2Config) -> RL2Policy:
        return make_policy(obs_space, act_space, config)

    def make_sampler(self, family: TaskFamily, config: RL2Config, seed: int, tasks: list[Task] | None = None) -> RL2Sampler:
        return RL2Sampler(family, config, config.slots_per_worker, seed, tasks=tasks)

    def make_learner(self, policy: RL2Policy, config: RL2Config, device: torch.device, seed: int) -> RL2Learner:
        return RL2Learner(policy, config, device, seed)

    def evaluate(self, policy: RL2Policy, family: TaskFamily, tasks: list[Task], config: RL2Config,
                 seed: int) -> list[dict[str, Any]]:
        return evaluate(policy, family, tasks, config, seed)

    def loop_spec(self, config: RL2Config) -> LoopSpec:
        return LoopSpec(trials_per_call=config.slots_per_worker, trials_per_update=config.trials_per_update,
                        max_policy_lag=config.max_policy_lag, sync=config.sync)

    def baselines(self, family: TaskFamily, config: RL2Config) -> dict[str, Baseline]:
        """Duan et al.'s classical algorithms on bandits and tabular MDPs (metaray.tasks.classical)."""
        return {name: partial(_classical, name) for name in baselines_for(family.name, config.episodes_per_trial)}

    def check_family(self, family: TaskFamily, config: RL2Config) -> None:
        """A transformer's or SNAIL's context must hold a whole trial."""
        super().check_family(family, config)
        if config.memory in ("transformer", "snail"):
            check_context(config, family.max_episode_steps)

    def wire_spec(self, config: RL2Config) -> WireSpec:
        """An actor outside Ray sends whole trials: one rollout of episodes_per_trial episodes."""
        return WireSpec(("trial",), 1, config.episodes_per_trial, config.max_policy_lag)

    def to_rollouts(self, payload: Trials) -> list[RolloutArrays]:
        out = []
        for i, task_id in enumerate(payload.task_ids.tolist()):
            n = int(payload.mask[i].sum())
            out.append(RolloutArrays(task_id, int(payload.trial_versions[i]), "trial", payload.obs[i, :n],
                                     payload.actions[i, :n], payload.rewards[i, :n], payload.dones[i, :n], payload.logp[i, :n]))
        return out

    def from_rollouts(self, rollouts: list[RolloutArrays], config: RL2Config, obs_space: gym.Space,
                      act_space: gym.Space) -> Trials:
        rows = [(r.obs, r.actions, r.rewards, r.dones, r.logp, r.policy_version, r.task_id) for r in rollouts]
        return pad_trials(rows, space_spec(obs_space, act_space, config))


__all__ = [
    "RL2", "RL2Config", "RL2Learner", "RL2Policy", "RL2Sampler", "SpaceSpec", "Trials", "build_inputs", "concat_trials",
    "episode_returns", "evaluate", "get_weights", "load_weights", "make_policy", "pad_trials", "shift_previous", "space_spec",
    "trial_gae", "trial_inputs",
]
