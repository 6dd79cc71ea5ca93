"""A user's own algorithm on metaray's runtime: multi-task REINFORCE, the no-adaptation baseline.

Nothing in metaray changes for it: a config names it as `algo: "examples.reinforce:Reinforce"`
(from the repository root, so `examples` is importable; Ray workers started by `metaray train`
get the working directory on their path) and its settings go under `algo_settings`; see
`examples/reinforce-point-nav.yaml`. It runs serial, on a local Ray instance or a cluster, and
`metaray eval` evaluates it. The contract it implements is `metaray.core.Algorithm`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from metaray.core import (
    AlgorithmBase,
    Episodes,
    LoopSpec,
    TaskResult,
    mean_episode_return,
    stack_stage,
)
from metaray.learner.optim_state import load_optimizer_tensors, optimizer_tensors
from metaray.learner.sampling import SamplerBase
from metaray.networks import GaussianMLPPolicy, gaussian_log_prob, get_weights
from metaray.tasks import Task, TaskFamily, make_vector_env


class ReinforceConfig(BaseModel):
    """Multi-task REINFORCE: one Gaussian MLP policy for every task, no adaptation."""

    model_config = ConfigDict(extra="forbid")
    tasks_per_iteration: int = Field(10, ge=1, description="Tasks sampled per iteration.")
    episodes_per_task: int = Field(5, ge=1, description="Episodes per task per iteration.")
    hidden_sizes: list[int] = Field(default_factory=lambda: [32, 32], description="Hidden widths of the policy.")
    lr: float = Field(0.01, gt=0, description="Adam learning rate.")
    gamma: float = Field(0.99, gt=0, le=1, description="Discount.")


def make_policy(obs_space: Any, act_space: Any, config: ReinforceConfig) -> GaussianMLPPolicy:
    return GaussianMLPPolicy(obs_space.shape[0], act_space.shape[0], config.hidden_sizes, "tanh", init_log_std=-1.0)


class ReinforceSampler(SamplerBase):
    """Worker side: `episodes_per_task` episodes of every task, all tasks in one vector env."""

    def __init__(self, family: TaskFamily, config: ReinforceConfig, seed: int):
        super().__init__(seed)  # seeded rng / torch_gen, version, checkpointable random state
        self.family, self.config = family, config
        self.env = make_vector_env(family, family.sample(1, self.rng), config.episodes_per_task, seed=seed)
        self.policy = make_policy(self.env.single_observation_space, self.env.single_action_space, config)

    def collect(self, tasks: list[Task], version: int) -> list[TaskResult]:
        per, horizon = self.config.episodes_per_task, self.family.max_episode_steps
        self.env.close()
        self.env = make_vector_env(self.family, tasks, per, seed=int(self.rng.integers(2**31)))
        n_slots = self.env.num_envs
        space = self.env.single_action_space
        obs_buf = np.zeros((n_slots, horizon, *self.env.single_observation_space.shape), np.float32)
        act_buf = np.zeros((n_slots, horizon, *space.shape), np.float32)
        rew, logp, mask = (np.zeros((n_slots, horizon), t) for t in (np.float32, np.float32, bool))
        alive = np.ones(n_slots, bool)
        obs, _ = self.env.reset()
        with torch.no_grad():
            for t in range(horizon):
                mean, log_std = self.policy(torch.as_tensor(obs, dtype=torch.float32))
                action = mean + log_std.exp() * torch.randn(mean.shape, generator=self.torch_gen)
                obs_buf[:, t], act_buf[:, t], mask[:, t] = obs, action.numpy(), alive
                logp[:, t] = gaussian_log_prob(mean, log_std, action).numpy()
                obs, reward, terminated, truncated, _ = self.env.step(np.clip(action.numpy(), space.low, space.high))
                rew[:, t] = reward * alive
                alive &= ~(terminated | truncated)
                if not alive.any():
                    break
        shape = (len(tasks), per, horizon)
        episodes = Episodes(obs_buf.reshape(*shape, -1), act_buf.reshape(*shape, -1), rew.reshape(shape),
                            mask.reshape(shape), logp.reshape(shape))
        results = []
        for i, task in enumerate(tasks):
            mine = episodes.task(i)
            ret = mean_episode_return(mine)  # no adaptation: the return before and after is the same
            results.append(TaskResult(task.task_id, version, {"post": mine}, int(mine.mask.sum()), per,
                                      {"return_pre": ret, "return_post": ret}))
        return results


class ReinforceLearner:
    """Learner side: REINFORCE with a per-task, per-step mean baseline, one Adam step."""

    def __init__(self, policy: GaussianMLPPolicy, config: ReinforceConfig, device: torch.device, seed: int):
        self.policy, self.config, self.device = policy.to(device), config, device
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.lr)
        self.generator = torch.Generator().manual_seed(seed)

    def update(self, results: list[TaskResult]) -> dict[str, float]:
        ep = stack_stage(results, "post")  # [N, E, T, ...]
        obs, actions, rewards, mask = (torch.as_tensor(a, device=self.device).float()
                                       for a in (ep.obs, ep.actions, ep.rewards, ep.mask))
        steps = torch.arange(rewards.shape[-1], device=self.device, dtype=torch.float32)
        discount = torch.where(steps[None] >= steps[:, None], self.config.gamma ** (steps[None] - steps[:, None]), 0.0)
        returns = rewards @ discount.T  # reward-to-go at every step
        advantages = (returns - (returns * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp_min(1)) * mask
        advantages = advantages / (advantages[mask.bool()].std() + 1e-8)
        loss = -(gaussian_log_prob(*self.policy(obs), actions) * advantages).sum() / mask.sum()
        self.optimizer.zero_grad()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), 10.0)
        self.optimizer.step()
        return {"loss": loss.item(), "grad_norm": float(grad_norm), "num_tasks": float(len(results))}

    def optimizer_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return optimizer_tensors(self.optimizer)

    def load_optimizer_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        load_optimizer_tensors(self.optimizer, tensors, meta, self.device)


class Reinforce(AlgorithmBase):
    name = "reinforce"
    mode = "meta-batch"
    Config = ReinforceConfig

    def make_policy(self, obs_space: Any, act_space: Any, config: ReinforceConfig) -> GaussianMLPPolicy:
        return make_policy(obs_space, act_space, config)

    def make_sampler(self, family: TaskFamily, config: ReinforceConfig, seed: int, tasks: Any = None) -> ReinforceSampler:
        return ReinforceSampler(family, config, seed)

    def make_learner(self, policy: GaussianMLPPolicy, config: ReinforceConfig, device: torch.device,
                     seed: int) -> ReinforceLearner:
        return ReinforceLearner(policy, config, device, seed)

    def loop_spec(self, config: ReinforceConfig) -> LoopSpec:
        return LoopSpec(tasks_per_iteration=config.tasks_per_iteration)

    def evaluate(self, policy: GaussianMLPPolicy, family: TaskFamily, tasks: list[Task], config: ReinforceConfig,
                 seed: int) -> list[dict[str, Any]]:
        sampler = ReinforceSampler(family, config, seed)
        sampler.set_weights(0, get_weights(policy))
        return [{"task_id": r.task_id, **r.metrics} for r in sampler.collect(tasks, 0)]
