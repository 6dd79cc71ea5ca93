"""Meta adversarial imitation: a generator and a discriminator both adapted per task from K
expert demonstrations, never from the task's reward (Meta-AIRL, Wang et al. 2021; PEMIRL; SMILe).

Per task i, from the meta-parameters θ (generator = Gaussian policy) and φ (discriminator):
- the worker collects N episodes with π_θj; the discriminator takes `disc_inner_steps` full-batch
  gradient steps on the game value V on the task's *support* demos vs those episodes,
  φ_{j+1} = φ_j + β ∇φ V; the episodes are relabelled with the reward r̂ = log D − log(1 − D)
  of φ_{j+1} (or r̂ = log D ≤ 0 with `disc_reward: log-d`: a cost per step, so ending the
  episode early pays, which suits tasks that end at their goal; the point-nav config's choice);
  the generator takes MAML's inner policy-gradient step (GAE, linear baseline) on r̂ (with
  `demo_advantage` c > 0 the support demos join that step as episodes of advantage c: a
  behaviour-cloning term beside the r̂ gradient, so adaptation also uses the demos' actions;
  `query_demo_advantage` adds the query demos to the outer objective the same way);
  with MAML's `post_std: learned` the adapted generator acts with its own meta-learned σ
  (the point-nav config's choice: the pre-update σ explores, the adapted one exploits);
- after k such steps come episodes of the adapted π_θk (the post stage); the task's *query* demos
  are paired with them for the meta-objective min_θ max_φ Σ_i V(θ_i^k, φ_i^k). The generator's
  reward on the post episodes comes from φ_i^k refitted on them (the same steps on the query
  demos vs the post episodes): the inner max over φ, a best response to θ_i^k. Relabelling
  them with φ_i^k itself, which never saw θ_i^k's states, lets the meta-step steer the adapted
  policy to wherever φ_i^k extrapolates high, and that measured worse than no adaptation.

Discriminators: `airl`: f_φ(s,a,s') = g_φ(s,a) + γ h_φ(s') − h_φ(s), D = σ(f_φ − log π_θ(a|s)),
so r̂ = f_φ − log π_θ, with log π the likelihood of the executed (clipped) action; `gail` (the
default, measured better on point-nav): D = σ(d_φ(·)). `disc_input: state` (default) makes the
reward part a function of the next state only, g(s') / d(s') (AIRL's state-only reward, Fu et
al. 2018): with actions as input the discriminator separates the policy's clipped bang-bang
actions from the expert's by their shape alone, for every task alike, and learns nothing about
the task. V(θ,φ) = E_demos[log D] + E_policy[log(1 − D)]; the code minimises −V (softplus terms).

The meta-update (learner): θ takes MAML's outer step (`outer`: trpo / ppo-clip / reptile,
`first_order` as in MAML) on the post-stage surrogate at θ_i^k, with the r̂ advantages; this is
exactly `maml.MAMLLearner` fed relabelled episodes. φ is recomputed per task from the support
demos and inner episodes (the same full-batch steps as the worker) and updated by Adam on the
mean query gradient −∇V(θ_i^k, φ_i^k): at φ_i^k (`disc_outer: first-order`), through the inner
steps (`second-order`), or φ ← φ + ε mean_i(φ_i^k − φ) (`reptile`). With `learn_inner_lr`
(Meta-SGD, Li et al. 2017) the generator's inner step size is one α per parameter entry, kept as
log α in the agent (published and checkpointed with it) and moved by Adam along the gradient of
the post-stage policy-gradient loss at θ_old: ∂L/∂α = −g_inner ⊙ ∇θ′L, no second derivatives.

The learner never sees the true reward: workers keep it for metrics only (`METRICS_ONLY`, which
the rollout worker strips from the learner's batch); a test replaces it with noise and checks
that the update does not change.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from functools import partial
from typing import Any, Literal, NamedTuple

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch import nn
from torch.func import functional_call

from metaray.learner import maml
from metaray.learner.maml import (
    FIELDS,
    GaussianMLPPolicy,
    MAMLConfig,
    MAMLLearner,
    MAMLSampler,
    Params,
    Stage,
    TaskResult,
    inner_step,
    load_weights,
    mean_episode_return,
    per_task_forward,
    policy_forward,
    stage_names,
)
from metaray.learner.optim_state import load_optimizer_tensors, optimizer_tensors
from metaray.tasks import SAMPLER_INFO_KEYS, Task, TaskFamily, make_vector_env

# Result keys computed from the true reward: metrics and evaluation only, never learner input.
METRICS_ONLY = ("return_pre", "return_post", "expert_return", "success_pre", "success_post")
DEMO_FIELDS = ("obs", "actions", "next_obs", "mask")


class AdversarialConfig(MAMLConfig):
    """MAML's generator settings (outer step, inner lr, episodes, policy) plus the discriminator's
    and the demonstrations'. Defaults: point-nav scale."""

    num_inner_steps: int = Field(1, ge=1, description="Inner steps (each: D steps on the support demos vs fresh episodes, then a generator policy-gradient step on r̂).")
    discriminator: Literal["airl", "gail"] = Field("gail", description="'airl': f = g + γh(s') − h(s), D = σ(f − log π(executed a|s)); 'gail': D = σ(d).")
    disc_input: Literal["state", "state-action"] = Field("state", description="What the reward part sees: 'state' g(s') (AIRL's state-only reward, Fu et al. 2018; GAIL: d(s')), or 'state-action' g(s,a) / d(s,a) on the executed (clipped) action.")
    disc_hidden_sizes: list[PositiveInt] = Field(default_factory=lambda: [32, 32], min_length=1, description="Hidden widths of the discriminator's MLPs (g and h, or d); tanh.")
    disc_inner_lr: float = Field(0.5, gt=0, description="Discriminator inner step size β (full-batch gradient steps on −V per task).")
    disc_inner_steps: int = Field(50, ge=1, description="Discriminator gradient steps per inner step (and for the post-stage refit).")
    disc_outer: Literal["first-order", "second-order", "reptile"] = Field("first-order", description="Discriminator meta-update: query gradient at φ_i^k ('first-order'), through the inner steps ('second-order'), or Reptile.")
    disc_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the discriminator meta-update (first/second-order).")
    disc_reptile_lr: float = Field(0.1, gt=0, description="disc_outer=reptile: φ ← φ + ε mean_i(φ_i^k − φ).")
    num_demos: int = Field(4, ge=1, description="K: support demonstrations per task (what adaptation sees).")
    num_query_demos: int = Field(4, ge=1, description="Query demonstrations per task (the meta-objective's expert data).")
    demo_noise: float = Field(0.01, ge=0, description="Std of the Gaussian noise added to the expert's actions (relative to half the action range).")
    demo_cache_size: int = Field(4096, ge=1, description="Tasks whose demonstrations a worker keeps.")
    adapt_generator: bool = Field(True, description="Ablation switch: false keeps θ fixed in the inner loop (only D adapts).")
    adapt_discriminator: bool = Field(True, description="Ablation switch: false keeps φ fixed in the inner loop (only G adapts); the post-stage refit, the meta-objective's training signal, still runs.")
    demo_advantage: float = Field(0.0, ge=0, description="c > 0: the support demos join each inner policy-gradient step as extra episodes with advantage c at every step (a behaviour-cloning term c·∇log π(a_demo|s_demo) beside the r̂ policy gradient, whose advantages are normalised); 0: the pure r̂ step of Meta-AIRL.")
    query_demo_advantage: float = Field(0.0, ge=0, description="c_q > 0: the query demos join the post stage as episodes of advantage c_q, so the meta-objective gains a behaviour-cloning term of the adapted policies, c_q·∇θ log π_θ'_i(a_demo|s_demo) (a Meta-BC term beside the adversarial one; ratio 1 at the old θ'_i, inside TRPO's KL region); 0: the pure game value of Meta-AIRL.")
    disc_reward: Literal["logit", "log-d"] = Field("logit", description="The generator's reward from D: 'logit' r̂ = log D − log(1 − D) (AIRL's, no sign bias); 'log-d' r̂ = log D ≤ 0, a cost at every step that ending the episode stops (Kostrikov et al. 2019's termination bias), which suits tasks that end at their goal.")
    learn_inner_lr: bool = Field(False, description="Meta-SGD (Li et al. 2017): the generator's inner step size becomes one α per parameter entry, initialised to inner_lr and meta-learned (log α, Adam at inner_lr_lr) on the same post-stage objective as θ; published and checkpointed with the agent.")
    inner_lr_lr: float = Field(0.01, gt=0, description="learn_inner_lr: Adam learning rate of log α.")
    wrong_demos: bool = Field(False, description="Control: each task gets another task's demos (task i uses task i+1's of the same meta-batch); scores should fall.")


