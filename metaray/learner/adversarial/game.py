"""The game value V(θ, φ) = E_demos[log D] + E_policy[log(1 − D)] and what both sides compute
from it: discriminator logits and adaptation, the relabelled reward r̂, demos joining a stage.
Batches are one task's [E, T, ...] tensors (vmapped over tasks)."""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

from metaray.core import Episodes
from metaray.learner.adversarial.networks import Discriminator
from metaray.learner.maml.returns import Stage
from metaray.networks import GaussianMLPPolicy, Params, per_task_forward, policy_forward


class Transitions(NamedTuple):
    """Steps (s, a, s') of demos or policy episodes, with the policy's log π(a|s) at them."""

    obs: torch.Tensor
    actions: torch.Tensor
    next_obs: torch.Tensor
    mask: torch.Tensor
    logp: torch.Tensor


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def disc_logits(disc: Discriminator, params: Params, batch: Transitions) -> torch.Tensor:
    """log D − log(1 − D) at each step: f − log π (AIRL) or d (GAIL); also the reward r̂."""
    f = functional_call(disc, params, (batch.obs, batch.actions, batch.next_obs))
    return f - batch.logp if disc.kind == "airl" else f


def disc_loss(disc: Discriminator, params: Params, demos: Transitions, policy: Transitions) -> torch.Tensor:
    """−V = −E_demos[log D] − E_policy[log(1 − D)] over valid steps."""
    return (masked_mean(F.softplus(-disc_logits(disc, params, demos)), demos.mask)
            + masked_mean(F.softplus(disc_logits(disc, params, policy)), policy.mask))


def disc_adapt(disc: Discriminator, params: Params, demos: Transitions, policy: Transitions,
               lr: float, steps: int, stacked: bool) -> Params:
    """φ_i ← φ_i − β ∇(−V) `steps` times for all tasks at once (vmap over the task axis).
    Differentiable w.r.t. `params` under an outer graph (second-order)."""
    grad_fn = torch.func.grad(partial(disc_loss, disc))
    if steps == 0 and not stacked:  # no adaptation (ablation): every task keeps φ
        n = demos.obs.shape[0]
        return {k: p.expand(n, *p.shape) for k, p in params.items()}
    for _ in range(steps):
        grads = torch.vmap(grad_fn, in_dims=(0 if stacked else None, 0, 0))(params, demos, policy)
        params = {k: p - lr * grads[k] for k, p in params.items()}
        stacked = True
    return params


def with_demos(stage: Stage, demos: Episodes, advantage: float) -> Stage:
    """The stage plus task i's demos as K more episodes with advantage c at every valid step, so
    its policy gradient gains c·∇log π(a_demo|s_demo). Inner stages get the support demos
    (adaptation uses the demos' actions directly, not only through D's reward); the post stage
    gets the query demos with `query_demo_advantage`. Pure stage arithmetic, so the worker, the
    learner and MAML's closed-form curvature treat them like any episode. Their logp (a
    behaviour log-prob, read only for post stages) is 0; the learner replaces it there."""
    like = stage.obs
    obs, actions, mask = (torch.as_tensor(np.asarray(a), device=like.device).to(like.dtype)
                          for a in (demos.obs, demos.actions, demos.mask))
    zeros = torch.zeros_like(mask)
    return Stage(torch.cat([stage.obs, obs], 1), torch.cat([stage.actions, actions], 1),
                 torch.cat([stage.rewards, zeros], 1), torch.cat([stage.mask, mask], 1),
                 torch.cat([stage.logp, zeros], 1), torch.cat([stage.advantages, advantage * mask], 1))


def relabel(disc: Discriminator, params: Params, policy: Transitions, kind: Literal["logit", "log-d"] = "logit") -> torch.Tensor:
    """r̂ per step of every task's episodes [N, E, T] with that task's φ (stacked), 0 on padding:
    the logit log D − log(1 − D), or log D = −softplus(−logit) (`disc_reward`)."""
    logit = torch.vmap(partial(disc_logits, disc))(params, policy)
    return (logit if kind == "logit" else -F.softplus(-logit)) * policy.mask


def transitions(episodes: Episodes, logp: Any, dtype: torch.dtype = torch.float32,
                device: torch.device | None = None) -> Transitions:
    """The (s, a, s') steps of `episodes` (which must hold next_obs) with log π at them, as tensors."""
    def t(x: Any) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, device=device).to(dtype)
    return Transitions(t(episodes.obs), t(episodes.actions), t(episodes.next_obs), t(episodes.mask), t(logp))


def executed_log_prob(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor,
                      low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """log π of the action the env executed, clip(a, low, high), summed over action dims.

    The clipped Gaussian puts mass Φ((low − μ)/σ) on `low` and 1 − Φ((high − μ)/σ) on `high`
    and the Gaussian density in between. AIRL's r̂ = f − log π with the raw sample's density
    would pay the policy for widening σ without changing a single executed action (everything
    beyond the bound executes as the bound); with the executed action's likelihood it cannot.
    """
    std = log_std.exp()
    inside = -0.5 * ((actions - mean) / std) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
    at_low = torch.special.log_ndtr((low - mean) / std)
    at_high = torch.special.log_ndtr((mean - high) / std)
    logp = torch.where(actions <= low, at_low, torch.where(actions >= high, at_high, inside))
    return logp.sum(-1)


def stage_logp(policy: GaussianMLPPolicy, params: Params, batch_obs: torch.Tensor, actions: torch.Tensor,
               per_task: bool, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """log π(executed a|s) of every task's steps [N, E, T] under θ (shared) or θ_i (stacked)."""
    mean, log_std = per_task_forward(policy, params, batch_obs) if per_task else policy_forward(policy, params, batch_obs)
    return executed_log_prob(mean, log_std, actions, low, high)

