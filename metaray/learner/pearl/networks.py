"""PEARL's networks: the context encoder and its product-of-Gaussians posterior, the tanh-Gaussian
actor and the twin critics, all conditioned on the task variable z.

One module, `PEARLAgent`, holds them all (target critics and the temperature included): its
state dict is what the parameter server publishes and a checkpoint keeps. Workers use the
encoder and the actor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from metaray.learner.pearl.config import PEARLConfig

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
MIN_VARIANCE = 1e-7


@dataclass(frozen=True)
class PEARLSpec:
    """Sizes fixed by the env's spaces and the config."""

    obs_dim: int
    act_dim: int
    act_low: np.ndarray
    act_high: np.ndarray
    context_dim: int
    latent_size: int


def pearl_spec(obs_space: gym.Space, act_space: gym.Space, config: PEARLConfig) -> PEARLSpec:
    """The spec of PEARL's networks for these spaces; discrete actions are refused (PEARL as
    published is continuous control: its actor is a tanh-squashed Gaussian)."""
    if not isinstance(act_space, gym.spaces.Box):
        raise ValueError(f"algo pearl needs a continuous (Box) action space; this family's is {type(act_space).__name__} "
                         "(PEARL's actor is a squashed Gaussian; use rl2 for discrete actions)")
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise ValueError(f"algo pearl needs flat Box observations, got {obs_space}")
    low, high = np.asarray(act_space.low, np.float32), np.asarray(act_space.high, np.float32)
    if not (np.isfinite(low).all() and np.isfinite(high).all()):
        raise ValueError("algo pearl needs a bounded action space (its actor squashes into [low, high])")
    obs_dim, act_dim = int(obs_space.shape[0]), int(act_space.shape[0])
    context_dim = obs_dim + act_dim + 1 + (obs_dim if config.use_next_obs_in_context else 0)
    return PEARLSpec(obs_dim, act_dim, low, high, context_dim, config.latent_size)


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def run_mlp(net: nn.Sequential, x: torch.Tensor, bf16: bool) -> torch.Tensor:
    """The MLP, its hidden layers in bfloat16 when `bf16` (autocast; weights stay float32) and its
    output layer in float32 (Q values of hundreds must resolve differences of ~1)."""
    if not bf16:
        return net(x)
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        h = net[:-1](x)
    return net[-1](h.float())


