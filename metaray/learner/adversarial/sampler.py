"""The worker side of meta adversarial imitation: MAML's worker step with the reward replaced
by the adapting discriminator's, and the expert's demonstrations it adapts from."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from metaray.core import Episodes, TaskResult, mean_episode_return
from metaray.learner.adversarial.config import AdversarialConfig
from metaray.learner.adversarial.game import (
    disc_adapt,
    relabel,
    stage_logp,
    transitions,
    with_demos,
)
from metaray.learner.adversarial.networks import make_policy, split_weights
from metaray.learner.maml import (
    MAMLSampler,
    Stage,
    inner_step,
    inner_update,
    stage_names,
    with_post_std,
)
from metaray.networks import Params, load_weights
from metaray.tasks import SAMPLER_INFO_KEYS, Task, TaskFamily, make_vector_env

Demos = Episodes  # expert episodes [.., K, T, ...] with next_obs; rewards and logp are zeros (never learned from)


def expert_demos(family: TaskFamily, tasks: list[Task], count: int, noise: float, seed: int) -> tuple[Demos, np.ndarray]:
    """`count` episodes of the family's expert per task, [N, count, T, ...], and their true
    rewards [N, count, T] (for the expert's return, a metric). Demo j of a task depends only on
    (task, j, seed), not on `count`."""
    env = make_vector_env(family, tasks, count, seed=seed, info_keys=SAMPLER_INFO_KEYS)
    n_slots, horizon = env.num_envs, family.max_episode_steps
    act_space = env.single_action_space
    low, high = act_space.low, act_space.high
    slot_tasks = [task for task in tasks for _ in range(count)]
    if callable(getattr(family, "batched_expert", None)):  # one call for all slots per step
        act = family.batched_expert(slot_tasks)
    else:
        experts = [family.expert(task) for task in tasks]

        def act(obs: np.ndarray) -> np.ndarray:
            return np.stack([experts[s // count](obs[s]) for s in range(n_slots)])
    rngs = [np.random.default_rng([seed, t.task_id, 0 if t.split == "train" else 1, j]) for t in tasks for j in range(count)]
    obs_dim, act_dim = env.single_observation_space.shape[0], act_space.shape[0]
    obs_buf, next_buf = np.zeros((n_slots, horizon, obs_dim), np.float32), np.zeros((n_slots, horizon, obs_dim), np.float32)
    act_buf, mask = np.zeros((n_slots, horizon, act_dim), np.float32), np.zeros((n_slots, horizon), bool)
    rewards = np.zeros((n_slots, horizon), np.float32)
    alive = np.ones(n_slots, bool)
    obs, _ = env.reset()
    for t in range(horizon):
        action = np.asarray(act(obs), np.float32)
        gauss = np.stack([r.standard_normal(act_dim) for r in rngs])
        action = np.clip(action + noise * (high - low) / 2 * gauss, low, high).astype(np.float32)
        obs_buf[alive, t], act_buf[alive, t], mask[:, t] = obs[alive], action[alive], alive
        obs, reward, terminated, truncated, info = env.step(action)
        next_obs = obs if "final_obs" not in info else np.where(info["_final_obs"][:, None], info["final_obs"], obs)
        next_buf[alive, t], rewards[alive, t] = next_obs[alive], reward[alive]
        alive &= ~(terminated | truncated)
        if not alive.any():
            break
    env.close()

    def per_task(a: np.ndarray) -> np.ndarray:
        return a.reshape(len(tasks), count, *a.shape[1:])
    zeros = per_task(np.zeros((n_slots, horizon), np.float32))
    return Demos(per_task(obs_buf), per_task(act_buf), zeros, per_task(mask), zeros, per_task(next_buf)), per_task(rewards)


class AdversarialSampler(MAMLSampler):
    """MAML's worker step with the reward replaced by the adapting discriminator's (see the package)."""

    def __init__(self, family: TaskFamily, config: AdversarialConfig, slots: int = 1, seed: int = 0):
        if not callable(getattr(family, "expert", None)):
            raise ValueError(f"adversarial imitation needs demonstrations: task family {family.name!r} has no expert(task)")
        super().__init__(family, config, slots, seed)
        self.record_next_obs = True
        space_o, space_a = self.env.single_observation_space, self.env.single_action_space
        self.disc = make_policy(space_o, space_a, config).discriminator
        self.disc.requires_grad_(False)
        self.demo_seed = int(seed)
        self.demo_cache: OrderedDict[tuple[str, int], tuple[Demos, float]] = OrderedDict()
        self.adapted_disc: Params = {}

    def set_weights(self, version: int, weights: dict[str, np.ndarray]) -> None:
        gen, disc = split_weights(weights)
        load_weights(self.policy, gen)  # with the generator's learned inner optimizer, if any
        load_weights(self.disc, disc)
        self.version = version

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """MAML's state and the seed the demos are drawn with: a resumed run's worker is built with
        another seed (the runner seeds workers by the iteration they start at), and without this its
        demos, hence every adaptation, differed from the uninterrupted run's."""
        meta, arrays = super().get_state()
        return {**meta, "demo_seed": self.demo_seed}, arrays

    def set_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        super().set_state(meta, arrays)
        if "demo_seed" in meta and int(meta["demo_seed"]) != self.demo_seed:  # older checkpoints lack it
            self.demo_seed = int(meta["demo_seed"])
            self.demo_cache.clear()

    def demos(self, tasks: list[Task]) -> tuple[Demos, Demos, np.ndarray]:
        """Support and query demos of each task, [N, K, T, ...] (cached per task), and each
        task's own expert return (from its query demos: the same whatever K)."""
        cfg = self.config
        missing = [t for t in tasks if (t.split, t.task_id) not in self.demo_cache]
        if missing:
            count = cfg.num_demos + cfg.num_query_demos
            made, rewards = expert_demos(self.family, missing, count, cfg.demo_noise, self.demo_seed)
            for i, task in enumerate(missing):
                expert_return = float(rewards[i, : cfg.num_query_demos].sum(-1).mean())
                self.demo_cache[(task.split, task.task_id)] = (made.task(i), expert_return)
                while len(self.demo_cache) > cfg.demo_cache_size:
                    self.demo_cache.popitem(last=False)
        own = [self.demo_cache[(t.split, t.task_id)] for t in tasks]
        rows = own[1:] + own[:1] if cfg.wrong_demos and len(own) > 1 else own  # the control: a neighbour's demos
        q = cfg.num_query_demos  # demos [0, q) are the query set, [q, q + K) the support set
        support = Demos(*(np.stack([d[k][q:] for d, _ in rows]) for k in range(len(Demos._fields))))
        query = Demos(*(np.stack([d[k][:q] for d, _ in rows]) for k in range(len(Demos._fields))))
        return support, query, np.array([r for _, r in own])

    def collect(self, tasks: list[Task], version: int) -> list[TaskResult]:
        """One TaskResult per task: stages with rewards = r̂ and next_obs; extras "support" and
        "query" (the demos) and per stage "demo_logp/{stage}" / "disc_logp/{stage}" (AIRL:
        log π_θj of the executed actions of the stage's demos / episodes; GAIL: zeros).
        metrics: the true return_pre / return_post and the expert's return."""
        if version != self.version:
            raise ValueError(f"collect asked for policy version {version}, this sampler holds {self.version}")
        cfg = self.config
        n = len(tasks)
        self.use_tasks(tasks)
        support, query, expert_return = self.demos(tasks)
        theta: Params = self.policy.theta()
        meta_theta = theta
        update = inner_update(self.policy, cfg) if cfg.adapt_generator else 0.0
        memory: dict[str, torch.Tensor] = {}  # a learned inner optimizer's state across the steps
        phi: Params = dict(self.disc.named_parameters())
        stages: dict[str, Episodes] = {}
        extras: dict[str, np.ndarray] = {}
        true_returns: dict[str, list[float]] = {}
        env_steps = 0
        low, high = self.disc.act_low, self.disc.act_high
        with torch.no_grad():
            for j, name in enumerate(stage_names(cfg.num_inner_steps)):
                rollout = self.rollout(theta, per_task=j > 0, num_tasks=n)
                episodes, env_steps = rollout.episodes, env_steps + rollout.env_steps
                true_returns[name] = [mean_episode_return(episodes.task(i)) for i in range(n)]
                demo = query if name == "post" else support
                if self.disc.kind == "airl":  # log π(executed a|s) enters AIRL's D; GAIL's ignores it
                    demo_logp = stage_logp(self.policy, theta, torch.from_numpy(demo.obs), torch.from_numpy(demo.actions),
                                           j > 0, low, high)
                    disc_logp = stage_logp(self.policy, theta, torch.from_numpy(episodes.obs),
                                           torch.from_numpy(episodes.actions), j > 0, low, high)
                else:
                    demo_logp, disc_logp = torch.zeros(demo.mask.shape), torch.zeros(episodes.mask.shape)
                policy_data = transitions(episodes, disc_logp)
                # inner stages adapt φ; the post stage refits φ_i^k on the adapted policy's episodes
                # (the meta-objective's max over φ) only to relabel them, keeping φ_i^k itself
                steps = cfg.disc_inner_steps if cfg.adapt_discriminator or name == "post" else 0
                labeller = disc_adapt(self.disc, phi, transitions(demo, demo_logp), policy_data, cfg.disc_inner_lr,
                                      steps, stacked=j > 0)
                if name != "post":
                    phi = labeller
                episodes = episodes._replace(rewards=relabel(self.disc, labeller, policy_data, cfg.disc_reward).numpy())
                extras[f"demo_logp/{name}"], extras[f"disc_logp/{name}"] = demo_logp.numpy(), disc_logp.numpy()
                stages[name] = episodes
                if name != "post":
                    stage = Stage.from_episodes(episodes, cfg, torch.float32, torch.device("cpu"))
                    if cfg.demo_advantage > 0:
                        stage = with_demos(stage, support, cfg.demo_advantage)
                    theta = inner_step(self.policy, theta, stage, update, per_task=j > 0, memory=memory)
                    if j == cfg.num_inner_steps - 1:  # the post stage's policy: σ = post_log_std if learned
                        theta = with_post_std(theta, meta_theta)
        self.adapted_params, self.adapted_disc = theta, phi
        return [
            TaskResult(task.task_id, version, {s: e.task(i) for s, e in stages.items()}, env_steps // n,
                       cfg.episodes_per_task * len(stages),
                       {"return_pre": true_returns["inner_0"][i], "return_post": true_returns["post"][i],
                        "expert_return": float(expert_return[i])},
                       {"support": support.task(i), "query": query.task(i), **{k: v[i] for k, v in extras.items()}})
            for i, task in enumerate(tasks)
        ]
