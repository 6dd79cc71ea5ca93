"""The worker side of the MAML family: for a list of tasks, pre-update episodes, the inner
step(s) without a graph, post-update episodes with per-task parameters; all tasks batched in
one vector env (len(tasks) × episodes_per_task slots)."""

from __future__ import annotations

from typing import NamedTuple

import gymnasium as gym
import numpy as np
import torch

from metaray.core import Episodes, TaskResult, mean_episode_return
from metaray.learner.maml.adaptation import InnerLR, inner_step, stage_names, with_post_std
from metaray.learner.maml.config import MAMLConfig
from metaray.learner.maml.inner_optimizers import make_inner_optimizer
from metaray.learner.maml.returns import Stage
from metaray.learner.sampling import SamplerBase
from metaray.networks import (
    INNER_OPTIMIZER,
    GaussianMLPPolicy,
    Params,
    gaussian_log_prob,
    per_task_forward,
    policy_forward,
)
from metaray.tasks import SAMPLER_INFO_KEYS, Task, TaskFamily, make_vector_env, step_success


def make_gaussian_policy(obs_space: gym.Space, act_space: gym.Space, config: MAMLConfig) -> GaussianMLPPolicy:
    """The MAML family's policy for flat Box observations and flat Box actions."""
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise ValueError(f"MAML needs a flat Box observation space, got {obs_space}")
    if not isinstance(act_space, gym.spaces.Box) or len(act_space.shape) != 1:
        raise ValueError(f"MAML's Gaussian policy needs a flat Box action space, got {act_space}")
    post = None if config.post_std == "shared" else (
        config.init_log_std if config.init_post_log_std is None else config.init_post_log_std)
    policy = GaussianMLPPolicy(obs_space.shape[0], act_space.shape[0], list(config.hidden_sizes), config.activation,
                               config.init_log_std, config.init_output_scale, post)
    learned = make_inner_optimizer(config.inner_optimizer, {k: p.shape for k, p in policy.theta().items()},
                                   config.inner_lr, config.inner_lstm_hidden_size, config.inner_optimizer_kwargs)
    if learned is not None:  # a submodule: published and checkpointed with the policy
        policy.inner_optimizer = learned
    return policy


def inner_update(policy: GaussianMLPPolicy, config: MAMLConfig) -> InnerLR:
    """What the inner steps use: the policy's learned inner optimizer, or the config's α."""
    learned = getattr(policy, INNER_OPTIMIZER, None)
    return config.inner_lr if learned is None else learned


class Rollout(NamedTuple):
    """One stage's episodes of every task [N, E, T, ...], per-episode success (families that
    report it, else None) and the env steps taken."""

    episodes: Episodes
    success: np.ndarray | None
    env_steps: int


