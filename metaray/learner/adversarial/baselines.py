"""The baselines meta adversarial imitation is judged against, on the same held-out tasks and
the same K support demos: behaviour cloning from scratch per task, and Meta-BC (MAML on the BC
negative log-likelihood, adapted on the K demos). Both use the Gaussian MLP of the config's
generator and are scored like `evaluate`: the adapted policy's true return, normalised by the
expert's (its query demos) and a random policy's returns on the same task.

`metaray baseline CONFIG bc|meta-bc`, or a bench suite run with `baseline: bc`.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import torch

from metaray.core import mean_episode_return
from metaray.learner.adversarial.config import AdversarialConfig
from metaray.learner.adversarial.game import masked_mean
from metaray.learner.adversarial.sampler import expert_demos
from metaray.learner.maml.sampler import MAMLSampler, make_gaussian_policy
from metaray.networks import (
    GaussianMLPPolicy,
    Params,
    gaussian_log_prob,
    per_task_forward,
    policy_forward,
)
from metaray.tasks import Task, TaskFamily, make_vector_env
from metaray.tasks.reference import normalised_score, random_policy_returns

BC_STEPS, BC_LR = 2000, 3e-3
META_BC_ITERATIONS, META_BC_LR, META_BC_INNER_LR, META_BC_INNER_STEPS = 2000, 3e-3, 1e-3, 1


def demo_tensors(family: TaskFamily, tasks: list[Task], config: AdversarialConfig, seed: int
                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], np.ndarray]:
    """Support and query demos [N, K, T', ...] exactly as the adversarial sampler makes them (the
    first num_query_demos are the query set, the next num_demos the support set; cut to the
    longest demo), and the expert's return per task (mean over its query demos)."""
    k, k_query = config.num_demos, config.num_query_demos
    made, rewards = expert_demos(family, tasks, k + k_query, config.demo_noise, seed)
    length = int(np.nonzero(made.mask.any((0, 1)))[0].max()) + 1
    t = {f: torch.as_tensor(getattr(made, f)[:, :, :length]).float() for f in ("obs", "actions", "mask")}
    expert_return = np.asarray(rewards)[:, :k_query].sum(-1).mean(-1)
    return {f: v[:, k_query:] for f, v in t.items()}, {f: v[:, :k_query] for f, v in t.items()}, expert_return


def task_nll(policy: GaussianMLPPolicy, params: Params, obs: torch.Tensor, actions: torch.Tensor,
             mask: torch.Tensor) -> torch.Tensor:
    """One task's −mean log π(a|s) over its valid demo steps (params: one set)."""
    mean, log_std = policy_forward(policy, params, obs)
    return -masked_mean(gaussian_log_prob(mean, log_std, actions), mask)


