"""Returns, the linear feature baseline and GAE, batched over tasks (no gradients).

Episodes are fixed-size arrays [..., E, T] (T = the family's horizon) with a float `mask` that
is 0 after an episode ended early; every mean below is over valid steps only. `Stage` is one
stage's episodes of every task as tensors, with their advantages.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from metaray.core import Episodes
from metaray.learner.maml.config import MAMLConfig


def episode_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over episodes of each episode's mean over its valid steps: [..., E, T] -> [...].

    pytorch-maml-rl's `weighted_mean` then `.mean()`: every episode weighs the same whatever
    its length.
    """
    per_episode = (x * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)
    return per_episode.sum(-1) / valid_episodes(mask)


def valid_episodes(mask: torch.Tensor) -> torch.Tensor:
    """Episodes with at least one valid step, per task (≥ 1): an episode dropped after an env
    failure is all-masked and counts for nothing."""
    return (mask.sum(-1) > 0).sum(-1).clamp_min(1).to(mask.dtype)


def discount_cumsum(x: torch.Tensor, factor: float) -> torch.Tensor:
    """y_t = Σ_{s≥t} factor^(s−t) x_s along the last axis, as one [T, T] matrix product."""
    steps = torch.arange(x.shape[-1], device=x.device)
    power = (steps[None, :] - steps[:, None]).to(x.dtype)  # [t, s] -> s - t
    weights = torch.where(power >= 0, torch.pow(factor, power.clamp_min(0)), 0.0)
    return x @ weights.T


def baseline_features(obs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[obs, obs², t/100, (t/100)², (t/100)³, 1] per valid step, zeros on padding (Duan et al. 2016)."""
    t = (torch.arange(obs.shape[-2], device=obs.device, dtype=obs.dtype) / 100.0).expand_as(mask) * mask
    m = mask[..., None]
    return torch.cat([obs * m, obs.square() * m, t[..., None], t[..., None] ** 2, t[..., None] ** 3, m], dim=-1)


def fit_linear_baseline(obs: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, reg: float) -> torch.Tensor:
    """Value estimates from a ridge regression of returns on `baseline_features`, per task.

    One least-squares fit per leading index (task) over all its valid steps, solved in float64;
    where a solve fails the ridge term grows ×10 (up to 4 times), as pytorch-maml-rl does.
    Padded steps get value 0.
    """
    feats = baseline_features(obs, mask).double()  # [..., E, T, F]
    x = feats.flatten(-3, -2)  # [..., E*T, F]
    y = returns.double().flatten(-2)[..., None]  # [..., E*T, 1]
    xtx, xty = x.mT @ x, x.mT @ y
    eye = torch.eye(feats.shape[-1], dtype=torch.float64, device=feats.device)
    coef = torch.zeros_like(xty)
    solved = torch.zeros(xty.shape[:-2], dtype=torch.bool, device=feats.device)
    for _ in range(5):
        sol, info = torch.linalg.solve_ex(xtx + reg * eye, xty)
        ok = (info == 0) & sol.isfinite().all(-1).all(-1)
        coef = torch.where((ok & ~solved)[..., None, None], sol, coef)
        solved |= ok
        if bool(solved.all()):
            break
        reg *= 10.0
    values = (feats @ coef[..., None, :, :]).squeeze(-1)  # [..., E, T]
    return values.to(returns.dtype)


def normalize_advantages(adv: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per task (leading index): subtract the mean, divide by the RMS, both taken with
    `episode_mean` weighting over valid steps (pytorch-maml-rl's `weighted_normalize`)."""
    centered = (adv - episode_mean(adv, mask)[..., None, None]) * mask
    return centered / (episode_mean(centered.square(), mask).sqrt()[..., None, None] + eps)


def compute_advantages(
    obs: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, gamma: float, gae_lambda: float, reg: float
) -> torch.Tensor:
    """GAE(γ, λ) on the linear baseline fitted to this stage's own episodes, normalised per task.

    An episode's end (termination or horizon) is terminal: the value after it is 0.
    """
    rewards = rewards * mask
    returns = discount_cumsum(rewards, gamma)
    values = fit_linear_baseline(obs, returns, mask, reg)
    next_values = F.pad(values[..., 1:], (0, 1))
    deltas = (rewards + gamma * next_values - values) * mask
    return normalize_advantages(discount_cumsum(deltas, gamma * gae_lambda), mask)


class Stage(NamedTuple):
    """One stage's episodes of every task as tensors [N, E, T, ...]; mask is float."""

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    mask: torch.Tensor
    logp: torch.Tensor  # behaviour log-probs
    advantages: torch.Tensor

    @staticmethod
    def from_episodes(episodes: Episodes, config: MAMLConfig, dtype: torch.dtype, device: torch.device) -> Stage:
        """Tensors from numpy Episodes [N, E, T, ...]; computes the advantages."""
        t = [torch.as_tensor(np.asarray(a), device=device).to(dtype)
             for a in (episodes.obs, episodes.actions, episodes.rewards, episodes.mask, episodes.logp)]
        adv = compute_advantages(t[0], t[2], t[3], config.gamma, config.gae_lambda, config.baseline_reg)
        return Stage(*t, adv)