# --------------------------------------------------------------------------------------------
# Networks


def mlp(inputs: int, hidden: list[int], outputs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(inputs, width), nn.Tanh()]
        inputs = width
    return nn.Sequential(*layers, nn.Linear(inputs, outputs))


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
    generator = maml.make_policy(obs_space, act_space, config)
    disc = Discriminator(obs_space.shape[0], act_space.shape[0], list(config.disc_hidden_sizes),
                         config.discriminator, config.gamma, act_space.low, act_space.high,
                         state_only=config.disc_input == "state")
    return AdversarialAgent(generator, disc, config.inner_lr if config.learn_inner_lr else None)


def split_weights(weights: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """An agent state dict -> (generator's, discriminator's, log α's keyed by lr_key; {} without Meta-SGD)."""
    def part(prefix: str) -> dict[str, Any]:
        return {k.split(".", 1)[1]: v for k, v in weights.items() if k.startswith(prefix + ".")}
    return part("generator"), part("discriminator"), part("inner_log_lr")


# --------------------------------------------------------------------------------------------
# The game value (shared by worker and learner). Batches are one task's [E, T, ...] tensors.


class Transitions(NamedTuple):
    """Steps (s, a, s') of demos or policy episodes, with the policy's log π(a|s) at them."""

    obs: torch.Tensor
    actions: torch.Tensor
    next_obs: torch.Tensor
    mask: torch.Tensor
    logp: torch.Tensor


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def disc_logits(disc: Discriminator, params: Params, batch: Transitions) -> torch.Tensor:
    """log D − log(1 − D) at each step: f − log π (AIRL) or d (GAIL); also the reward r̂."""
    f = functional_call(disc, params, (batch.obs, batch.actions, batch.next_obs))
    return f - batch.logp if disc.kind == "airl" else f


def disc_loss(disc: Discriminator, params: Params, demos: Transitions, policy: Transitions) -> torch.Tensor:
    """−V = −E_demos[log D] − E_policy[log(1 − D)] over valid steps."""
    return (masked_mean(F.softplus(-disc_logits(disc, params, demos)), demos.mask)
            + masked_mean(F.softplus(disc_logits(disc, params, policy)), policy.mask))


def disc_adapt(disc: Discriminator, params: Params, demos: Transitions, policy: Transitions,
               lr: float, steps: int, stacked: bool) -> Params:
    """φ_i ← φ_i − β ∇(−V) `steps` times for all tasks at once (vmap over the task axis).
    Differentiable w.r.t. `params` under an outer graph (second-order)."""
    grad_fn = torch.func.grad(partial(disc_loss, disc))
    if steps == 0 and not stacked:  # no adaptation (ablation): every task keeps φ
        n = demos.obs.shape[0]
        return {k: p.expand(n, *p.shape) for k, p in params.items()}
    for _ in range(steps):
        grads = torch.vmap(grad_fn, in_dims=(0 if stacked else None, 0, 0))(params, demos, policy)
        params = {k: p - lr * grads[k] for k, p in params.items()}
        stacked = True
    return params


def with_demos(stage: Stage, demos: dict[str, Any], advantage: float) -> Stage:
    """The stage plus task i's demos as K more episodes with advantage c at every valid step, so
    its policy gradient gains c·∇log π(a_demo|s_demo). Inner stages get the support demos
    (adaptation uses the demos' actions directly, not only through D's reward); the post stage
    gets the query demos with `query_demo_advantage`. Pure stage arithmetic, so the worker, the
    learner and MAML's closed-form curvature treat them like any episode. Their logp (a
    behaviour log-prob, read only for post stages) is 0; the learner replaces it there."""
    like = stage.obs
    obs, actions = (torch.as_tensor(np.asarray(demos[f]), device=like.device).to(like.dtype) for f in ("obs", "actions"))
    mask = torch.as_tensor(np.asarray(demos["mask"]), device=like.device).to(like.dtype)
    zeros = torch.zeros_like(mask)
    return Stage(torch.cat([stage.obs, obs], 1), torch.cat([stage.actions, actions], 1),
                 torch.cat([stage.rewards, zeros], 1), torch.cat([stage.mask, mask], 1),
                 torch.cat([stage.logp, zeros], 1), torch.cat([stage.advantages, advantage * mask], 1))


def relabel(disc: Discriminator, params: Params, policy: Transitions, kind: Literal["logit", "log-d"] = "logit") -> torch.Tensor:
    """r̂ per step of every task's episodes [N, E, T] with that task's φ (stacked), 0 on padding:
    the logit log D − log(1 − D), or log D = −softplus(−logit) (`disc_reward`)."""
    logit = torch.vmap(partial(disc_logits, disc))(params, policy)
    return (logit if kind == "logit" else -F.softplus(-logit)) * policy.mask


def transitions(arrays: dict[str, Any], logp: Any, dtype: torch.dtype = torch.float32,
                device: torch.device | None = None) -> Transitions:
    def t(x: Any) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, device=device).to(dtype)
    return Transitions(t(arrays["obs"]), t(arrays["actions"]), t(arrays["next_obs"]), t(arrays["mask"]), t(logp))


