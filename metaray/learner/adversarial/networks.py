"""The discriminator and the agent (generator + discriminator; the generator carries its learned
inner optimizer, if any) that is published and checkpointed as one state dict."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from metaray.learner.adversarial.config import AdversarialConfig
from metaray.learner.maml.sampler import make_gaussian_policy
from metaray.networks import INNER_OPTIMIZER, GaussianMLPPolicy, mlp


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
        # copies (torch.tensor, not as_tensor): a buffer sharing memory with the env's action
        # space would let loading a state dict rewrite the space every env of the family shares
        low = torch.full((act_dim,), -torch.inf) if act_low is None else torch.tensor(act_low, dtype=torch.float32)
        high = torch.full((act_dim,), torch.inf) if act_high is None else torch.tensor(act_high, dtype=torch.float32)
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
    """Generator and discriminator as one module: one state dict is published and checkpointed
    (the generator's learned inner optimizer under `generator.inner_optimizer.`)."""

    def __init__(self, generator: GaussianMLPPolicy, discriminator: Discriminator):
        super().__init__()
        self.generator, self.discriminator = generator, discriminator
        self._register_load_state_dict_pre_hook(_meta_sgd_keys_moved)


OLD_META_SGD_PREFIX = "inner_log_lr."  # where Meta-SGD's log α lived before `inner_optimizer`


def _meta_sgd_keys_moved(state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Checkpoints from before `inner_optimizer` load: their `inner_log_lr.K` is now
    `generator.inner_optimizer.log_lr.K` (the same values)."""
    for key in [k for k in state_dict if k.startswith(prefix + OLD_META_SGD_PREFIX)]:
        state_dict[f"{prefix}generator.{INNER_OPTIMIZER}.log_lr.{key[len(prefix + OLD_META_SGD_PREFIX):]}"] = state_dict.pop(key)


def make_policy(obs_space: gym.Space, act_space: gym.Space, config: AdversarialConfig) -> AdversarialAgent:
    generator = make_gaussian_policy(obs_space, act_space, config)
    disc = Discriminator(obs_space.shape[0], act_space.shape[0], list(config.disc_hidden_sizes),
                         config.discriminator, config.gamma, act_space.low, act_space.high,
                         state_only=config.disc_input == "state")
    return AdversarialAgent(generator, disc)


def split_weights(weights: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """An agent state dict -> (generator's, with its inner optimizer's; discriminator's)."""
    def part(prefix: str) -> dict[str, Any]:
        return {k.split(".", 1)[1]: v for k, v in weights.items() if k.startswith(prefix + ".")}
    return part("generator"), part("discriminator")

