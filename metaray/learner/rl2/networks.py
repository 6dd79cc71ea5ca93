"""The RL² network: a GRU actor-critic over (observation, previous action, previous reward,
previous done flag), and the inputs it takes, built the same way step by step (worker) and for
whole trials (learner)."""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from metaray.learner.rl2.config import RL2Config


@dataclass(frozen=True)
class SpaceSpec:
    """What the policy needs to know about an env's spaces (picklable, small)."""

    obs_dim: int
    discrete: bool
    act_dim: int  # number of actions if discrete, else action vector size
    act_low: tuple[float, ...] = ()
    act_high: tuple[float, ...] = ()
    progress_episodes: int = 0  # > 0: input episodes-finished / this (RL2Config.progress_input)

    @staticmethod
    def from_spaces(obs_space: gym.Space, act_space: gym.Space, progress_episodes: int = 0) -> SpaceSpec:
        if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
            raise ValueError(f"RL² needs a flat Box observation space, got {obs_space}")
        if isinstance(act_space, gym.spaces.Discrete):
            return SpaceSpec(obs_space.shape[0], True, int(act_space.n), progress_episodes=progress_episodes)
        if isinstance(act_space, gym.spaces.Box) and len(act_space.shape) == 1:
            return SpaceSpec(
                obs_space.shape[0], False, act_space.shape[0],
                tuple(float(x) for x in act_space.low), tuple(float(x) for x in act_space.high),
                progress_episodes,
            )
        raise ValueError(f"RL² needs a Discrete or flat Box action space, got {act_space}")

    @property
    def input_dim(self) -> int:
        # + previous reward, previous done (+ trial progress)
        return self.obs_dim + self.act_dim + 2 + (self.progress_episodes > 0)


class RL2Policy(nn.Module):
    """GRU actor-critic over (obs, previous action, previous reward, previous done)."""

    def __init__(self, spec: SpaceSpec, hidden_size: int):
        super().__init__()
        self.spec = spec
        self.hidden_size = hidden_size
        self.encoder = nn.Sequential(nn.Linear(spec.input_dim, hidden_size), nn.Tanh())
        self.gru = nn.GRU(hidden_size, hidden_size, batch_first=True)
        self.pi = nn.Linear(hidden_size, spec.act_dim)
        self.v = nn.Linear(hidden_size, 1)
        if not spec.discrete:
            self.log_std = nn.Parameter(torch.full((spec.act_dim,), -0.5))
        nn.init.orthogonal_(self.pi.weight, 0.01)
        nn.init.zeros_(self.pi.bias)

    def initial_state(self, batch: int) -> torch.Tensor:
        return torch.zeros(1, batch, self.hidden_size)

    def forward(
        self, inputs: torch.Tensor, h0: torch.Tensor, bptt_len: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """inputs [B, T, input_dim] -> (policy head [B, T, act_dim], values [B, T], h_T).

        With `bptt_len` > 0 gradients stop at the hidden state every `bptt_len` steps
        (truncated BPTT); the forward values are the same.
        """
        x = self.encoder(inputs)
        if bptt_len <= 0 or bptt_len >= x.shape[1]:
            out, h = self.gru(x, h0)
        else:
            outs, h = [], h0
            for start in range(0, x.shape[1], bptt_len):
                o, h = self.gru(x[:, start : start + bptt_len], h)
                outs.append(o)
                h = h.detach()
            out = torch.cat(outs, dim=1)
        return self.pi(out), self.v(out).squeeze(-1), h

    def distribution(self, head: torch.Tensor) -> torch.distributions.Distribution:
        if self.spec.discrete:
            return torch.distributions.Categorical(logits=head)
        return torch.distributions.Normal(head, self.log_std.exp().expand_as(head))

    def log_prob(self, dist: torch.distributions.Distribution, actions: torch.Tensor) -> torch.Tensor:
        lp = dist.log_prob(actions)
        return lp if self.spec.discrete else lp.sum(-1)

    def entropy(self, dist: torch.distributions.Distribution) -> torch.Tensor:
        ent = dist.entropy()
        return ent if self.spec.discrete else ent.sum(-1)


def space_spec(obs_space: gym.Space, act_space: gym.Space, config: RL2Config) -> SpaceSpec:
    """The policy's input/output spec for these spaces under `config`."""
    return SpaceSpec.from_spaces(obs_space, act_space, config.episodes_per_trial if config.progress_input else 0)


def make_policy(obs_space: gym.Space, act_space: gym.Space, config: RL2Config) -> RL2Policy:
    return RL2Policy(space_spec(obs_space, act_space, config), config.hidden_size)


def build_inputs(
    spec: SpaceSpec, obs: np.ndarray, prev_actions: np.ndarray, prev_rewards: np.ndarray,
    prev_dones: np.ndarray, episodes_done: np.ndarray | None = None,
) -> np.ndarray:
    """Concatenate the RL² input features; works on [..., feature] arrays of any batch shape.

    `episodes_done` (episodes of the trial finished before this step) is needed only when the
    spec takes the trial's progress as input.
    """
    if spec.discrete:
        prev_act = np.eye(spec.act_dim, dtype=np.float32)[prev_actions]
        prev_act *= (prev_actions >= 0)[..., None]  # -1 marks "no previous action"
    else:
        prev_act = prev_actions.astype(np.float32)
    parts = [obs.astype(np.float32), prev_act, prev_rewards[..., None].astype(np.float32),
             prev_dones[..., None].astype(np.float32)]
    if spec.progress_episodes > 0:
        if episodes_done is None:
            raise ValueError("this RL² policy takes the trial's progress: pass episodes_done")
        parts.append((np.asarray(episodes_done, np.float32) / spec.progress_episodes)[..., None])
    return np.concatenate(parts, axis=-1)


def trial_inputs(
    spec: SpaceSpec, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, dones: np.ndarray
) -> np.ndarray:
    """RL² inputs for whole trials [B, T, ...], exactly as the worker built them step by step."""
    prev_a, prev_r, prev_d = shift_previous(spec, actions, rewards, dones)
    return build_inputs(spec, obs, prev_a, prev_r, prev_d, np.cumsum(prev_d, axis=1))


def shift_previous(spec: SpaceSpec, actions: np.ndarray, rewards: np.ndarray, dones: np.ndarray):
    """Per-step (previous action, reward, done) for whole trials [B, T, ...]: zeros at t=0."""
    prev_a = np.full_like(actions, -1) if spec.discrete else np.zeros_like(actions)
    prev_a[:, 1:] = actions[:, :-1]
    prev_r = np.zeros_like(rewards)
    prev_r[:, 1:] = rewards[:, :-1]
    prev_d = np.zeros_like(dones)
    prev_d[:, 1:] = dones[:, :-1]
    return prev_a, prev_r, prev_d

