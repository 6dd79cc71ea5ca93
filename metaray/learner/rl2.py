"""RL² (Duan et al. 2016): a recurrent policy that learns to explore, trained with PPO.

The policy is a GRU over (observation, previous action, previous reward, previous done flag).
Its hidden state runs across all episodes of a trial (several episodes of one task) and is
reset between trials, so the "fast" learning happens in the hidden state and the "slow"
learning is plain PPO over whole trials.

This one file holds:
- `RL2Config`: every hyperparameter, documented;
- `RL2Policy`: the network;
- `RL2Sampler`: the worker side: a batched vector env where each slot runs trials, one batched
  GRU step for all slots per env step, whole trials returned as padded numpy arrays;
- `RL2Learner`: the learner side: GAE over each trial, PPO-clip with truncated BPTT;
- `evaluate`: one trial per held-out task, for `metaray eval`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from metaray.learner.optim_state import load_optimizer_tensors, optimizer_tensors
from metaray.tasks import SAMPLER_INFO_KEYS, Task, TaskFamily, make_vector_env, step_success

TrialBatch = dict[str, Any]  # str -> np.ndarray (+ "policy_version": int); see RL2Sampler.sample


class RL2Config(BaseModel):
    """Hyperparameters of RL². Defaults suit the bandit / tabular-MDP families."""

    model_config = ConfigDict(extra="forbid")

    episodes_per_trial: int = Field(10, ge=1, description="Episodes per trial (n); the hidden state spans them. For `bandit` this is the number of pulls.")
    hidden_size: int = Field(128, ge=1, description="GRU hidden units.")
    slots_per_worker: int = Field(128, ge=1, description="Trials run side by side in one rollout worker's vector env.")
    trials_per_update: int = Field(1024, ge=1, description="Trials gathered before one learner update.")
    max_policy_lag: int = Field(2, ge=0, description="Trials sampled with weights more than this many versions old are dropped (counted).")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate.")
    gamma: float = Field(0.99, gt=0, le=1, description="Discount over the whole trial.")
    gae_lambda: float = Field(0.3, ge=0, le=1, description="GAE lambda (Duan et al. used 0.3).")
    clip_ratio: float = Field(0.2, gt=0, description="PPO clip range.")
    epochs: int = Field(4, ge=1, description="PPO passes over each batch.")
    minibatches: int = Field(4, ge=1, description="Minibatches per epoch (split over trials).")
    entropy_coef: float = Field(0.01, ge=0, description="Entropy bonus weight.")
    value_coef: float = Field(0.5, ge=0, description="Value loss weight.")
    max_grad_norm: float = Field(0.5, gt=0, description="Global gradient-norm clip.")
    target_kl: float = Field(0.0, ge=0, description="Stop the update's epochs early once a minibatch's approximate KL exceeds 1.5x this (0 = never). Long trials need it: Adam steps compound through the recurrence.")
    bptt_len: int = Field(0, ge=0, description="Truncated BPTT window in steps; 0 = backpropagate through the whole trial.")
    normalize_advantages: bool = Field(True, description="Normalise advantages per batch.")
    progress_input: bool = Field(False, description="Also feed the trial's progress (episodes finished / episodes_per_trial) to the GRU. With long trials the value depends on the steps left, which the GRU must otherwise learn to count (Pardo et al. 2018, time limits in RL). Off = Duan et al.'s inputs.")


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


def load_weights(module: nn.Module, weights: dict[str, np.ndarray]) -> None:
    """Load numpy weights (possibly read-only views into the object store) into a module."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only arrays; load_state_dict copies
        module.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})