def stacked_nll(policy: GaussianMLPPolicy, params: Params, demos: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-task NLL [N] with per-task (stacked) parameters."""
    mean, log_std = per_task_forward(policy, params, demos["obs"])
    logp = gaussian_log_prob(mean, log_std, demos["actions"])
    mask = demos["mask"]
    return -(logp * mask).sum((1, 2)) / mask.sum((1, 2)).clamp_min(1.0)


def bc_adapt(policy: GaussianMLPPolicy, params: Params, demos: dict[str, torch.Tensor], lr: float, steps: int) -> Params:
    """θ_i = θ − α ∇ NLL_i(θ), `steps` times, all tasks at once (vmap(grad), differentiable)."""
    grad_fn = torch.func.grad(partial(task_nll, policy))
    stacked = False
    for _ in range(steps):
        grads = torch.vmap(grad_fn, in_dims=(0 if stacked else None, 0, 0, 0))(
            params, demos["obs"], demos["actions"], demos["mask"])
        params = {k: p - lr * grads[k] for k, p in params.items()}
        stacked = True
    return params


def _spaces(family: TaskFamily, tasks: list[Task]) -> tuple[Any, Any]:
    probe = make_vector_env(family, tasks[:1], seed=0)
    spaces = probe.single_observation_space, probe.single_action_space
    probe.close()
    return spaces


def rollout_returns(family: TaskFamily, config: AdversarialConfig, stacked: Params, tasks: list[Task], seed: int) -> list[float]:
    """Mean true return of episodes_per_task episodes per task, task i acting with stacked[·][i]
    (stochastic Gaussian actions, clipped by the env, as the other methods' returns)."""
    sampler = MAMLSampler(family, config, config.episodes_per_task, seed)
    sampler.env.close()
    sampler.env = make_vector_env(family, tasks, config.episodes_per_task, seed=seed)
    with torch.no_grad():
        episodes = sampler.rollout({k: v.detach() for k, v in stacked.items()}, per_task=True, num_tasks=len(tasks)).episodes
    sampler.env.close()
    return [mean_episode_return(episodes.task(i)) for i in range(len(tasks))]


def _scored(family: TaskFamily, tasks: list[Task], config: AdversarialConfig, returns: list[float],
            expert: np.ndarray, seed: int) -> list[dict[str, Any]]:
    random_returns = random_policy_returns(family, tasks, config.episodes_per_task, seed)
    out = []
    for task, ret, exp in zip(tasks, returns, expert, strict=True):
        rand = random_returns[task.task_id]
        out.append({"task_id": task.task_id, "return_post": float(ret), "expert_return": float(exp), "random_return": rand,
                    "normalised_score": normalised_score(float(ret), float(exp), rand)})
    return out


def bc_from_scratch(family: TaskFamily, tasks: list[Task], config: AdversarialConfig, seed: int,
                    steps: int = BC_STEPS, lr: float = BC_LR) -> list[dict[str, Any]]:
    """Per task a fresh policy fitted to its K support demos by maximum likelihood (Adam), then
    rolled out. The demos and rollouts are those of `evaluate` with eval seed `seed`; the
    networks' initialisation is drawn from torch's generator as seeded by the caller."""
    support, _, expert = demo_tensors(family, tasks, config, seed)
    obs_space, act_space = _spaces(family, tasks)
    nets = [make_gaussian_policy(obs_space, act_space, config) for _ in tasks]
    policy = nets[0]
    params = {name: torch.stack([dict(n.named_parameters())[name].detach() for n in nets]).requires_grad_(True)
              for name, _ in policy.named_parameters()}
    # Adam is elementwise and the tasks' losses are independent: one optimiser over the stacked
    # parameters is N separate fits.
    opt = torch.optim.Adam(params.values(), lr=lr)
    for _ in range(steps):
        loss = stacked_nll(policy, params, support)
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
    return _scored(family, tasks, config, rollout_returns(family, config, params, tasks, seed), expert, seed)


def meta_bc(family: TaskFamily, tasks: list[Task], config: AdversarialConfig, seed: int, train_seed: int = 0,
            iterations: int = META_BC_ITERATIONS, lr: float = META_BC_LR, inner_lr: float = META_BC_INNER_LR,
            inner_steps: int = META_BC_INNER_STEPS) -> list[dict[str, Any]]:
    """MAML on the BC loss over train tasks (meta_batch_size fresh ones per iteration: support
    demos adapt, query demos judge), then adaptation on each held-out task's K support demos and
    rollouts, scored as `evaluate`."""
    obs_space, act_space = _spaces(family, tasks)
    policy = make_gaussian_policy(obs_space, act_space, config)
    params = dict(policy.named_parameters())
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    rng = np.random.default_rng([train_seed, config.num_demos, 7])
    for _ in range(iterations):
        batch = family.sample(config.meta_batch_size, rng, "train")
        support, query, _ = demo_tensors(family, batch, config, train_seed)
        loss = stacked_nll(policy, bc_adapt(policy, params, support, inner_lr, inner_steps), query).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    support, _, expert = demo_tensors(family, tasks, config, seed)
    adapted = {n: p.detach() for n, p in bc_adapt(policy, params, support, inner_lr, inner_steps).items()}
    return _scored(family, tasks, config, rollout_returns(family, config, adapted, tasks, seed), expert, seed)
