"""The PEARL worker side: rounds of episodes per task, z from the prior and then from the
posterior over the task's own context, all slots stepped together (one batched actor forward
per env step, one batched encoder forward when slots start an episode).

A round (the stream's 'trial') follows the paper's data collection for one task: `prior_episodes`
with z ~ N(0, I) (resampled each episode; they become the task's context), `posterior_episodes`
and `extra_posterior_episodes` with z ~ q(z | c), c drawn (with replacement, `context_batch`)
from the round's context transitions and redrawn each episode. Evaluation rounds follow the
paper's test protocol instead: z from the prior for the first episode, then from the posterior
of everything the round has seen, updated after each episode.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from metaray.core import DROPPED_TRIALS_PER_SLOT_BEFORE_RETURN, SampleInfo
from metaray.learner.pearl.config import PEARLConfig
from metaray.learner.pearl.networks import PEARLAgent, context_rows, pearl_spec
from metaray.learner.sampling import SamplerBase
from metaray.tasks import SAMPLER_INFO_KEYS, Task, TaskFamily, make_vector_env, step_success


def train_task_set(family: TaskFamily, config: PEARLConfig) -> list[Task]:
    """The fixed train tasks (each gets its own replay buffers), the same for every worker: the
    family's own benchmark set (`train_tasks()`, e.g. Meta-World's 50 goals of ML1) when it has
    one, its first `num_train_tasks`; else `num_train_tasks` drawn with `task_set_seed`."""
    own = getattr(family, "train_tasks", None)
    if callable(own):
        return list(own())[: config.num_train_tasks]
    return family.sample(config.num_train_tasks, np.random.default_rng(config.task_set_seed), "train")


class Rounds(NamedTuple):
    """Whole rounds as flat transitions [N, ...] (`round_index` says whose), and per round [R]
    its task id, the oldest policy version it used and its episodes' returns [R, E]."""

    obs: np.ndarray
    actions: np.ndarray  # normalised to [-1, 1] (the actor's u; the env got to_env(u))
    rewards: np.ndarray
    next_obs: np.ndarray
    terminals: np.ndarray  # the episode ended by the task (not by the time limit): no bootstrap
    dones: np.ndarray  # the episode ended at this step (terminal or time limit)
    to_context: np.ndarray  # the transition joins the task's context buffer
    round_index: np.ndarray
    task_ids: np.ndarray
    round_versions: np.ndarray
    episode_returns: np.ndarray

    @property
    def policy_version(self) -> int:
        return int(self.round_versions.min()) if len(self.round_versions) else -1


FLAT = 7  # Rounds' per-transition fields come first


def concat_rounds(batches: list[Rounds]) -> Rounds:
    """Several batches of rounds as one (round indices renumbered)."""
    offsets = np.cumsum([0] + [len(b.task_ids) for b in batches[:-1]])
    flat = [np.concatenate([getattr(b, k) for b in batches]) for k in Rounds._fields[:FLAT]]
    index = np.concatenate([b.round_index + o for b, o in zip(batches, offsets, strict=True)])
    return Rounds(*flat, index, *(np.concatenate([getattr(b, k) for b in batches]) for k in Rounds._fields[FLAT + 1:]))