def executed_log_prob(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor,
                      low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """log π of the action the env executed, clip(a, low, high), summed over action dims.

    The clipped Gaussian puts mass Φ((low − μ)/σ) on `low` and 1 − Φ((high − μ)/σ) on `high`
    and the Gaussian density in between. AIRL's r̂ = f − log π with the raw sample's density
    would pay the policy for widening σ without changing a single executed action (everything
    beyond the bound executes as the bound); with the executed action's likelihood it cannot.
    """
    std = log_std.exp()
    inside = -0.5 * ((actions - mean) / std) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
    at_low = torch.special.log_ndtr((low - mean) / std)
    at_high = torch.special.log_ndtr((mean - high) / std)
    logp = torch.where(actions <= low, at_low, torch.where(actions >= high, at_high, inside))
    return logp.sum(-1)


def stage_logp(policy: GaussianMLPPolicy, params: Params, batch_obs: torch.Tensor, actions: torch.Tensor,
               per_task: bool, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """log π(executed a|s) of every task's steps [N, E, T] under θ (shared) or θ_i (stacked)."""
    mean, log_std = per_task_forward(policy, params, batch_obs) if per_task else policy_forward(policy, params, batch_obs)
    return executed_log_prob(mean, log_std, actions, low, high)


# --------------------------------------------------------------------------------------------
# Worker side


def expert_demos(family: TaskFamily, tasks: list[Task], count: int, noise: float, seed: int) -> dict[str, np.ndarray]:
    """`count` episodes of the family's expert per task: arrays [N, count, T, ...] of DEMO_FIELDS
    plus the true rewards. Demo j of a task depends only on (task, j, seed), not on `count`."""
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
    out = {"obs": np.zeros((n_slots, horizon, obs_dim), np.float32), "actions": np.zeros((n_slots, horizon, act_dim), np.float32),
           "next_obs": np.zeros((n_slots, horizon, obs_dim), np.float32), "mask": np.zeros((n_slots, horizon), bool),
           "rewards": np.zeros((n_slots, horizon), np.float32)}
    alive = np.ones(n_slots, bool)
    obs, _ = env.reset()
    for t in range(horizon):
        action = np.asarray(act(obs), np.float32)
        gauss = np.stack([r.standard_normal(act_dim) for r in rngs])
        action = np.clip(action + noise * (high - low) / 2 * gauss, low, high).astype(np.float32)
        out["obs"][alive, t], out["actions"][alive, t], out["mask"][:, t] = obs[alive], action[alive], alive
        obs, reward, terminated, truncated, info = env.step(action)
        next_obs = obs if "final_obs" not in info else np.where(info["_final_obs"][:, None], info["final_obs"], obs)
        out["next_obs"][alive, t], out["rewards"][alive, t] = next_obs[alive], reward[alive]
        alive &= ~(terminated | truncated)
        if not alive.any():
            break
    env.close()
    return {k: v.reshape(len(tasks), count, *v.shape[1:]) for k, v in out.items()}


class AdversarialSampler(MAMLSampler):
    """MAML's worker step with the reward replaced by the adapting discriminator's (see module)."""

    def __init__(self, family: TaskFamily, config: AdversarialConfig, slots: int = 1, seed: int = 0):
        if not callable(getattr(family, "expert", None)):
            raise ValueError(f"adversarial imitation needs demonstrations: task family {family.name!r} has no expert(task)")
        super().__init__(family, config, slots, seed)
        self.record_next_obs = True
        space_o, space_a = self.env.single_observation_space, self.env.single_action_space
        self.disc = make_policy(space_o, space_a, config).discriminator
        self.disc.requires_grad_(False)
        self.demo_seed = int(seed)
        self.demo_cache: OrderedDict[tuple[str, int], dict[str, np.ndarray]] = OrderedDict()
        self.inner_lr: maml.InnerLR = config.inner_lr

    def set_weights(self, version: int, weights: dict[str, np.ndarray]) -> None:
        gen, disc, log_lr = split_weights(weights)
        load_weights(self.policy, gen)
        load_weights(self.disc, disc)
        if self.config.learn_inner_lr:
            missing = [n for n in gen if lr_key(n) not in log_lr]
            if missing:
                raise ValueError(f"learn_inner_lr: the weights lack the inner step sizes of {missing}")
            self.inner_lr = {n: torch.as_tensor(np.asarray(log_lr[lr_key(n)])).exp() for n in gen}
        self.version = version

    def demos(self, tasks: list[Task]) -> dict[str, np.ndarray]:
        """Support and query demos of each task, [N, K, T, ...] (cached per task)."""
        cfg = self.config
        missing = [t for t in tasks if (t.split, t.task_id) not in self.demo_cache]
        if missing:
            count = cfg.num_demos + cfg.num_query_demos
            made = expert_demos(self.family, missing, count, cfg.demo_noise, self.demo_seed)
            for i, task in enumerate(missing):
                self.demo_cache[(task.split, task.task_id)] = {k: v[i] for k, v in made.items()}
                while len(self.demo_cache) > cfg.demo_cache_size:
                    self.demo_cache.popitem(last=False)
        own = [self.demo_cache[(t.split, t.task_id)] for t in tasks]
        rows = own[1:] + own[:1] if cfg.wrong_demos and len(own) > 1 else own  # the control: a neighbour's demos
        q = cfg.num_query_demos  # demos [0, q) are the query set, [q, q + K) the support set
        out = {f"support/{f}": np.stack([r[f][q:] for r in rows]) for f in DEMO_FIELDS}
        out.update({f"query/{f}": np.stack([r[f][:q] for r in rows]) for f in DEMO_FIELDS})
        # the task's own expert return, from its query demos: the same whatever K
        out["expert_return"] = np.stack([r["rewards"][:q].sum(-1).mean() for r in own]).astype(np.float64)
        return out

    def collect(self, tasks: list[Task], version: int) -> list[TaskResult]:
        """One result per task. Learner keys: "{stage}/{field}" for FIELDS (rewards = r̂), next_obs
        demo_logp / disc_logp (AIRL: log π_θj of the executed actions of the stage's demos / episodes;
        GAIL: zeros), "support/..." and "query/..." demo arrays,
        task_id, policy_version, env_steps, episodes. Metrics only (METRICS_ONLY): the true
        return_pre/return_post and the expert's return."""
        if version != self.version:
            raise ValueError(f"collect asked for policy version {version}, this sampler holds {self.version}")
        cfg = self.config
        n, per = len(tasks), cfg.episodes_per_task
        if self.env.num_envs == n * per:
            for slot in range(n * per):
                self.env.set_task(slot, tasks[slot // per])
        else:
            self.env.close()
            self.env = make_vector_env(self.family, tasks, per, seed=int(self.rng.integers(2**31)), info_keys=SAMPLER_INFO_KEYS)
        demos = self.demos(tasks)
        theta: Params = dict(self.policy.named_parameters())
        meta_theta = theta
        phi: Params = dict(self.disc.named_parameters())
        stages: dict[str, dict[str, np.ndarray]] = {}
        true_returns: dict[str, np.ndarray] = {}
        env_steps = 0
        with torch.no_grad():
            for j, name in enumerate(stage_names(cfg.num_inner_steps)):
                arrays, steps = self.rollout(theta, per_task=j > 0, num_tasks=n)
                env_steps += steps
                true_returns[name] = np.stack([mean_episode_return(arrays, i) for i in range(n)])
                side = "query" if name == "post" else "support"
                demo = {f: demos[f"{side}/{f}"] for f in DEMO_FIELDS}
                low, high = self.disc.act_low, self.disc.act_high
                if self.disc.kind == "airl":  # log π(executed a|s) enters AIRL's D; GAIL's ignores it
                    demo_logp = stage_logp(self.policy, theta, torch.from_numpy(demo["obs"]),
                                           torch.from_numpy(demo["actions"]), j > 0, low, high)
                    disc_logp = stage_logp(self.policy, theta, torch.from_numpy(arrays["obs"]),
                                           torch.from_numpy(arrays["actions"]), j > 0, low, high)
                else:
                    demo_logp, disc_logp = torch.zeros(demo["mask"].shape), torch.zeros(arrays["mask"].shape)
                policy_data = transitions(arrays, disc_logp)
                # inner stages adapt φ; the post stage refits φ_i^k on the adapted policy's episodes
                # (the meta-objective's max over φ) only to relabel them, keeping φ_i^k itself
                steps = cfg.disc_inner_steps if cfg.adapt_discriminator or name == "post" else 0
                labeller = disc_adapt(self.disc, phi, transitions(demo, demo_logp), policy_data, cfg.disc_inner_lr,
                                      steps, stacked=j > 0)
                if name != "post":
                    phi = labeller
                arrays["rewards"] = relabel(self.disc, labeller, policy_data, cfg.disc_reward).numpy()
                arrays["demo_logp"], arrays["disc_logp"] = demo_logp.numpy(), disc_logp.numpy()
                arrays.pop("success", None)
                stages[name] = arrays
                if name != "post":
                    stage = Stage.from_arrays(arrays, cfg, torch.float32, torch.device("cpu"))
                    if cfg.demo_advantage > 0:
                        stage = with_demos(stage, demo, cfg.demo_advantage)
                    theta = inner_step(self.policy, theta, stage, self.inner_lr if cfg.adapt_generator else 0.0,
                                       per_task=j > 0)
                    if j == cfg.num_inner_steps - 1:  # the post stage's policy: σ = post_log_std if learned
                        theta = maml.with_post_std(theta, meta_theta)
        self.adapted_params, self.adapted_disc = theta, phi
        results = []
        for i, task in enumerate(tasks):
            result = {f"{s}/{k}": stages[s][k][i] for s in stages for k in (*FIELDS, "next_obs", "demo_logp", "disc_logp")}
            result.update({k: v[i] for k, v in demos.items()})
            result.update(
                task_id=np.array(task.task_id, np.int64), policy_version=np.array(version, np.int64),
                env_steps=np.array(env_steps // n, np.int64), episodes=np.array(per * len(stages), np.int64),
                return_pre=np.array(true_returns["inner_0"][i], np.float64),
                return_post=np.array(true_returns["post"][i], np.float64),
            )
            results.append(result)
        return results


# --------------------------------------------------------------------------------------------
# Learner side


class AdversarialLearner:
    """θ: MAML's outer step on the relabelled episodes; φ: the discriminator meta-update."""

    def __init__(self, policy: AdversarialAgent, config: AdversarialConfig, device: torch.device, seed: int):
        self.config = config
        self.policy = policy  # the whole agent: the learner actor publishes its state dict
        # adapt_generator=false (ablation): the learner recomputes θ_i = θ, as the workers did
        gen_config = config if config.adapt_generator else config.model_copy(update={"inner_lr": 0.0})
        self.gen = MAMLLearner(policy.generator, gen_config, device, seed)
        self.device, self.dtype = self.gen.device, self.gen.dtype
        self.disc = policy.discriminator.to(self.device)
        self.generator = self.gen.generator  # torch RNG state (checkpointed by the learner actor)
        self.disc_optimizer = torch.optim.Adam(self.disc.parameters(), lr=config.disc_lr) if config.disc_outer != "reptile" else None
        self.lr_optimizer = None
        if policy.inner_log_lr is not None:
            policy.inner_log_lr.to(self.device)
            self.lr_optimizer = torch.optim.Adam(policy.inner_log_lr.parameters(), lr=config.inner_lr_lr)

    def _stage_data(self, results: list[TaskResult], stage: str, demo_side: str) -> tuple[Transitions, Transitions]:
        def stack(key: str) -> np.ndarray:
            return np.stack([r[key] for r in results])
        demo = transitions({f: stack(f"{demo_side}/{f}") for f in DEMO_FIELDS}, stack(f"{stage}/demo_logp"), self.dtype, self.device)
        pol = transitions({f: stack(f"{stage}/{f}") for f in ("obs", "actions", "next_obs", "mask")}, stack(f"{stage}/disc_logp"),
                          self.dtype, self.device)
        return demo, pol

    def adapted_discriminators(self, results: list[TaskResult], params: Params) -> Params:
        """φ_i^k from φ, each task's support demos and inner episodes (as the workers computed)."""
        cfg = self.config
        steps = cfg.disc_inner_steps if cfg.adapt_discriminator else 0
        for j in range(cfg.num_inner_steps):
            demo, pol = self._stage_data(results, f"inner_{j}", "support")
            params = disc_adapt(self.disc, params, demo, pol, cfg.disc_inner_lr, steps, stacked=j > 0)
        return params

    def update(self, results: list[TaskResult]) -> dict[str, float]:
        leaked = [k for k in METRICS_ONLY if k in results[0]]
        if leaked:
            raise ValueError(f"adversarial learner got true-reward keys {leaked}: the rollout worker must strip them")
        inner, post = self.gen.stages(results)
        params = dict(self.gen.policy.named_parameters())
        cfg = self.config
        if cfg.demo_advantage > 0:  # as the workers adapted: support demos join every inner stage
            support = {f: np.stack([r[f"support/{f}"] for r in results]) for f in DEMO_FIELDS}
            inner = [with_demos(stage, support, cfg.demo_advantage) for stage in inner]
        if cfg.query_demo_advantage > 0:
            query = {f: np.stack([r[f"query/{f}"] for r in results]) for f in DEMO_FIELDS}
            post = with_demos(post, query, cfg.query_demo_advantage)
        learn_lr = self.lr_optimizer is not None and cfg.adapt_generator
        if learn_lr:
            lr_grad_norm = self._inner_lr_gradient(params, inner, post)  # at θ_old, before θ moves
        if cfg.query_demo_advantage > 0:  # the demo steps' behaviour log-probs: the old θ'_i's (ratio 1)
            episodes = post.obs.shape[1] - query["obs"].shape[1]
            _, _, old_logp = self.gen._old_post_policy(params, inner, post)
            post = post._replace(logp=torch.cat([post.logp[:, :episodes], old_logp[:, episodes:]], 1))
        if cfg.outer == "trpo":
            stats = self.gen._trpo(params, inner, post)
        elif cfg.outer == "ppo-clip":
            stats = self.gen._ppo_clip(params, inner, post)
        else:
            stats = self.gen._reptile(params, inner, post)
        if learn_lr:
            stats.update(self._inner_lr_step(), inner_lr_grad_norm=lr_grad_norm)
        stats.update(self._update_discriminator(results), num_tasks=float(len(results)), **self.gen.noise_stats())
        return stats

    def _inner_lr_gradient(self, params: Params, inner: list[Stage], post: Stage) -> float:
        """Meta-SGD: ∇ log α of the post-stage policy-gradient loss of the adapted policies,
        −mean_i E[A ∇ log π_θ'_i(α)], at θ_old (the gradient of the surrogate the outer step
        descends, where every ratio is 1), left in log α's .grad; the learner's α is fixed to
        the current one for this update's outer step. Returns the gradient's norm."""
        assert self.policy.inner_log_lr is not None and self.lr_optimizer is not None
        alpha = self.policy.inner_lrs()
        assert alpha is not None
        theta = {k: p.detach() for k, p in params.items()}
        adapted = maml.adapted_params(self.gen.policy, theta, inner, post.obs.shape[0], alpha, self.config.first_order)
        per_task_loss = torch.vmap(partial(maml.inner_loss, self.gen.policy))  # the same loss, on the post episodes
        loss = per_task_loss(adapted, post.obs, post.actions, post.advantages, post.mask).mean()
        self.lr_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.gen.inner_lr = {k: a.detach() for k, a in alpha.items()}
        # (entries the post objective does not reach, e.g. α of the replaced log σ, have no .grad)
        return maml.flat(torch.zeros_like(p) if p.grad is None else p.grad
                         for p in self.policy.inner_log_lr.parameters()).norm().item()

    def _inner_lr_step(self) -> dict[str, float]:
        """The Adam step on log α (after θ's outer step, which used the old α); α's range."""
        assert self.policy.inner_log_lr is not None and self.lr_optimizer is not None
        self.lr_optimizer.step()
        with torch.no_grad():
            alpha = maml.flat(self.policy.inner_log_lr.parameters()).exp()
        return {"inner_lr_mean": alpha.mean().item(), "inner_lr_min": alpha.min().item(), "inner_lr_max": alpha.max().item()}

    def _update_discriminator(self, results: list[TaskResult]) -> dict[str, float]:
        cfg = self.config
        phi = dict(self.disc.named_parameters())
        query_demo, query_pol = self._stage_data(results, "post", "query")
        query_loss = torch.vmap(partial(disc_loss, self.disc))
        if cfg.disc_outer == "reptile":
            with torch.no_grad():
                adapted = self.adapted_discriminators(results, phi)
                loss = query_loss(adapted, query_demo, query_pol).mean()
                delta = {k: (adapted[k] - p).mean(0) for k, p in phi.items()}
                for k, p in phi.items():
                    p.add_(cfg.disc_reptile_lr * delta[k])
            return {"disc_loss": loss.item(), "disc_grad_norm": maml.flat(delta.values()).norm().item()}
        assert self.disc_optimizer is not None
        if cfg.disc_outer == "second-order":
            adapted = self.adapted_discriminators(results, phi)  # graph back to φ
            loss = query_loss(adapted, query_demo, query_pol).mean()
            grads = torch.autograd.grad(loss, list(phi.values()))
        else:  # first-order: the query gradient at φ_i^k, applied to φ
            with torch.no_grad():
                adapted = self.adapted_discriminators(results, {k: p.detach() for k, p in phi.items()})
            per_task = torch.vmap(torch.func.grad_and_value(partial(disc_loss, self.disc)))(adapted, query_demo, query_pol)
            grads = [per_task[0][k].mean(0) for k in phi]
            loss = per_task[1].mean()
        self.disc_optimizer.zero_grad(set_to_none=True)
        for p, g in zip(phi.values(), grads, strict=True):
            p.grad = g.detach().clone()
        self.disc_optimizer.step()
        return {"disc_loss": loss.item(), "disc_grad_norm": maml.flat(grads).norm().item()}

    def optimizer_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        gen_tensors, gen_meta = self.gen.optimizer_state()
        tensors = {f"generator/{k}": v for k, v in gen_tensors.items()}
        meta: dict[str, Any] = {"generator": gen_meta}
        if self.disc_optimizer is not None:
            disc_tensors, meta["discriminator"] = optimizer_tensors(self.disc_optimizer)
            tensors.update({f"discriminator/{k}": v for k, v in disc_tensors.items()})
        if self.lr_optimizer is not None:
            lr_tensors, meta["inner_lr"] = optimizer_tensors(self.lr_optimizer)
            tensors.update({f"inner_lr/{k}": v for k, v in lr_tensors.items()})
        return tensors, meta

    def load_optimizer_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        def part(prefix: str) -> dict[str, torch.Tensor]:
            return {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith(f"{prefix}/")}
        self.gen.load_optimizer_state(part("generator"), meta.get("generator", {}))
        if self.disc_optimizer is not None and "discriminator" in meta:
            load_optimizer_tensors(self.disc_optimizer, part("discriminator"), meta["discriminator"], self.device)
        if self.lr_optimizer is not None and "inner_lr" in meta:
            load_optimizer_tensors(self.lr_optimizer, part("inner_lr"), meta["inner_lr"], self.device)


# --------------------------------------------------------------------------------------------
# Evaluation


def evaluate(policy: AdversarialAgent, family: TaskFamily, tasks: list[Task], config: AdversarialConfig,
             seed: int) -> list[dict[str, Any]]:
    """Per held-out task: K support demos and k·N reward-free episodes adapt θ and φ, then the
    adapted policy's true return; the expert's and a random policy's true returns on the same
    task give normalised_score = (R − R_random) / (R_expert − R_random)."""
    sampler = AdversarialSampler(family, config, config.episodes_per_task, seed)
    sampler.set_weights(0, {k: v.detach().cpu().numpy() for k, v in policy.state_dict().items()})
    random_returns = random_policy_returns(family, tasks, config.episodes_per_task, seed)
    out = []
    for chunk in evaluation_chunks(len(tasks), config.meta_batch_size):
        for r in sampler.collect([tasks[i] for i in chunk], 0):
            task_id = int(r["task_id"])
            post, expert, rand = float(r["return_post"]), float(r["expert_return"]), random_returns[task_id]
            gap = expert - rand
            out.append({"task_id": task_id, "return_pre": float(r["return_pre"]), "return_post": post,
                        "expert_return": expert, "random_return": rand,
                        "normalised_score": (post - rand) / gap if abs(gap) > 1e-8 else float("nan")})
    return out


def evaluation_chunks(n: int, size: int) -> list[range]:
    """Consecutive chunks of at most `size` (at least 2) task indices, none of one task when n > 1,
    so the wrong-demo control always has a neighbour to take demos from."""
    size = max(2, size)
    chunks = [range(a, min(a + size, n)) for a in range(0, n, size)]
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks[-2], chunks[-1] = range(chunks[-2].start, chunks[-2].stop - 1), range(chunks[-2].stop - 1, n)
    return chunks


def random_policy_returns(family: TaskFamily, tasks: list[Task], episodes: int, seed: int) -> dict[int, float]:
    """Mean true return of uniformly random actions per task (the normalised score's zero)."""
    env = make_vector_env(family, tasks, episodes, seed=seed + 1, info_keys=SAMPLER_INFO_KEYS)
    space = env.single_action_space
    rng = np.random.default_rng(seed + 1)
    totals, alive = np.zeros(env.num_envs), np.ones(env.num_envs, bool)
    env.reset()
    for _ in range(family.max_episode_steps):
        action = rng.uniform(space.low, space.high, (env.num_envs, *space.shape)).astype(np.float32)
        _, reward, terminated, truncated, _ = env.step(action)
        totals += reward * alive
        alive &= ~(terminated | truncated)
        if not alive.any():
            break
    env.close()
    per_task = totals.reshape(len(tasks), episodes).mean(1)
    return {t.task_id: float(r) for t, r in zip(tasks, per_task, strict=True)}


# The algorithm interface the runtime uses (see metaray.learner.get_algorithm).
name = "adversarial"
mode = "sync"
Config = AdversarialConfig
Sampler = AdversarialSampler
Learner = AdversarialLearner