def product_of_gaussians(mu: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gaussian proportional to the product of the factors N(mu_i, var_i) over axis -2
    ([..., N, L] -> [..., L] mean and variance): precisions add, means weigh by precision."""
    var = var.clamp_min(MIN_VARIANCE)
    precision = (1.0 / var).sum(-2)
    post_var = 1.0 / precision
    return post_var * (mu / var).sum(-2), post_var


def kl_to_unit_gaussian(mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, diag var) || N(0, I)) summed over the last axis."""
    return 0.5 * (var + mean * mean - 1.0 - torch.log(var)).sum(-1)


class ContextEncoder(nn.Module):
    """Each context transition -> a Gaussian factor (mean, variance) over z; the posterior is
    their product (permutation-invariant in the transitions)."""

    def __init__(self, context_dim: int, latent_size: int, hidden: int):
        super().__init__()
        self.latent_size = latent_size
        self.net = mlp([context_dim, hidden, hidden, hidden, 2 * latent_size])
        self.bf16 = False  # the learner's `precision: bf16`; workers always run float32

    def factors(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """context [..., N, context_dim] -> per-transition mean and variance [..., N, L]."""
        out = run_mlp(self.net, context, self.bf16)
        mu, pre_var = out[..., : self.latent_size], out[..., self.latent_size :]
        return mu, F.softplus(pre_var)

    def posterior(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | context): mean and variance [..., L]."""
        return product_of_gaussians(*self.factors(context))


class TanhGaussianActor(nn.Module):
    """pi(u | s, z): a Gaussian squashed by tanh into [-1, 1]^act_dim. The networks and the
    replay work in this normalised action space (rlkit's NormalizedBoxEnv, which PEARL uses);
    `to_env` maps u into the env's action box. With actions in a small box (point-nav's +-0.1)
    the critics would otherwise have to resolve tiny input differences: SAC then did not learn
    even a single fixed goal in 5k steps."""

    def __init__(self, spec: PEARLSpec, hidden: int):
        super().__init__()
        self.body = mlp([spec.obs_dim + spec.latent_size, hidden, hidden, hidden])
        self.mean = nn.Linear(hidden, spec.act_dim)
        self.log_std = nn.Linear(hidden, spec.act_dim)
        self.bf16 = False
        self.register_buffer("act_scale", torch.as_tensor((spec.act_high - spec.act_low) / 2.0))
        self.register_buffer("act_bias", torch.as_tensor((spec.act_high + spec.act_low) / 2.0))

    def forward(self, obs: torch.Tensor, z: torch.Tensor, noise: torch.Tensor | None = None,
                deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (u in [-1, 1], its log-prob, pre-tanh mean, log-std). `noise` is the standard
        normal draw (reparameterised); None draws it."""
        x = torch.cat([obs, z], -1)
        if self.bf16:
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                h = F.relu(self.body(x))
            h = h.float()
        else:
            h = F.relu(self.body(x))
        mean = self.mean(h)
        log_std = self.log_std(h).clamp(LOG_STD_MIN, LOG_STD_MAX)
        std = log_std.exp()
        if deterministic:
            pre = mean
        else:
            pre = mean + std * (torch.randn_like(mean) if noise is None else noise)
        normal_logp = (-0.5 * ((pre - mean) / std) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        # change of variables through tanh, in the stable form log(1 - tanh(x)^2) = 2 (log 2 - x - softplus(-2x))
        log_det = (2.0 * (math.log(2.0) - pre - F.softplus(-2.0 * pre))).sum(-1)
        return torch.tanh(pre), normal_logp - log_det, mean, log_std

    def to_env(self, u: torch.Tensor) -> torch.Tensor:
        """Normalised actions -> the env's action box."""
        return u * self.act_scale + self.act_bias

    def from_env(self, action: torch.Tensor) -> torch.Tensor:
        """The env's actions (e.g. pushed by an actor outside Ray) -> normalised, clipped to [-1, 1]."""
        return ((action - self.act_bias) / self.act_scale).clamp(-1.0, 1.0)


class TwinCritic(nn.Module):
    """Q1, Q2 (s, a, z) -> [..., 2]: two independent MLPs evaluated together."""

    def __init__(self, spec: PEARLSpec, hidden: int):
        super().__init__()
        sizes = [spec.obs_dim + spec.act_dim + spec.latent_size, hidden, hidden, hidden, 1]
        self.q1, self.q2 = mlp(sizes), mlp(sizes)
        self.bf16 = False

    def forward(self, obs: torch.Tensor, action: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, action, z], -1)
        return torch.cat([run_mlp(self.q1, x, self.bf16), run_mlp(self.q2, x, self.bf16)], -1)


class PEARLAgent(nn.Module):
    """Everything PEARL learns: encoder, actor, critics, target critics and log-temperature."""

    def __init__(self, spec: PEARLSpec, config: PEARLConfig):
        super().__init__()
        self.spec = spec
        self.encoder = ContextEncoder(spec.context_dim, spec.latent_size, config.encoder_hidden_size)
        self.actor = TanhGaussianActor(spec, config.hidden_size)
        self.critic = TwinCritic(spec, config.hidden_size)
        self.target_critic = TwinCritic(spec, config.hidden_size)
        self.target_critic.load_state_dict(self.critic.state_dict())
        self.target_critic.requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(config.alpha)))

    def set_bf16(self, on: bool) -> None:
        """Hidden layers in bfloat16 (the learner's `precision: bf16`), or all float32."""
        for module in (self.encoder, self.actor, self.critic, self.target_critic):
            module.bf16 = on

    def sample_z(self, mean: torch.Tensor, var: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ N(mean, var), reparameterised (gradients reach the encoder)."""
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        return mean + var.sqrt() * noise


def context_rows(obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, next_obs: np.ndarray,
                 use_next_obs: bool) -> np.ndarray:
    """Transitions as the encoder's input rows: (s, a, r[, s'])."""
    parts = [obs, actions, rewards[..., None]] + ([next_obs] if use_next_obs else [])
    return np.concatenate(parts, -1).astype(np.float32, copy=False)
