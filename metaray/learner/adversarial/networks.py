"""The discriminator and the agent (generator + discriminator, + Meta-SGD step sizes) that is
published and checkpointed as one state dict."""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from metaray.learner.adversarial.config import AdversarialConfig
from metaray.learner.maml.sampler import make_gaussian_policy
from metaray.networks import GaussianMLPPolicy, Params, mlp


class Discriminator(nn.Module):
    """AIRL's f_φ(s,a,s') = g(s,a) + γ h(s') − h(s), or GAIL's d_φ(s,a); returns the logit's
    φ-part (AIRL's D subtracts log π outside, since π changes per task)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], kind: str, gamma: float,
                 act_low: np.ndarray | None = None, act_high: np.ndarray | None = None, state_only: bool = False):
        super().__init__()
        self.kind, self.gamma, self.state_only = kind, gamma, state_only
        self.g = mlp(obs_dim if state_only else obs_dim + act_dim, hidden, 1)
        self.h = mlp(obs_dim, hidden, 1) if kind == "airl" else None
        # D judges the actions the env executed: policy samples are clipped to the action space
        # like the expert's (else |a| beyond the bounds alone would tell them apart)
        low = torch.full((act_dim,), -torch.inf) if act_low is None else torch.as_tensor(act_low, dtype=torch.float32)
        high = torch.full((act_dim,), torch.inf) if act_high is None else torch.as_tensor(act_high, dtype=torch.float32)
        self.register_buffer("act_low", low)
        self.register_buffer("act_high", high)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        if self.state_only:
            f = self.g(next_obs).squeeze(-1)
        else:
            actions = torch.maximum(torch.minimum(actions, self.act_high), self.act_low)
            f = self.g(torch.cat([obs, actions], -1)).squeeze(-1)
        if self.h is not None:
            f = f + self.gamma * self.h(next_obs).squeeze(-1) - self.h(obs).squeeze(-1)
        return f


class AdversarialAgent(nn.Module):
    """Generator and discriminator as one module: one state dict is published and checkpointed.
    With `inner_lr` (Meta-SGD) it also holds log α per generator parameter entry."""

    def __init__(self, generator: GaussianMLPPolicy, discriminator: Discriminator, inner_lr: float | None = None):
        super().__init__()
        self.generator, self.discriminator = generator, discriminator
        self.inner_log_lr = None if inner_lr is None else nn.ParameterDict({
            lr_key(name): nn.Parameter(torch.full_like(p, math.log(inner_lr))) for name, p in generator.named_parameters()
        })

    def inner_lrs(self) -> Params | None:
        """α per generator parameter (a graph to log α), or None without Meta-SGD."""
        if self.inner_log_lr is None:
            return None
        return {name: self.inner_log_lr[lr_key(name)].exp() for name, _ in self.generator.named_parameters()}


def lr_key(name: str) -> str:
    """ParameterDict keys may not contain dots: generator parameter name -> its log α's key."""
    return name.replace(".", "_")


def make_policy(obs_space: gym.Space, act_space: gym.Space, config: AdversarialConfig) -> AdversarialAgent:
    generator = make_gaussian_policy(obs_space, act_space, config)
    disc = Discriminator(obs_space.shape[0], act_space.shape[0], list(config.disc_hidden_sizes),
                         config.discriminator, config.gamma, act_space.low, act_space.high,
                         state_only=config.disc_input == "state")
    return AdversarialAgent(generator, disc, config.inner_lr if config.learn_inner_lr else None)


def split_weights(weights: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """An agent state dict -> (generator's, discriminator's, log α's keyed by lr_key; {} without Meta-SGD)."""
    def part(prefix: str) -> dict[str, Any]:
        return {k.split(".", 1)[1]: v for k, v in weights.items() if k.startswith(prefix + ".")}
    return part("generator"), part("discriminator"), part("inner_log_lr")

