"""The RL² worker side: a batched vector env where each slot runs trials, one batched GRU step
for all slots per env step, whole trials returned as padded numpy arrays (`Trials`)."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from metaray.core import DROPPED_TRIALS_PER_SLOT_BEFORE_RETURN, SampleInfo
from metaray.learner.rl2.config import RL2Config
from metaray.learner.rl2.memory import Memory
from metaray.learner.rl2.networks import RL2Policy, SpaceSpec, build_inputs, space_spec
from metaray.learner.sampling import SamplerBase
from metaray.tasks import SAMPLER_INFO_KEYS, Task, TaskFamily, make_vector_env, step_success


class RL2Sampler(SamplerBase):
    """Worker side of RL²: runs `slots` trials side by side and returns whole trials.

    All slots step together in one vector env and one batched GRU step per env step. Each slot
    keeps its own step counter, so families whose episodes end early (point-nav) do not make
    other slots wait: a finished slot draws a new train task and starts its next trial at once.
    """

    def __init__(
        self, family: TaskFamily, config: RL2Config, slots: int, seed: int,
        split: Literal["train", "test"] = "train", tasks: list[Task] | None = None, temperature: float = 1.0,
    ):
        """With `tasks` given, each slot runs exactly one trial of its task (evaluation);
        otherwise finished slots keep drawing new tasks from `split`. `temperature` (evaluation
        only) sharpens or flattens the action distribution; 0 takes the most likely action."""
        super().__init__(seed)
        self.family, self.config, self.split = family, config, split
        self.temperature = temperature
        self.refill = tasks is None
        if tasks is None:
            tasks = family.sample(slots, self.rng, split)
        self.slots = len(tasks)
        self.env = make_vector_env(family, tasks, seed=int(self.rng.integers(2**31)), info_keys=SAMPLER_INFO_KEYS)
        self.spec = space_spec(self.env.single_observation_space, self.env.single_action_space, config)
        self.policy = RL2Policy(self.spec, config)
        self.policy.requires_grad_(False)
        self.max_len = config.episodes_per_trial * family.max_episode_steps
        self._no_failure = np.zeros(self.slots, bool)
        self._reset_all()

    def _draw(self, dist: torch.distributions.Distribution) -> torch.Tensor:
        """Actions from the policy's distribution at the sampler's temperature."""
        temperature = self.temperature
        if self.spec.discrete:
            if temperature == 0:
                return dist.logits.argmax(dim=1)
            probs = dist.probs if temperature == 1 else torch.softmax(dist.logits / temperature, dim=1)
            return torch.multinomial(probs, 1, generator=self.torch_gen)[:, 0]
        noise = torch.randn(dist.mean.shape, generator=self.torch_gen)
        return dist.mean + dist.stddev * temperature * noise

    @property
    def dropped_trials(self) -> int:
        """Trials cut short by an env failure (restarted, never returned)."""
        return self.dropped_episodes

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
        self.memory_state = self.policy.initial_state(s)
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

    def sample(self, min_trials: int) -> tuple[Trials, SampleInfo]:
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
        # training returns early from an env failing at every step; evaluation needs every task's trial
        give_up = self.dropped_episodes + DROPPED_TRIALS_PER_SLOT_BEFORE_RETURN * self.slots if self.refill else float("inf")
        while len(done_rows) < min_trials and self.active.any() and self.dropped_episodes < give_up:
            prev_obs = None
            if spec.previous_obs:  # the observation of the step before, in the trial's buffer
                prev_obs = np.where((self.t > 0)[:, None], self.obs_buf[rows, np.maximum(self.t - 1, 0)], 0.0)
            x = build_inputs(spec, self.obs, self.prev_a, self.prev_r, self.prev_d, self.episodes, prev_obs)
            head, self.memory_state = self.policy.step(torch.from_numpy(x), self.memory_state)
            dist = self.policy.distribution(head)
            action_t = self._draw(dist)
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
                self.dropped_episodes += int(dropped.size)
                self._start_new_trials(dropped, same_task=not self.refill)
        batch = pad_trials(done_rows, spec)
        success = float(np.mean([rate for _, rate, _ in self.trial_success])) if self.trial_success else None
        mean_return = float(batch.rewards.sum(1).mean()) if done_rows else float("nan")
        return batch, SampleInfo(batch.policy_version, len(done_rows), env_steps, episodes, mean_return, success)

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """With the random state, the trials in flight (buffers, step and episode counters, GRU
        state, last inputs, success bookkeeping) and the env's state, when the env can save it
        (`meta["in_flight"]`); otherwise the random state only, and a checkpoint restarts trials."""
        meta, arrays = super().get_state()
        try:
            env_meta, env_arrays = self.env.get_state()
        except NotImplementedError:
            return meta, arrays
        arrays.update({f"trial/{name}": np.array(getattr(self, name), copy=True) for name in TRIAL_ARRAYS})
        used = int(self.t.max())
        stale = np.arange(used)[None, :] >= self.t[:, None]  # a slot's steps past its t: old trials' leftovers
        for name in TRIAL_BUFFERS:
            buf = getattr(self, name)[:, :used].copy()
            buf[stale] = 0
            arrays[f"trial/{name}"] = buf
        arrays.update({f"trial/memory/{k}": v.numpy().copy() for k, v in self.memory_state.items()})
        arrays.update({f"env/{name}": value for name, value in env_arrays.items()})
        meta.update(in_flight=True, env_state=env_meta, reports_success=self.reports_success)
        return meta, arrays

    def set_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        super().set_state(meta, arrays)
        if not meta.get("in_flight"):
            return
        if len(meta["env_state"]["tasks"]) != self.slots:
            raise ValueError(f"sampler state of {len(meta['env_state']['tasks'])} slots given to one with {self.slots}")
        self.env.set_state(meta["env_state"], {k[4:]: v for k, v in arrays.items() if k.startswith("env/")})
        for name in TRIAL_ARRAYS:
            setattr(self, name, np.array(arrays[f"trial/{name}"], copy=True))
        for name in TRIAL_BUFFERS:
            saved, buf = arrays[f"trial/{name}"], getattr(self, name)
            buf[...] = 0
            buf[:, :saved.shape[1]] = saved
        self.memory_state = {k[len("trial/memory/"):]: torch.from_numpy(np.array(v, copy=True))
                             for k, v in arrays.items() if k.startswith("trial/memory/")}
        self.reports_success = bool(meta["reports_success"])

    def restart(self) -> None:
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
        Memory.reset(self.memory_state, torch.from_numpy(np.asarray(slots, np.int64)))
        self.prev_a[slots] = -1 if self.spec.discrete else 0.0
        self.prev_r[slots] = 0.0
        self.prev_d[slots] = 0.0
        self.trial_version[slots] = self.version
        self.ep_success[slots] = False
        self.trial_successes[slots] = 0
        self.last_success[slots] = False


# What RL2Sampler.get_state keeps of the trials in flight: per-slot arrays, and the per-step
# buffers [slots, max_len, ...] (only up to the longest trial's step).
TRIAL_ARRAYS = ("t", "episodes", "trial_version", "active", "obs", "prev_a", "prev_r", "prev_d",
                "ep_success", "trial_successes", "last_success")
TRIAL_BUFFERS = ("obs_buf", "act_buf", "rew_buf", "done_buf", "logp_buf")


class Trials(NamedTuple):
    """Whole trials padded to one length T: obs [B, T, obs_dim], actions [B, T] (discrete,
    int64) or [B, T, act_dim], rewards / logp [B, T] float32, dones [B, T] (an episode ended at
    this step), mask [B, T] (real steps); per trial its task id and the oldest policy version
    it was sampled with."""

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    logp: np.ndarray
    mask: np.ndarray
    task_ids: np.ndarray
    trial_versions: np.ndarray

    @property
    def policy_version(self) -> int:
        """The oldest version any trial of the batch was sampled with."""
        return int(self.trial_versions.min()) if len(self.trial_versions) else -1  # -1: no trial


def pad_trials(rows: list[tuple], spec: SpaceSpec) -> Trials:
    """Whole trials (obs, actions, rewards, dones, logp, policy version, task id) as one batch
    padded to the longest, with a `mask` of real steps."""
    n = len(rows)
    length = max((len(r[0]) for r in rows), default=1)  # none: every trial of the call was dropped
    obs = np.zeros((n, length, spec.obs_dim), np.float32)
    actions = np.zeros((n, length), np.int64) if spec.discrete else np.zeros((n, length, spec.act_dim), np.float32)
    rewards, logp = np.zeros((n, length), np.float32), np.zeros((n, length), np.float32)
    dones, mask = np.zeros((n, length), bool), np.zeros((n, length), bool)
    for i, (o, a, r, d, lp, _, _) in enumerate(rows):
        k = len(o)
        obs[i, :k], actions[i, :k], rewards[i, :k], dones[i, :k], logp[i, :k], mask[i, :k] = o, a, r, d, lp, True
    return Trials(obs, actions, rewards, dones, logp, mask, np.array([r[6] for r in rows], np.int64),
                  np.array([r[5] for r in rows], np.int64))


def concat_trials(batches: list[Trials]) -> Trials:
    """Stack trial batches of possibly different padded lengths along the trial axis."""
    length = max(b.mask.shape[1] for b in batches)

    def padded(a: np.ndarray) -> np.ndarray:
        return np.pad(a, [(0, 0), (0, length - a.shape[1])] + [(0, 0)] * (a.ndim - 2))

    steps = [np.concatenate([padded(getattr(b, k)) for b in batches]) for k in Trials._fields[:6]]
    return Trials(*steps, np.concatenate([b.task_ids for b in batches]), np.concatenate([b.trial_versions for b in batches]))