def get_weights(module: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


class RL2Sampler:
    """Worker side of RL²: runs `slots` trials side by side and returns whole trials.

    All slots step together in one vector env and one batched GRU step per env step. Each slot
    keeps its own step counter, so families whose episodes end early (point-nav) do not make
    other slots wait: a finished slot draws a new train task and starts its next trial at once.
    """

    def __init__(
        self, family: TaskFamily, config: RL2Config, slots: int, seed: int,
        split: Literal["train", "test"] = "train", tasks: list[Task] | None = None,
    ):
        """With `tasks` given, each slot runs exactly one trial of its task (evaluation);
        otherwise finished slots keep drawing new tasks from `split`."""
        self.family, self.config, self.split = family, config, split
        self.rng = np.random.default_rng(seed)
        self.torch_gen = torch.Generator().manual_seed(int(self.rng.integers(2**62)))
        self.refill = tasks is None
        if tasks is None:
            tasks = family.sample(slots, self.rng, split)
        self.slots = len(tasks)
        self.env = make_vector_env(family, tasks, seed=int(self.rng.integers(2**31)), info_keys=SAMPLER_INFO_KEYS)
        self.spec = space_spec(self.env.single_observation_space, self.env.single_action_space, config)
        self.policy = RL2Policy(self.spec, config.hidden_size)
        self.policy.requires_grad_(False)
        self.max_len = config.episodes_per_trial * family.max_episode_steps
        self.version = -1
        self.dropped_trials = 0  # trials cut short by an env failure (restarted, never returned)
        self._no_failure = np.zeros(self.slots, bool)
        self._reset_all()

    def set_weights(self, version: int, weights: dict[str, np.ndarray]) -> None:
        load_weights(self.policy, weights)
        self.version = version

    def _reset_all(self) -> None:
        s, t, spec = self.slots, self.max_len, self.spec
        self.obs_buf = np.zeros((s, t, spec.obs_dim), np.float32)
        self.act_buf = np.zeros((s, t), np.int64) if spec.discrete else np.zeros((s, t, spec.act_dim), np.float32)
        self.rew_buf = np.zeros((s, t), np.float32)
        self.done_buf = np.zeros((s, t), bool)
        self.logp_buf = np.zeros((s, t), np.float32)
        self.t = np.zeros(s, np.int64)
        self.episodes = np.zeros(s, np.int64)
        self.trial_version = np.full(s, self.version, np.int64)
        self.active = np.ones(s, bool)
        self.h = self.policy.initial_state(s)
        obs, _ = self.env.reset()
        self.obs = obs
        self.prev_a = np.full(s, -1, np.int64) if spec.discrete else np.zeros((s, spec.act_dim), np.float32)
        self.prev_r = np.zeros(s, np.float32)
        self.prev_d = np.zeros(s, np.float32)
        # Success bookkeeping for families that report info["success"] (Meta-World): whether the
        # running episode had a successful step, successful episodes so far in the trial, and
        # whether the trial's last finished episode succeeded.
        self.ep_success = np.zeros(s, bool)
        self.trial_successes = np.zeros(s, np.int64)
        self.last_success = np.zeros(s, bool)
        self.reports_success = False

    def sample(self, min_trials: int) -> tuple[TrialBatch, dict[str, Any]]:
        """Step until at least `min_trials` trials finish; return them padded to one length.

        Batch arrays are [trials, max_len, ...] with a `mask` of real steps. A trial carries the
        oldest policy version it was sampled with, `policy_version` is the batch's oldest.
        """
        done_rows: list[tuple[np.ndarray, ...]] = []
        self.trial_success: list[tuple[int, float, bool]] = []  # (task id, success rate, last episode's)
        rows = np.arange(self.slots)
        env_steps = episodes = 0
        spec = self.spec
        self.trial_version[self.t == 0] = self.version
        while len(done_rows) < min_trials and self.active.any():
            x = build_inputs(spec, self.obs, self.prev_a, self.prev_r, self.prev_d, self.episodes)
            head, _, self.h = self.policy(torch.from_numpy(x)[:, None], self.h)
            dist = self.policy.distribution(head[:, 0])
            if spec.discrete:
                action_t = torch.multinomial(dist.probs, 1, generator=self.torch_gen)[:, 0]
            else:
                noise = torch.randn(dist.mean.shape, generator=self.torch_gen)
                action_t = dist.mean + dist.stddev * noise
            logp = self.policy.log_prob(dist, action_t).numpy()
            action = action_t.numpy()
            env_action = action if spec.discrete else np.clip(action, spec.act_low, spec.act_high)
            next_obs, reward, terminated, truncated, step_info = self.env.step(env_action)
            failed = step_info.get("env_failure", self._no_failure)  # slot env rebuilt: its trial is dropped
            ended = (terminated | truncated) & ~failed
            t = self.t
            self.obs_buf[rows, t] = self.obs
            self.act_buf[rows, t] = action
            self.rew_buf[rows, t] = reward
            self.done_buf[rows, t] = ended
            self.logp_buf[rows, t] = logp
            self.t += 1
            self.episodes += ended
            env_steps += self.slots
            episodes += int(ended.sum())
            succeeded = step_success(step_info, self.slots)
            if succeeded is not None:
                self.reports_success = True
                self.ep_success |= succeeded
                self.trial_successes += ended & self.ep_success
                self.last_success[ended] = self.ep_success[ended]
                self.ep_success[ended | failed] = False
            self.obs, self.prev_a, self.prev_r, self.prev_d = next_obs, action, reward.astype(np.float32), ended.astype(np.float32)

            finished = np.flatnonzero(self.active & (self.episodes >= self.config.episodes_per_trial) & ~failed)
            if finished.size:
                for slot in finished:
                    n = int(self.t[slot])
                    done_rows.append((
                        self.obs_buf[slot, :n].copy(), self.act_buf[slot, :n].copy(),
                        self.rew_buf[slot, :n].copy(), self.done_buf[slot, :n].copy(),
                        self.logp_buf[slot, :n].copy(), int(self.trial_version[slot]),
                        self.env.tasks[slot].task_id,
                    ))
                    if self.reports_success:
                        self.trial_success.append((self.env.tasks[slot].task_id,
                                                   float(self.trial_successes[slot] / self.episodes[slot]),
                                                   bool(self.last_success[slot])))
                if self.refill:
                    self._start_new_trials(finished)
                else:
                    self.active[finished] = False
            dropped = np.flatnonzero(failed & self.active)
            if dropped.size:
                self.dropped_trials += dropped.size
                self._start_new_trials(dropped, same_task=not self.refill)
        batch = pad_trials(done_rows, spec)
        returns = batch["rewards"].sum(1)
        info = {
            "policy_version": int(batch["policy_version"]),
            "num_trials": len(done_rows),
            "env_steps": env_steps,
            "episodes": episodes,
            "trial_return_mean": float(returns.mean()),
        }
        if self.trial_success:
            info["success_rate"] = float(np.mean([rate for _, rate, _ in self.trial_success]))
        return batch, info

    def restart_all_trials(self) -> None:
        """Drop every partial trial; each slot starts a new one on a newly drawn task."""
        self.active[:] = True
        self._start_new_trials(np.arange(self.slots), same_task=not self.refill)

    def _start_new_trials(self, slots: np.ndarray, same_task: bool = False) -> None:
        tasks = [self.env.tasks[s] for s in slots] if same_task else self.family.sample(len(slots), self.rng, self.split)
        for slot, task in zip(slots, tasks, strict=True):
            self.env.set_task(int(slot), task)
        mask = np.zeros(self.slots, bool)
        mask[slots] = True
        obs, _ = self.env.reset(options={"reset_mask": mask})
        self.obs = np.where(mask[:, None], obs, self.obs)
        self.t[slots] = 0
        self.episodes[slots] = 0
        self.h[:, slots] = 0.0
        self.prev_a[slots] = -1 if self.spec.discrete else 0.0
        self.prev_r[slots] = 0.0
        self.prev_d[slots] = 0.0
        self.trial_version[slots] = self.version
        self.ep_success[slots] = False
        self.trial_successes[slots] = 0
        self.last_success[slots] = False


def pad_trials(rows: list[tuple], spec: SpaceSpec) -> TrialBatch:
    """Whole trials (obs, actions, rewards, dones, logp, policy version, task id) as one batch
    padded to the longest, with a `mask` of real steps."""
    n = len(rows)
    length = max(len(r[0]) for r in rows)
    batch = {
        "obs": np.zeros((n, length, spec.obs_dim), np.float32),
        "actions": np.zeros((n, length), np.int64) if spec.discrete else np.zeros((n, length, spec.act_dim), np.float32),
        "rewards": np.zeros((n, length), np.float32),
        "dones": np.zeros((n, length), bool),
        "logp": np.zeros((n, length), np.float32),
        "mask": np.zeros((n, length), bool),
        "task_ids": np.array([r[6] for r in rows], np.int64),
        "trial_versions": np.array([r[5] for r in rows], np.int64),
    }
    for i, (obs, act, rew, done, logp, _, _) in enumerate(rows):
        k = len(obs)
        batch["obs"][i, :k], batch["actions"][i, :k], batch["rewards"][i, :k] = obs, act, rew
        batch["dones"][i, :k], batch["logp"][i, :k], batch["mask"][i, :k] = done, logp, True
    batch["policy_version"] = int(batch["trial_versions"].min())
    return batch


def concat_batches(batches: list[TrialBatch]) -> TrialBatch:
    """Stack trial batches of possibly different padded lengths along the trial axis."""
    length = max(b["mask"].shape[1] for b in batches)
    out: TrialBatch = {}
    for key in ("obs", "actions", "rewards", "dones", "logp", "mask"):
        parts = []
        for b in batches:
            a = b[key]
            pad = [(0, 0), (0, length - a.shape[1])] + [(0, 0)] * (a.ndim - 2)
            parts.append(np.pad(a, pad))
        out[key] = np.concatenate(parts)
    for key in ("task_ids", "trial_versions"):
        out[key] = np.concatenate([b[key] for b in batches])
    out["policy_version"] = int(out["trial_versions"].min())
    return out


def trial_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> torch.Tensor:
    """GAE over whole trials [B, T]; the trial's end is terminal (value 0 after it).

    Episode boundaries inside a trial are not terminal: RL²'s MDP is the trial.
    """
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = torch.where(m, delta + gamma * lam * last, torch.zeros_like(last))
        adv[:, t] = last
        next_value = torch.where(m, values[:, t], torch.zeros_like(last))
    return adv


class RL2Learner:
    """Learner side of RL²: PPO-clip with GAE over whole trials and (truncated) BPTT."""

    def __init__(self, policy: RL2Policy, config: RL2Config, device: torch.device, seed: int):
        self.config = config
        self.device = device
        self.policy = policy.to(device)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.lr, eps=1e-5)
        self.generator = torch.Generator().manual_seed(seed)

    def update(self, batches: list[TrialBatch]) -> dict[str, float]:
        cfg, policy, spec = self.config, self.policy, self.policy.spec
        batch = concat_batches(batches)
        inputs = trial_inputs(spec, batch["obs"], batch["actions"], batch["rewards"], batch["dones"])

        def to_dev(a: np.ndarray) -> torch.Tensor:
            t = torch.from_numpy(np.ascontiguousarray(a))
            return t.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else t

        x, actions = to_dev(inputs), to_dev(batch["actions"])
        rewards, mask, old_logp = to_dev(batch["rewards"]), to_dev(batch["mask"]), to_dev(batch["logp"])
        n_trials = x.shape[0]
        with torch.no_grad():
            _, values, _ = policy(x, policy.initial_state(n_trials).to(self.device))
            adv = trial_gae(rewards, values, mask, cfg.gamma, cfg.gae_lambda)
            returns = adv + values
            if cfg.normalize_advantages:
                a = adv[mask]
                adv = (adv - a.mean()) / (a.std() + 1e-8)

        stats = {"policy_loss": 0.0, "value_loss": 0.0, "entropy": 0.0, "approx_kl": 0.0, "clip_frac": 0.0, "grad_norm": 0.0}
        n_mb = min(cfg.minibatches, n_trials)
        steps, stopped_early = 0, False
        for _ in range(cfg.epochs):
            if stopped_early:
                break
            perm = torch.randperm(n_trials, generator=self.generator).to(self.device)
            for idx in perm.chunk(n_mb):
                head, v, _ = policy(x[idx], policy.initial_state(len(idx)).to(self.device), cfg.bptt_len)
                dist = policy.distribution(head)
                logp = policy.log_prob(dist, actions[idx])
                m = mask[idx]
                log_ratio = logp - old_logp[idx]
                ratio = log_ratio.exp()
                a = adv[idx]
                pg = -torch.min(ratio * a, ratio.clamp(1 - cfg.clip_ratio, 1 + cfg.clip_ratio) * a)
                ent = policy.entropy(dist)
                vloss = 0.5 * (v - returns[idx]) ** 2
                mf = m.float()
                denom = mf.sum().clamp_min(1.0)
                policy_loss = (pg * mf).sum() / denom
                value_loss = (vloss * mf).sum() / denom
                entropy = (ent * mf).sum() / denom
                loss = policy_loss + cfg.value_coef * value_loss - cfg.entropy_coef * entropy
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                with torch.no_grad():
                    approx_kl = (((ratio - 1) - log_ratio) * mf).sum().item() / denom.item()
                    stats["policy_loss"] += policy_loss.item()
                    stats["value_loss"] += value_loss.item()
                    stats["entropy"] += entropy.item()
                    stats["approx_kl"] += approx_kl
                    stats["clip_frac"] += (((ratio - 1).abs() > cfg.clip_ratio).float() * mf).sum().item() / denom.item()
                    stats["grad_norm"] += float(grad_norm)
                steps += 1
                if cfg.target_kl > 0 and approx_kl > 1.5 * cfg.target_kl:
                    stopped_early = True
                    break
        out = {k: v / steps for k, v in stats.items()}
        out["trial_return"] = float(batch["rewards"].sum(1).mean())
        out["num_trials"] = n_trials
        out["ppo_minibatch_steps"] = steps
        return out

    def optimizer_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return optimizer_tensors(self.optimizer)

    def load_optimizer_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        load_optimizer_tensors(self.optimizer, tensors, meta, self.device)


def evaluate(
    policy: RL2Policy, family: TaskFamily, tasks: list[Task], config: RL2Config, seed: int
) -> list[dict[str, Any]]:
    """One trial per task with fixed weights (the adaptation happens in the hidden state)."""
    sampler = RL2Sampler(family, config, len(tasks), seed, split="test", tasks=tasks)
    sampler.set_weights(0, get_weights(policy))
    with torch.no_grad():
        batch, _ = sampler.sample(min_trials=len(tasks))
    returns = dict(zip(batch["task_ids"].tolist(), batch["rewards"].sum(1).tolist(), strict=True))
    # Families that report success: the share of the trial's episodes with a successful step, and
    # whether its last episode (the most adapted one) had one.
    success = {task_id: {"success_rate": rate, "success_last": last} for task_id, rate, last in sampler.trial_success}
    return [{"task_id": t.task_id, "trial_return": float(returns[t.task_id]), **success.get(t.task_id, {})} for t in tasks]


# The algorithm interface the runtime uses (see metaray.learner.get_algorithm).
name = "rl2"
mode = "async"
Config = RL2Config
Sampler = RL2Sampler
Learner = RL2Learner