class PEARLSampler(SamplerBase):
    """Runs `slots` rounds side by side. With `tasks`, each slot runs one round of its task and
    stops (evaluation, when `evaluation` is set, or an actor outside Ray); otherwise finished
    slots start a round on a train task drawn uniformly from the fixed set."""

    def __init__(self, family: TaskFamily, config: PEARLConfig, slots: int, seed: int,
                 tasks: list[Task] | None = None, evaluation: bool = False):
        super().__init__(seed)
        self.family, self.config, self.evaluation = family, config, evaluation
        self.refill = tasks is None
        self.task_set = train_task_set(family, config) if tasks is None else list(tasks)
        if tasks is None:
            tasks = [self.task_set[i] for i in self.rng.integers(len(self.task_set), size=slots)]
        self.slots = len(tasks)
        self.env = make_vector_env(family, tasks, seed=int(self.rng.integers(2**31)), info_keys=SAMPLER_INFO_KEYS)
        self.spec = pearl_spec(self.env.single_observation_space, self.env.single_action_space, config)
        self.agent = PEARLAgent(self.spec, config)
        self.agent.requires_grad_(False)
        self.policy = self.agent
        self.horizon = family.max_episode_steps
        if evaluation:
            self.episodes_per_round = config.eval_adaptation_episodes + config.eval_episodes
        else:
            self.episodes_per_round = config.episodes_per_round
        self.round_len = self.episodes_per_round * self.horizon
        self._no_failure = np.zeros(self.slots, bool)
        self._allocate()
        obs, _ = self.env.reset()
        self.obs = obs.astype(np.float32)
        self._start_rounds(np.arange(self.slots), same_task=True)

    # ---------------------------------------------------------------- round bookkeeping

    def _allocate(self) -> None:
        s, n, spec = self.slots, self.round_len, self.spec
        self.obs_buf = np.zeros((s, n, spec.obs_dim), np.float32)
        self.act_buf = np.zeros((s, n, spec.act_dim), np.float32)
        self.rew_buf = np.zeros((s, n), np.float32)
        self.next_buf = np.zeros((s, n, spec.obs_dim), np.float32)
        self.term_buf = np.zeros((s, n), bool)
        self.done_buf = np.zeros((s, n), bool)
        self.ctx_buf = np.zeros((s, n), bool)
        self.t = np.zeros(s, np.int64)
        self.episode = np.zeros(s, np.int64)
        self.ep_return = np.zeros((s, self.episodes_per_round), np.float64)
        self.round_version = np.full(s, self.version, np.int64)
        self.active = np.ones(s, bool)
        self.z = np.zeros((s, spec.latent_size), np.float32)
        self.ep_success = np.zeros(s, bool)
        self.successes = np.zeros((s, self.episodes_per_round), bool)
        self.reports_success = False
        self.last_successes: list[np.ndarray] = []
        self._env_steps = self._episodes = 0

    def _context_episode(self, episode: np.ndarray) -> np.ndarray:
        """Whether transitions of this episode (index within the round) join the context."""
        if self.evaluation:
            return np.ones_like(episode, bool)
        return episode < self.config.prior_episodes + self.config.posterior_episodes

    def _prior_episode(self, episode: np.ndarray) -> np.ndarray:
        """Whether this episode acts with z from the prior."""
        if self.evaluation:
            return episode == 0
        return episode < self.config.prior_episodes

    def _draw_z(self, slots: np.ndarray) -> None:
        """z for the episode these slots start: the prior's, or a draw from the posterior."""
        if not slots.size:
            return
        latent = self.spec.latent_size
        prior = self._prior_episode(self.episode[slots])
        mean = np.zeros((len(slots), latent), np.float32)
        var = np.ones((len(slots), latent), np.float32)
        post = slots[~prior]
        if post.size:
            mean[~prior], var[~prior] = self._posterior(post)
        noise = torch.randn((len(slots), latent), generator=self.torch_gen).numpy()
        self.z[slots] = mean + np.sqrt(var) * noise

    def _posterior(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """q(z | c) for these slots: c is every context transition of the round so far
        (evaluation) or `context_batch` of them drawn with replacement (training)."""
        contexts = []
        for slot in slots:
            rows = np.flatnonzero(self.ctx_buf[slot, : int(self.t[slot])])
            if not self.evaluation:
                rows = rows[self.rng.integers(0, len(rows), size=self.config.context_batch)]
            contexts.append(context_rows(self.obs_buf[slot, rows], self.act_buf[slot, rows], self.rew_buf[slot, rows],
                                         self.next_buf[slot, rows], self.config.use_next_obs_in_context))
        with torch.no_grad():
            if not self.evaluation:  # equal sizes: one encoder call for all slots
                mean, var = self.agent.encoder.posterior(torch.from_numpy(np.stack(contexts)))
                return mean.numpy(), var.numpy()
            parts = [self.agent.encoder.posterior(torch.from_numpy(c)) for c in contexts]
        return np.stack([m.numpy() for m, _ in parts]), np.stack([v.numpy() for _, v in parts])

    def _start_rounds(self, slots: np.ndarray, same_task: bool = False) -> None:
        if not same_task:
            for slot in slots:
                self.env.set_task(int(slot), self.task_set[int(self.rng.integers(len(self.task_set)))])
            mask = np.zeros(self.slots, bool)
            mask[slots] = True
            obs, _ = self.env.reset(options={"reset_mask": mask})
            self.obs = np.where(mask[:, None], obs, self.obs).astype(np.float32)
        self.t[slots] = 0
        self.episode[slots] = 0
        self.ep_return[slots] = 0.0
        self.round_version[slots] = self.version
        self.ep_success[slots] = False
        self.successes[slots] = False
        self._draw_z(np.asarray(slots))

    # ---------------------------------------------------------------- sampling

    def sample(self, min_trials: int) -> tuple[Rounds, SampleInfo]:
        """Step until at least `min_trials` rounds finish; return them as flat transitions."""
        done: list[tuple[Any, ...]] = []
        self._env_steps = self._episodes = 0
        self.round_version[self.t == 0] = self.version
        # training returns early from an env failing at every step; evaluation needs every task's round
        give_up = self.dropped_episodes + DROPPED_TRIALS_PER_SLOT_BEFORE_RETURN * self.slots if self.refill else float("inf")
        while len(done) < min_trials and self.active.any() and self.dropped_episodes < give_up:
            done.extend(self.step())
        batch = make_rounds(done, self.spec.obs_dim, self.spec.act_dim, self.episodes_per_round)
        self.last_successes = [row[-1] for row in done] if self.reports_success else []
        # training reports the episodes that act with the posterior, for the return and the success alike
        first = 0 if self.evaluation else self.config.prior_episodes
        post = batch.episode_returns[:, first:]
        mean_return = float(post.mean()) if post.size else float("nan")
        post_successes = [s[first:] for s in self.last_successes if s[first:].size]
        success = float(np.mean([s.mean() for s in post_successes])) if post_successes else None
        return batch, SampleInfo(batch.policy_version, len(done), self._env_steps, self._episodes, mean_return, success)

    def step(self) -> list[tuple[Any, ...]]:
        """One env step of every slot; returns the rounds it finished."""
        rows = np.arange(self.slots)
        with torch.no_grad():
            noise = torch.randn((self.slots, self.spec.act_dim), generator=self.torch_gen)
            deterministic = self.evaluation and self.config.eval_deterministic
            u, _, _, _ = self.agent.actor(torch.from_numpy(self.obs), torch.from_numpy(self.z), noise,
                                          deterministic=deterministic)
            env_action = self.agent.actor.to_env(u).numpy()
        action = u.numpy()  # what the replay and the context hold: normalised actions
        next_obs, reward, terminated, truncated, info = self.env.step(env_action)
        next_obs = next_obs.astype(np.float32)
        failed = info.get("env_failure", self._no_failure)
        ended = (terminated | truncated) & ~failed
        real_next = next_obs
        if "final_obs" in info:
            real_next = np.where(info["_final_obs"][:, None], np.asarray(info["final_obs"], np.float32), next_obs)
        t = np.minimum(self.t, self.round_len - 1)  # finished evaluation slots step on, unrecorded
        self.obs_buf[rows, t] = self.obs
        self.act_buf[rows, t] = action
        self.rew_buf[rows, t] = reward
        self.next_buf[rows, t] = real_next
        self.term_buf[rows, t] = terminated & ~failed
        self.done_buf[rows, t] = ended
        self.ctx_buf[rows, t] = self._context_episode(self.episode)
        ep = np.minimum(self.episode, self.episodes_per_round - 1)
        self.ep_return[rows, ep] += np.where(self.active, reward, 0.0)
        succeeded = step_success(info, self.slots)
        if succeeded is not None:
            self.reports_success = True
            self.ep_success |= succeeded
            self.successes[rows[ended], ep[ended]] = self.ep_success[ended]
            self.ep_success[ended | failed] = False
        self.t += 1
        self.episode += ended
        self._env_steps += int(self.active.sum())
        self._episodes += int((ended & self.active).sum())
        self.obs = next_obs

        finished = np.flatnonzero(self.active & (self.episode >= self.episodes_per_round) & ~failed)
        done = [self._take_round(slot, int(self.t[slot])) for slot in finished]
        if finished.size:
            if self.refill:
                self._start_rounds(finished)
            else:
                self.active[finished] = False
        dropped = np.flatnonzero(failed & self.active)
        if dropped.size:  # the slot's env was rebuilt: its round is dropped (counted) and restarted
            self.dropped_episodes += int(dropped.size)
            self._start_rounds(dropped, same_task=not self.refill)
        # slots going on to their round's next episode: a new z (finished and dropped slots got theirs)
        self._draw_z(np.flatnonzero(ended & self.active & (self.episode < self.episodes_per_round)))
        return done

    def _take_round(self, slot: int, n: int) -> tuple[Any, ...]:
        return (self.obs_buf[slot, :n].copy(), self.act_buf[slot, :n].copy(), self.rew_buf[slot, :n].copy(),
                self.next_buf[slot, :n].copy(), self.term_buf[slot, :n].copy(), self.done_buf[slot, :n].copy(),
                self.ctx_buf[slot, :n].copy(),
                self.env.tasks[slot].task_id, int(self.round_version[slot]), self.ep_return[slot].copy(),
                self.successes[slot].copy())

    def restart(self) -> None:
        """Drop every partial round; each slot starts a new one."""
        self.active[:] = True
        self._start_rounds(np.arange(self.slots), same_task=not self.refill)


def make_rounds(rows: list[tuple[Any, ...]], obs_dim: int, act_dim: int, episodes: int) -> Rounds:
    """Rounds (obs, actions, rewards, next_obs, terminals, dones, to_context, task id, version,
    episode returns[, successes]) as one flat batch."""
    if not rows:
        f32 = np.float32
        return Rounds(np.zeros((0, obs_dim), f32), np.zeros((0, act_dim), f32), np.zeros(0, f32),
                      np.zeros((0, obs_dim), f32), np.zeros(0, bool), np.zeros(0, bool), np.zeros(0, bool), np.zeros(0, np.int64),
                      np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, episodes)))
    flat = [np.concatenate([r[k] for r in rows]) for k in range(FLAT)]
    index = np.concatenate([np.full(len(r[2]), i, np.int64) for i, r in enumerate(rows)])
    return Rounds(*flat, index, np.array([r[FLAT] for r in rows], np.int64), np.array([r[FLAT + 1] for r in rows], np.int64),
                  np.stack([np.asarray(r[FLAT + 2], np.float64) for r in rows]))