class MAMLSampler(SamplerBase):
    """Each stage steps the env `horizon` times with one batched policy call per env step; slot
    s runs task s // episodes_per_task and keeps only its first episode (later steps of a slot
    whose episode ended early are masked out). Actions come from a seeded torch.Generator.
    """

    def __init__(self, family: TaskFamily, config: MAMLConfig, slots: int = 1, seed: int = 0):
        """`slots` only sizes the first env (to know the spaces); `collect` takes any number of tasks."""
        super().__init__(seed)
        self.family, self.config = family, config
        probe_tasks = family.sample(max(1, slots // config.episodes_per_task), self.rng, "train")
        self.env = make_vector_env(family, probe_tasks, config.episodes_per_task, seed=int(self.rng.integers(2**31)),
                                   info_keys=SAMPLER_INFO_KEYS)
        obs_space, act_space = self.env.single_observation_space, self.env.single_action_space
        self.policy = make_gaussian_policy(obs_space, act_space, config)
        self.policy.requires_grad_(False)
        self.act_low, self.act_high = act_space.low, act_space.high
        self.horizon = family.max_episode_steps
        self.adapted_params: Params = {}  # the last collect's final adapted parameters (stacked)
        self.record_next_obs = False  # rollouts also return next_obs (adversarial imitation needs s')

    def resize_env(self, num_envs: int) -> None:
        """Rebuild the vector env with `num_envs` slots (placeholder tasks: `collect` sets its
        own) without drawing from `rng`: restoring a checkpoint sizes it as it was."""
        if self.env.num_envs != num_envs:
            per = self.config.episodes_per_task
            placeholder = self.family.sample(max(1, num_envs // per), np.random.default_rng(0), "train")
            self.env.close()
            self.env = make_vector_env(self.family, placeholder, per, seed=0, info_keys=SAMPLER_INFO_KEYS)

    def use_tasks(self, tasks: list[Task]) -> None:
        """Point the vector env's slots at `tasks` (episodes_per_task slots each), reusing the
        envs when the slot count matches (MuJoCo ones are costly to build)."""
        per = self.config.episodes_per_task
        n = len(tasks)
        if self.env.num_envs == n * per:
            for slot in range(n * per):
                self.env.set_task(slot, tasks[slot // per])
        else:
            self.env.close()
            self.env = make_vector_env(self.family, tasks, per, seed=int(self.rng.integers(2**31)), info_keys=SAMPLER_INFO_KEYS)

    def collect(self, tasks: list[Task], version: int) -> list[TaskResult]:
        """One TaskResult per task: stages inner_0..inner_{k-1}, post, each Episodes [E, T, ...];
        metrics return_pre (mean episode return of inner_0; of post when k = 0), return_post,
        and success_pre / success_post for families that report success."""
        if version != self.version:
            raise ValueError(f"collect asked for policy version {version}, this sampler holds {self.version}")
        cfg = self.config
        n = len(tasks)
        self.use_tasks(tasks)
        theta: Params = self.policy.theta()
        params = theta
        stages: dict[str, Rollout] = {}
        env_steps = 0
        update, memory = inner_update(self.policy, cfg), {}  # memory: a learned optimizer's state across steps
        with torch.no_grad():
            for j, name in enumerate(stage_names(cfg.num_inner_steps)):
                stages[name] = rollout = self.rollout(params, per_task=j > 0, num_tasks=n)
                env_steps += rollout.env_steps
                if name != "post":
                    stage = Stage.from_episodes(rollout.episodes, cfg, torch.float32, torch.device("cpu"))
                    params = inner_step(self.policy, params, stage, update, per_task=j > 0, memory=memory)
                    if j == cfg.num_inner_steps - 1:
                        params = with_post_std(params, theta)
        self.adapted_params = params
        first, post = next(iter(stages.values())), stages["post"]  # first: the unadapted θ's episodes
        results = []
        for i, task in enumerate(tasks):
            metrics = {"return_pre": mean_episode_return(first.episodes.task(i)),
                       "return_post": mean_episode_return(post.episodes.task(i))}
            if post.success is not None:  # the family reports success (Meta-World)
                metrics.update(success_pre=success_rate(first, i), success_post=success_rate(post, i))
            results.append(TaskResult(task.task_id, version, {s: r.episodes.task(i) for s, r in stages.items()},
                                      env_steps // n, cfg.episodes_per_task * len(stages), metrics))
        return results

    def rollout(self, params: Params, per_task: bool, num_tasks: int) -> Rollout:
        """One episode per slot from a fresh reset, as Episodes [N, E, T, ...].

        `per_task`: `params` is stacked [N, ...] and slot s acts with task s // E's parameters
        (one batched per-task forward per step); else one θ for every slot.
        """
        n_slots, horizon = self.env.num_envs, self.horizon
        per = n_slots // num_tasks
        obs_dim, act_dim = self.env.single_observation_space.shape[0], self.act_low.shape[0]
        obs_buf = np.zeros((n_slots, horizon, obs_dim), np.float32)
        act_buf = np.zeros((n_slots, horizon, act_dim), np.float32)
        rew_buf = np.zeros((n_slots, horizon), np.float32)
        mask_buf = np.zeros((n_slots, horizon), bool)
        logp_buf = np.zeros((n_slots, horizon), np.float32)
        next_buf = np.zeros((n_slots, horizon, obs_dim), np.float32) if self.record_next_obs else None
        noise = torch.randn((horizon, n_slots, act_dim), generator=self.torch_gen)
        alive = np.ones(n_slots, bool)
        n_alive = n_slots
        success: np.ndarray | None = None  # per slot: any step with info["success"] (families that report it)
        obs, _ = self.env.reset()
        steps = 0
        for t in range(horizon):
            obs_t = torch.from_numpy(np.asarray(obs, np.float32))
            if per_task:
                mean, log_std = per_task_forward(self.policy, params, obs_t.view(num_tasks, per, obs_dim))
                mean, log_std = mean.reshape(n_slots, act_dim), log_std.reshape(n_slots, act_dim)
            else:
                mean, log_std = policy_forward(self.policy, params, obs_t)
            action = mean + log_std.exp() * noise[t]
            logp = gaussian_log_prob(mean, log_std, action)
            action_np = action.numpy()
            everyone = n_alive == n_slots  # the common case: plain slices instead of masked writes
            if everyone:
                obs_buf[:, t], act_buf[:, t], logp_buf[:, t] = obs, action_np, logp.numpy()
            else:
                obs_buf[alive, t] = obs[alive]
                act_buf[alive, t] = action_np[alive]
                logp_buf[alive, t] = logp.numpy()[alive]
            mask_buf[:, t] = alive
            obs, reward, terminated, truncated, info = self.env.step(np.clip(action_np, self.act_low, self.act_high))
            if everyone:
                rew_buf[:, t] = reward
            else:
                rew_buf[alive, t] = reward[alive]
            steps += n_slots
            if next_buf is not None:  # s' of each step: the final observation where an episode ended
                next_obs = obs if "final_obs" not in info else np.where(info["_final_obs"][:, None], info["final_obs"], obs)
                next_buf[alive, t] = next_obs[alive]
            succeeded = step_success(info, n_slots)
            if succeeded is not None:
                success = (succeeded & alive) if success is None else success | (succeeded & alive)
            if "env_failure" in info:  # slot env rebuilt: drop the episode (all steps masked out)
                dropped = info["env_failure"] & alive
                mask_buf[dropped] = False
                self.dropped_episodes += int(dropped.sum())
                alive &= ~dropped
            alive &= ~(terminated | truncated)
            n_alive = int(alive.sum())
            if not n_alive:
                break
        shape = (num_tasks, per, horizon)
        episodes = Episodes(obs_buf.reshape(*shape, obs_dim), act_buf.reshape(*shape, act_dim), rew_buf.reshape(shape),
                            mask_buf.reshape(shape), logp_buf.reshape(shape),
                            None if next_buf is None else next_buf.reshape(*shape, obs_dim))
        return Rollout(episodes, None if success is None else success.reshape(shape[:2]), steps)


def success_rate(rollout: Rollout, task: int) -> float:
    """Share of a task's episodes in one stage with a successful step, over the episodes not dropped."""
    assert rollout.success is not None
    valid = np.asarray(rollout.episodes.mask[task]).any(-1)
    return float(rollout.success[task][valid].mean()) if valid.any() else float("nan")
