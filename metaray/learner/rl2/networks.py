"""The RL² network: an actor-critic with a memory (GRU, LSTM, ... see `memory`) over
(observation, previous action, previous reward, previous done flag), and the inputs it takes,
built the same way step by step (worker) and for whole trials (learner)."""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from metaray.learner.rl2.config import RL2Config
from metaray.learner.rl2.memory import State, make_memory


@dataclass(frozen=True)
class SpaceSpec:
    """What the policy needs to know about an env's spaces (picklable, small)."""

    obs_dim: int
    discrete: bool
    act_dim: int  # number of actions if discrete, else action vector size
    act_low: tuple[float, ...] = ()
    act_high: tuple[float, ...] = ()
    progress_episodes: int = 0  # > 0: input episodes-finished / this (RL2Config.progress_input)
    previous_obs: bool = False  # input the previous observation too (RL2Config.previous_obs_input)

    @staticmethod
    def from_spaces(obs_space: gym.Space, act_space: gym.Space, progress_episodes: int = 0,
                    previous_obs: bool = False) -> SpaceSpec:
        if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
            raise ValueError(f"RL² needs a flat Box observation space, got {obs_space}")
        if isinstance(act_space, gym.spaces.Discrete):
            return SpaceSpec(obs_space.shape[0], True, int(act_space.n), progress_episodes=progress_episodes,
                             previous_obs=previous_obs)
        if isinstance(act_space, gym.spaces.Box) and len(act_space.shape) == 1:
            return SpaceSpec(
                obs_space.shape[0], False, act_space.shape[0],
                tuple(float(x) for x in act_space.low), tuple(float(x) for x in act_space.high),
                progress_episodes, previous_obs,
            )
        raise ValueError(f"RL² needs a Discrete or flat Box action space, got {act_space}")

    @property
    def input_dim(self) -> int:
        # + previous reward, previous done (+ trial progress) (+ previous observation)
        return self.obs_dim * (1 + self.previous_obs) + self.act_dim + 2 + (self.progress_episodes > 0)


def fp32_head(head: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """A head in full precision even under autocast (`rl2.precision: bf16`): the logits and
    values, and so the log-probability ratios and value targets, keep float32's resolution."""
    with torch.autocast(features.device.type, enabled=False):
        return head(features.float())


class Branch(nn.Module):
    """Input encoder (linear, layer norm, tanh) -> memory -> linear head."""

    def __init__(self, spec: SpaceSpec, config: RL2Config, out_dim: int):
        super().__init__()
        width = config.hidden_size
        self.encoder = nn.Sequential(nn.Linear(spec.input_dim, width),
                                     nn.LayerNorm(width) if config.layer_norm else nn.Identity(), nn.Tanh())
        self.memory = make_memory(config, width)
        self.head = nn.Linear(self.memory.out_dim, out_dim)

    def forward(self, inputs: torch.Tensor, bptt_len: int = 0) -> torch.Tensor:
        return fp32_head(self.head, self.memory(self.encoder(inputs), bptt_len))

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        y, state = self.memory.step(self.encoder(x), state)
        return self.head(y), state


class RL2Policy(nn.Module):
    """RL²'s actor-critic over (obs, previous action, previous reward, previous done).

    The policy and the value function each have their own encoder and memory by default
    (`rl2.shared_memory: false`): under one shared memory the value loss's gradient is hundreds
    of times the policy's and the memory learns to predict returns, not to remember what
    the policy needs (issue 26). Workers step only the policy branch. The value head predicts
    returns normalised by running statistics kept here (PopArt, van Hasselt et al. 2016), so
    its targets have a steady scale however large the trial's return.
    """

    def __init__(self, spec: SpaceSpec, config: RL2Config):
        super().__init__()
        self.spec, self.config = spec, config
        self.hidden_size = config.hidden_size
        self.policy_net = Branch(spec, config, spec.act_dim)
        self.value_net = None if config.shared_memory else Branch(spec, config, 1)
        self.shared_value_head = nn.Linear(self.policy_net.memory.out_dim, 1) if config.shared_memory else None
        if not spec.discrete:
            self.log_std = nn.Parameter(torch.full((spec.act_dim,), -0.5))
        nn.init.orthogonal_(self.policy_net.head.weight, 0.01)
        nn.init.zeros_(self.policy_net.head.bias)
        self.register_buffer("value_mean", torch.zeros(()))  # PopArt statistics of the returns
        self.register_buffer("value_std", torch.ones(()))
        self.register_buffer("value_updates", torch.zeros((), dtype=torch.int64))

    @property
    def value_head(self) -> nn.Linear:
        return self.shared_value_head if self.value_net is None else self.value_net.head

    def initial_state(self, batch: int) -> State:
        """The worker's state: the policy branch's memory."""
        return self.policy_net.memory.initial_state(batch)

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One env step for all slots (workers): x [B, input_dim] -> (policy head [B, act_dim], state)."""
        return self.policy_net.step(x, state)

    def forward(self, inputs: torch.Tensor, bptt_len: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole trials from the start: inputs [B, T, input_dim] -> (policy head [B, T, act_dim],
        normalised values [B, T]). With `bptt_len` > 0 recurrent memories backpropagate through
        at most that many steps (same forward values)."""
        if self.value_net is None:
            features = self.policy_net.memory(self.policy_net.encoder(inputs), bptt_len)
            return (fp32_head(self.policy_net.head, features),
                    fp32_head(self.shared_value_head, features).squeeze(-1))
        return self.policy_net(inputs, bptt_len), self.value_net(inputs, bptt_len).squeeze(-1)

    def denormalize(self, values: torch.Tensor) -> torch.Tensor:
        return values * self.value_std + self.value_mean

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
    return SpaceSpec.from_spaces(obs_space, act_space, config.episodes_per_trial if config.progress_input else 0,
                                 config.previous_obs_input)


def make_policy(obs_space: gym.Space, act_space: gym.Space, config: RL2Config) -> RL2Policy:
    return RL2Policy(space_spec(obs_space, act_space, config), config)


def build_inputs(
    spec: SpaceSpec, obs: np.ndarray, prev_actions: np.ndarray, prev_rewards: np.ndarray,
    prev_dones: np.ndarray, episodes_done: np.ndarray | None = None, prev_obs: np.ndarray | None = None,
) -> np.ndarray:
    """Concatenate the RL² input features; works on [..., feature] arrays of any batch shape.

    `episodes_done` (episodes of the trial finished before this step) is needed only when the
    spec takes the trial's progress as input, `prev_obs` (zeros at a trial's first step) only
    when it takes the previous observation.
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
    if spec.previous_obs:
        if prev_obs is None:
            raise ValueError("this RL² policy takes the previous observation: pass prev_obs")
        parts.append(prev_obs.astype(np.float32))
    return np.concatenate(parts, axis=-1)


def trial_inputs(
    spec: SpaceSpec, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, dones: np.ndarray
) -> np.ndarray:
    """RL² inputs for whole trials [B, T, ...], exactly as the worker built them step by step."""
    prev_a, prev_r, prev_d = shift_previous(spec, actions, rewards, dones)
    prev_obs = None
    if spec.previous_obs:
        prev_obs = np.zeros_like(obs)
        prev_obs[:, 1:] = obs[:, :-1]
    return build_inputs(spec, obs, prev_a, prev_r, prev_d, np.cumsum(prev_d, axis=1), prev_obs)


def shift_previous(spec: SpaceSpec, actions: np.ndarray, rewards: np.ndarray, dones: np.ndarray):
    """Per-step (previous action, reward, done) for whole trials [B, T, ...]: zeros at t=0."""
    prev_a = np.full_like(actions, -1) if spec.discrete else np.zeros_like(actions)
    prev_a[:, 1:] = actions[:, :-1]
    prev_r = np.zeros_like(rewards)
    prev_r[:, 1:] = rewards[:, :-1]
    prev_d = np.zeros_like(dones)
    prev_d[:, 1:] = dones[:, :-1]
    return prev_a, prev_r, prev_d

