"""MAML-RL (Finn et al. 2017) and its relatives: MAML-TRPO, first-order MAML, ProMP, Reptile.

A Gaussian MLP policy with parameters θ is adapted to each task by a few vanilla policy-gradient
steps (the inner step), θ'_i = θ − α ∇θ L_inner(θ; pre-update episodes of task i), and θ is
trained so that the adapted policies do well (the outer step). Everything per task runs batched
over tasks: the policy is a function of a parameter dict (`policy_forward`), run with stacked
per-task parameters as one batched matrix product per layer (`per_task_forward`), and the inner gradient is `vmap(grad(inner_loss))`, which is
itself differentiable, so the meta-gradient flows through it. For TRPO the meta-gradient and the
KL Hessian-vector products at θ_old also have exact closed forms (Jᵀ∇L, Jᵀ F J; see
`KLCurvature`), written out for the MLP; they are the default because on CPU they are about 3×
faster than differentiating through the inner step twice (tests check both against autograd).

This one file holds:
- `MAMLConfig`: every hyperparameter, documented;
- `GaussianMLPPolicy`: the network (its parameters are used as a dict of tensors);
- the math shared by both sides: returns, the linear feature baseline, GAE, the inner step;
- `MAMLSampler`: the worker side: pre-update episodes for all tasks of a worker in one vector
  env, the inner step without a graph, post-update episodes with per-task parameters;
- `MAMLLearner`: the learner side: the inner steps recomputed from the workers' data (with a
  graph, or in closed form for TRPO), then the outer step (`trpo`, `ppo-clip` or `reptile`);
- `evaluate`: pre/post-adaptation returns on held-out tasks, for `metaray eval`.

Episodes are fixed-size arrays [E, T, ...] (T = the family's horizon) with a `mask` that is
False after an episode ended early; every mean below is taken over valid steps only.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any, Literal, NamedTuple

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator
from torch import nn

from metaray.learner.optim_state import load_optimizer_tensors, optimizer_tensors
from metaray.tasks import SAMPLER_INFO_KEYS, Task, TaskFamily, make_vector_env, step_success

Params = dict[str, torch.Tensor]  # parameter name -> tensor; "stacked" = a leading task axis
InnerLR = float | Params  # one inner step size α, or one per parameter entry (Meta-SGD), shaped as θ
TaskResult = dict[str, np.ndarray]  # see MAMLSampler.collect
LOG_2PI = math.log(2 * math.pi)
MIN_LOG_STD = math.log(1e-6)  # as pytorch-maml-rl
FIELDS = ("obs", "actions", "rewards", "mask", "logp")


class MAMLConfig(BaseModel):
    """Hyperparameters of the MAML family. Defaults: pytorch-maml-rl's 2D-navigation config."""

    model_config = ConfigDict(extra="forbid")

    outer: Literal["trpo", "ppo-clip", "reptile"] = Field("trpo", description="Outer step: 'trpo' (MAML-TRPO), 'ppo-clip' (ProMP: clipped surrogate + inner KL penalty, Adam), 'reptile' (θ moves towards the adapted parameters).")
    first_order: bool = Field(False, description="Drop second-order terms (trpo, ppo-clip): the meta-gradient is the post-update policy gradient at θ'_i applied to θ.")
    inner_lr: float = Field(0.1, gt=0, description="Inner (adaptation) step size α.")
    num_inner_steps: int = Field(1, ge=0, description="Inner policy-gradient steps per task; each uses fresh episodes sampled with the current adapted parameters. 0: no adaptation, the outer step is plain multi-task TRPO / PPO-clip on θ (Finn et al.'s 'pretrained' baseline; with a task-observing family, a task-conditioned policy).")
    episodes_per_task: int = Field(20, ge=1, description="Episodes per task per stage (pre-update batch of each inner step, and the post-update batch).")
    meta_batch_size: int = Field(20, ge=1, description="Tasks per meta-iteration.")
    gamma: float = Field(0.99, gt=0, le=1, description="Discount.")
    gae_lambda: float = Field(1.0, ge=0, le=1, description="GAE lambda (1.0: Monte-Carlo returns minus the baseline).")
    baseline_reg: float = Field(1e-5, gt=0, description="Ridge term of the linear feature baseline's least squares (multiplied by 10 up to 4 times if the solve fails).")
    hidden_sizes: list[PositiveInt] = Field(default_factory=lambda: [64, 64], min_length=1, description="Hidden layer widths of the Gaussian MLP policy.")
    activation: Literal["tanh", "relu"] = Field("tanh", description="Hidden-layer activation.")
    init_log_std: float = Field(0.0, ge=-5, le=2, description="Initial log-std of the Gaussian policy (0: σ = 1, as pytorch-maml-rl). Lower it when the action range is much narrower than 1.")
    init_output_scale: float = Field(1.0, gt=0, le=1, description="Scale of the mean layer's initial weights (1: Xavier-uniform as pytorch-maml-rl; 0.01 as CleanRL's PPO): a small one starts every state near mean 0, so a low initial σ gives a random walk, not a deterministic drift.")
    max_kl: float = Field(0.01, gt=0, description="TRPO: largest mean KL between old and new adapted policies on the post-update episodes.")
    cg_iters: int = Field(10, ge=1, description="TRPO: conjugate-gradient iterations.")
    cg_damping: float = Field(1e-5, ge=0, description="TRPO: damping added to the KL Hessian-vector product.")
    ls_max_steps: int = Field(15, ge=1, description="TRPO: line-search tries before the step is rejected (θ unchanged).")
    ls_backtrack_ratio: float = Field(0.8, gt=0, lt=1, description="TRPO: step shrink factor per line-search try.")
    closed_form: bool = Field(True, description="TRPO: meta-gradient Jᵀ∇L and KL Hessian-vector products Jᵀ F J written out for the MLP (same values, about 3× faster on CPU); false: autograd through the vmapped inner step, twice for the KL Hessian, as pytorch-maml-rl.")
    ppo_clip: float = Field(0.2, gt=0, description="ppo-clip: clip range of the post-update likelihood ratio.")
    ppo_epochs: int = Field(5, ge=1, description="ppo-clip: full-batch Adam steps per meta-iteration.")
    ppo_lr: float = Field(1e-3, gt=0, description="ppo-clip: Adam learning rate.")
    inner_kl_coef: float = Field(5e-4, ge=0, description="ppo-clip (ProMP): weight of the KL penalty between old and new pre-update policies of each inner step.")
    reptile_lr: float = Field(0.1, gt=0, description="reptile: outer step size ε in θ ← θ + ε·mean_i(φ_i − θ).")
    post_std: Literal["shared", "learned"] = Field("shared", description="σ of the adapted policy: 'shared' (MAML: the exploring pre-update log σ, moved only by the inner steps) or 'learned' (its own meta-parameter post_log_std, initialised to init_post_log_std and learned by the outer step on the post-update objective, so exploitation noise is learned apart from exploration noise; first-order, the pre-update σ then stays at init_log_std). trpo / ppo-clip with at least one inner step.")
    init_post_log_std: float | None = Field(None, ge=-5, le=2, description="post_std learned: initial log σ of the adapted policies (default: init_log_std).")

    @model_validator(mode="after")
    def _post_std_needs_an_adapted_policy(self) -> MAMLConfig:
        if self.post_std == "learned" and (self.outer == "reptile" or self.num_inner_steps == 0):
            raise ValueError("post_std 'learned' needs outer trpo or ppo-clip and num_inner_steps >= 1 (an adapted policy with an outer objective)")
        return self


# --------------------------------------------------------------------------------------------
# Policy


class GaussianMLPPolicy(nn.Module):
    """Diagonal Gaussian over actions: MLP mean, state-independent log-std (initialised to 0 unless set).

    Initialisation as pytorch-maml-rl (Xavier-uniform weights, zero biases). `forward` returns
    (mean, log_std) with log_std expanded to the mean's shape, so the outputs broadcast the same
    way whether or not the call is inside `vmap`.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes: list[int], activation: str, init_log_std: float = 0.0,
                 init_output_scale: float = 1.0, post_log_std: float | None = None):
        super().__init__()
        act_cls = {"tanh": nn.Tanh, "relu": nn.ReLU}[activation]
        layers: list[nn.Module] = []
        last = obs_dim
        for width in hidden_sizes:
            layers += [nn.Linear(last, width), act_cls()]
            last = width
        self.activation = activation
        self.body = nn.Sequential(*layers)
        self.mu = nn.Linear(last, act_dim)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(init_log_std)))
        if post_log_std is not None:  # post_std: learned; the adapted policies' log σ (see with_post_std)
            self.post_log_std = nn.Parameter(torch.full((act_dim,), float(post_log_std)))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.mu.weight.mul_(init_output_scale)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.mu(self.body(obs))
        log_std = self.log_std.clamp(min=MIN_LOG_STD).expand_as(mean)
        return mean, log_std

    def linear_layers(self) -> list[tuple[str, str]]:
        """(weight, bias) parameter names of the linear layers, input to output."""
        names = [f"body.{i}" for i, m in enumerate(self.body) if isinstance(m, nn.Linear)] + ["mu"]
        return [(f"{n}.weight", f"{n}.bias") for n in names]


def make_policy(obs_space: gym.Space, act_space: gym.Space, config: MAMLConfig) -> GaussianMLPPolicy:
    """The policy for flat Box observations and flat Box actions."""
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise ValueError(f"MAML needs a flat Box observation space, got {obs_space}")
    if not isinstance(act_space, gym.spaces.Box) or len(act_space.shape) != 1:
        raise ValueError(f"MAML's Gaussian policy needs a flat Box action space, got {act_space}")
    return GaussianMLPPolicy(obs_space.shape[0], act_space.shape[0], list(config.hidden_sizes), config.activation,
                             config.init_log_std, config.init_output_scale,
                             None if config.post_std == "shared" else
                             config.init_log_std if config.init_post_log_std is None else config.init_post_log_std)


def get_weights(module: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def load_weights(module: nn.Module, weights: dict[str, np.ndarray]) -> None:
    """Load numpy weights (possibly read-only views into the object store) into a module."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only arrays; load_state_dict copies
        module.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})


def policy_forward(policy: GaussianMLPPolicy, params: Params, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The policy with parameters `params` (one set, shared by every row of `obs`).

    The layers written out with F.linear: the same values as `functional_call(policy, params,
    (obs,))`, about 4x faster per call on a small batch (a rollout calls it every env step), and
    it composes with torch.func's grad and vmap the same way.
    """
    act = torch.tanh if policy.activation == "tanh" else torch.relu
    *hidden, (w, b) = policy.linear_layers()
    x = obs
    for hw, hb in hidden:
        x = act(F.linear(x, params[hw], params[hb]))
    mean = F.linear(x, params[w], params[b])
    return mean, params["log_std"].clamp(min=MIN_LOG_STD).expand_as(mean)


def per_task_forward(policy: GaussianMLPPolicy, params: Params, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Task i's observations obs[i] through task i's parameters params[·][i], all tasks at once.

    One batched matrix product per layer (baddbmm over the stacked weights): the same values as
    `vmap(policy_forward)`, about 10x faster per call at rollout sizes.
    """
    act = torch.tanh if policy.activation == "tanh" else torch.relu
    n, lead = obs.shape[0], obs.shape[1:-1]
    x = obs.reshape(n, -1, obs.shape[-1])
    *hidden, (w, b) = policy.linear_layers()
    for hw, hb in hidden:
        x = act(torch.baddbmm(params[hb].unsqueeze(1), x, params[hw].transpose(1, 2)))
    mean = torch.baddbmm(params[b].unsqueeze(1), x, params[w].transpose(1, 2)).reshape(n, *lead, -1)
    log_std = params["log_std"].clamp(min=MIN_LOG_STD).reshape(n, *(1,) * len(lead), -1).expand_as(mean)
    return mean, log_std


def gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    z = (actions - mean) / log_std.exp()
    return (-0.5 * z.square() - log_std - 0.5 * LOG_2PI).sum(-1)


def gaussian_kl(mean_p: torch.Tensor, log_std_p: torch.Tensor, mean_q: torch.Tensor, log_std_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) of diagonal Gaussians, summed over action dimensions."""
    var_p, var_q = (2 * log_std_p).exp(), (2 * log_std_q).exp()
    return (log_std_q - log_std_p + (var_p + (mean_p - mean_q).square()) / (2 * var_q) - 0.5).sum(-1)


# --------------------------------------------------------------------------------------------
# Returns, baseline, advantages (no gradients; shapes [..., E, T], mask float)


def episode_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over episodes of each episode's mean over its valid steps: [..., E, T] -> [...].

    pytorch-maml-rl's `weighted_mean` then `.mean()`: every episode weighs the same whatever
    its length.
    """
    per_episode = (x * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)
    return per_episode.sum(-1) / valid_episodes(mask)


def valid_episodes(mask: torch.Tensor) -> torch.Tensor:
    """Episodes with at least one valid step, per task (≥ 1): an episode dropped after an env
    failure is all-masked and counts for nothing."""
    return (mask.sum(-1) > 0).sum(-1).clamp_min(1).to(mask.dtype)


def discount_cumsum(x: torch.Tensor, factor: float) -> torch.Tensor:
    """y_t = Σ_{s≥t} factor^(s−t) x_s along the last axis, as one [T, T] matrix product."""
    steps = torch.arange(x.shape[-1], device=x.device)
    power = (steps[None, :] - steps[:, None]).to(x.dtype)  # [t, s] -> s - t
    weights = torch.where(power >= 0, torch.pow(factor, power.clamp_min(0)), 0.0)
    return x @ weights.T


def baseline_features(obs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[obs, obs², t/100, (t/100)², (t/100)³, 1] per valid step, zeros on padding (Duan et al. 2016)."""
    t = (torch.arange(obs.shape[-2], device=obs.device, dtype=obs.dtype) / 100.0).expand_as(mask) * mask
    m = mask[..., None]
    return torch.cat([obs * m, obs.square() * m, t[..., None], t[..., None] ** 2, t[..., None] ** 3, m], dim=-1)


def fit_linear_baseline(obs: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, reg: float) -> torch.Tensor:
    """Value estimates from a ridge regression of returns on `baseline_features`, per task.

    One least-squares fit per leading index (task) over all its valid steps, solved in float64;
    where a solve fails the ridge term grows ×10 (up to 4 times), as pytorch-maml-rl does.
    Padded steps get value 0.
    """
    feats = baseline_features(obs, mask).double()  # [..., E, T, F]
    x = feats.flatten(-3, -2)  # [..., E*T, F]
    y = returns.double().flatten(-2)[..., None]  # [..., E*T, 1]
    xtx, xty = x.mT @ x, x.mT @ y
    eye = torch.eye(feats.shape[-1], dtype=torch.float64, device=feats.device)
    coef = torch.zeros_like(xty)
    solved = torch.zeros(xty.shape[:-2], dtype=torch.bool, device=feats.device)
    for _ in range(5):
        sol, info = torch.linalg.solve_ex(xtx + reg * eye, xty)
        ok = (info == 0) & sol.isfinite().all(-1).all(-1)
        coef = torch.where((ok & ~solved)[..., None, None], sol, coef)
        solved |= ok
        if bool(solved.all()):
            break
        reg *= 10.0
    values = (feats @ coef[..., None, :, :]).squeeze(-1)  # [..., E, T]
    return values.to(returns.dtype)


def normalize_advantages(adv: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per task (leading index): subtract the mean, divide by the RMS, both taken with
    `episode_mean` weighting over valid steps (pytorch-maml-rl's `weighted_normalize`)."""
    centered = (adv - episode_mean(adv, mask)[..., None, None]) * mask
    return centered / (episode_mean(centered.square(), mask).sqrt()[..., None, None] + eps)


def compute_advantages(
    obs: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, gamma: float, gae_lambda: float, reg: float
) -> torch.Tensor:
    """GAE(γ, λ) on the linear baseline fitted to this stage's own episodes, normalised per task.

    An episode's end (termination or horizon) is terminal: the value after it is 0.
    """
    rewards = rewards * mask
    returns = discount_cumsum(rewards, gamma)
    values = fit_linear_baseline(obs, returns, mask, reg)
    next_values = F.pad(values[..., 1:], (0, 1))
    deltas = (rewards + gamma * next_values - values) * mask
    return normalize_advantages(discount_cumsum(deltas, gamma * gae_lambda), mask)


class Stage(NamedTuple):
    """One stage's episodes of every task as tensors [N, E, T, ...]; mask is float."""

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    mask: torch.Tensor
    logp: torch.Tensor  # behaviour log-probs
    advantages: torch.Tensor

    @staticmethod
    def from_arrays(arrays: dict[str, np.ndarray], config: MAMLConfig, dtype: torch.dtype, device: torch.device) -> Stage:
        """Tensors from numpy arrays [N, E, T, ...]; computes the advantages."""
        t = {k: torch.as_tensor(np.asarray(arrays[k]), device=device).to(dtype) for k in FIELDS}
        adv = compute_advantages(t["obs"], t["rewards"], t["mask"], config.gamma, config.gae_lambda, config.baseline_reg)
        return Stage(t["obs"], t["actions"], t["rewards"], t["mask"], t["logp"], adv)


# --------------------------------------------------------------------------------------------
# The inner step (shared by worker and learner)


def inner_loss(policy: nn.Module, params: Params, obs: torch.Tensor, actions: torch.Tensor,
               advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Vanilla policy gradient loss of one task: −mean(log π(a|s) · A) over its episodes."""
    mean, log_std = policy_forward(policy, params, obs)
    return -episode_mean(gaussian_log_prob(mean, log_std, actions) * advantages, mask)


def step_size(inner_lr: InnerLR, name: str) -> float | torch.Tensor:
    """α for parameter `name`: the scalar, or its per-entry tensor (broadcasts over a task axis)."""
    return inner_lr[name] if isinstance(inner_lr, dict) else inner_lr


def inner_step(policy: nn.Module, params: Params, stage: Stage, inner_lr: InnerLR, per_task: bool,
               first_order: bool = False) -> Params:
    """θ'_i = θ_i − α ∇ L_inner(θ_i; task i's episodes) for all tasks at once -> stacked params.
    α is a scalar or, per parameter entry, a dict shaped as θ (Meta-SGD; differentiable).

    `per_task=False`: `params` is one θ shared by all tasks (the first step); else stacked [N, ...].
    The gradient comes from `vmap(grad(...))`: under an outer autograd graph it is differentiable
    (second-order MAML); `first_order` detaches it, so dθ'/dθ = I.
    """
    grad_fn = torch.func.grad(partial(inner_loss, policy))
    grads = torch.vmap(grad_fn, in_dims=(0 if per_task else None, 0, 0, 0, 0))(
        params, stage.obs, stage.actions, stage.advantages, stage.mask
    )
    if first_order:
        grads = {k: g.detach() for k, g in grads.items()}
    return {k: p - step_size(inner_lr, k) * grads[k] for k, p in params.items()}


POST_LOG_STD = "post_log_std"  # the policy's parameter with post_std: learned


def with_post_std(adapted: Params, theta: Params) -> Params:
    """The adapted policies θ'_i (stacked) acting with θ's own post_log_std in place of the
    exploring log σ (post_std: learned; unchanged without it). Exploration noise helps the inner
    step find the task; the adapted policy is judged on its return, where the same noise costs:
    on point-nav the adapted policy with the pre-update σ scored 0.06 to 0.08 below the same
    means with a smaller σ (benchmarks/README.md)."""
    if POST_LOG_STD not in theta:
        return adapted
    n, post = adapted["log_std"].shape[0], theta[POST_LOG_STD]
    return {**adapted, "log_std": post.expand(n, *post.shape)}


def adapted_params(policy: nn.Module, params: Params, inner: list[Stage], num_tasks: int, inner_lr: InnerLR,
                   first_order: bool = False) -> Params:
    """θ'_i stacked per task after all inner steps; without inner steps θ for every task."""
    if not inner:
        return {k: p.expand(num_tasks, *p.shape) for k, p in params.items()}
    return adapt(policy, params, inner, inner_lr, first_order)[-1]


def adapt(policy: nn.Module, params: Params, inner: list[Stage], inner_lr: InnerLR,
          first_order: bool = False) -> list[Params]:
    """[θ_1, ..., θ_k] per task (stacked) from θ_0 = θ and the k inner stages' episodes; θ_k,
    the policy of the post-update episodes, with θ's post_log_std (`with_post_std`)."""
    theta, adapted = params, []
    for j, stage in enumerate(inner):
        params = inner_step(policy, params, stage, inner_lr, per_task=j > 0, first_order=first_order)
        adapted.append(params)
    if adapted:
        adapted[-1] = with_post_std(adapted[-1], theta)
    return adapted


# --------------------------------------------------------------------------------------------
# Worker side


def stage_names(num_inner_steps: int) -> list[str]:
    return [f"inner_{j}" for j in range(num_inner_steps)] + ["post"]


class MAMLSampler:
    """Worker side of MAML: for a list of tasks, pre-update episodes, inner step(s), post-update
    episodes, all tasks batched in one vector env (len(tasks) × episodes_per_task slots).

    Each stage steps the env `horizon` times with one batched policy call per env step; slot
    s runs task s // episodes_per_task and keeps only its first episode (later steps of a slot
    whose episode ended early are masked out). Actions come from a seeded torch.Generator.
    """

    def __init__(self, family: TaskFamily, config: MAMLConfig, slots: int = 1, seed: int = 0):
        """`slots` only sizes the first env (to know the spaces); `collect` takes any number of tasks."""
        self.family, self.config = family, config
        self.rng = np.random.default_rng(seed)
        self.torch_gen = torch.Generator().manual_seed(int(self.rng.integers(2**62)))
        probe_tasks = family.sample(max(1, slots // config.episodes_per_task), self.rng, "train")
        self.env = make_vector_env(family, probe_tasks, config.episodes_per_task, seed=int(self.rng.integers(2**31)), info_keys=SAMPLER_INFO_KEYS)
        obs_space, act_space = self.env.single_observation_space, self.env.single_action_space
        self.policy = make_policy(obs_space, act_space, config)
        self.policy.requires_grad_(False)
        self.act_low, self.act_high = act_space.low, act_space.high
        self.horizon = family.max_episode_steps
        self.version = -1
        self.dropped_episodes = 0  # episodes cut short by an env failure and masked out
        self.adapted_params: Params = {}  # the last collect's final adapted parameters (stacked)
        self.record_next_obs = False  # rollouts also return "next_obs" (adversarial imitation needs s')

    def set_weights(self, version: int, weights: dict[str, np.ndarray]) -> None:
        load_weights(self.policy, weights)
        self.version = version

    def resize_env(self, num_envs: int) -> None:
        """Rebuild the vector env with `num_envs` slots (placeholder tasks: `collect` sets its
        own) without drawing from `rng`: restoring a checkpoint sizes it as it was."""
        if self.env.num_envs != num_envs:
            per = self.config.episodes_per_task
            placeholder = self.family.sample(max(1, num_envs // per), np.random.default_rng(0), "train")
            self.env.close()
            self.env = make_vector_env(self.family, placeholder, per, seed=0, info_keys=SAMPLER_INFO_KEYS)

    def collect(self, tasks: list[Task], version: int) -> list[TaskResult]:
        """One result per task: numpy arrays only.

        Keys: "{stage}/{field}" for stage in inner_0..inner_{k-1}, post and field in obs [E, T,
        obs_dim], actions [E, T, act_dim] (unclipped samples), rewards [E, T], mask [E, T] bool,
        logp [E, T] (behaviour log-probs); plus 0-d arrays task_id, policy_version,
        return_pre (mean episode return of inner_0; of post when k = 0), return_post, env_steps,
        episodes.
        """
        if version != self.version:
            raise ValueError(f"collect asked for policy version {version}, this sampler holds {self.version}")
        cfg = self.config
        n, per = len(tasks), cfg.episodes_per_task
        if self.env.num_envs == n * per:  # reuse the envs (MuJoCo ones are costly to build)
            for slot in range(n * per):
                self.env.set_task(slot, tasks[slot // per])
        else:
            self.env.close()
            self.env = make_vector_env(self.family, tasks, per, seed=int(self.rng.integers(2**31)), info_keys=SAMPLER_INFO_KEYS)
        theta: Params = dict(self.policy.named_parameters())
        params = theta
        stages: dict[str, dict[str, np.ndarray]] = {}
        env_steps = 0
        with torch.no_grad():
            for j, name in enumerate(stage_names(cfg.num_inner_steps)):
                arrays, steps = self.rollout(params, per_task=j > 0, num_tasks=n)
                stages[name], env_steps = arrays, env_steps + steps
                if name != "post":
                    stage = Stage.from_arrays(arrays, cfg, torch.float32, torch.device("cpu"))
                    params = inner_step(self.policy, params, stage, cfg.inner_lr, per_task=j > 0)
                    if j == cfg.num_inner_steps - 1:
                        params = with_post_std(params, theta)
        self.adapted_params = params

        results = []
        first = stages[stage_names(cfg.num_inner_steps)[0]]  # the unadapted θ's episodes
        for i, task in enumerate(tasks):
            result = {f"{s}/{k}": stages[s][k][i] for s in stages for k in FIELDS}
            result.update(
                task_id=np.array(task.task_id, np.int64),
                policy_version=np.array(version, np.int64),
                return_pre=mean_episode_return(first, i),
                return_post=mean_episode_return(stages["post"], i),
                env_steps=np.array(env_steps // n, np.int64),
                episodes=np.array(per * len(stages), np.int64),
            )
            if "success" in stages["post"]:  # the family reports success (Meta-World)
                result.update(success_pre=episode_success_rate(first, i),
                              success_post=episode_success_rate(stages["post"], i))
            results.append(result)
        return results

    def rollout(self, params: Params, per_task: bool, num_tasks: int) -> tuple[dict[str, np.ndarray], int]:
        """One episode per slot from a fresh reset: arrays [N, E, T, ...] and env steps taken.

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
        arrays = {
            "obs": obs_buf.reshape(*shape, obs_dim), "actions": act_buf.reshape(*shape, act_dim),
            "rewards": rew_buf.reshape(shape), "mask": mask_buf.reshape(shape), "logp": logp_buf.reshape(shape),
        }
        if next_buf is not None:
            arrays["next_obs"] = next_buf.reshape(*shape, obs_dim)
        if success is not None:  # not a learner field: collect turns it into success_pre/post
            arrays["success"] = success.reshape(shape[:2])
        return arrays, steps


def mean_episode_return(arrays: dict[str, np.ndarray], task: int) -> np.ndarray:
    """Mean return of a task's episodes in one stage, over the episodes not dropped."""
    valid = arrays["mask"][task].any(-1)
    return np.array(arrays["rewards"][task].sum(-1)[valid].mean() if valid.any() else np.nan, np.float64)


def finite_mean(values: Any) -> float:
    """Mean over the finite values (NaN if none). A task whose every episode of a stage was
    dropped after env failures has no return (NaN); it must not turn the iteration's into NaN."""
    finite = [float(v) for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def episode_success_rate(arrays: dict[str, np.ndarray], task: int) -> np.ndarray:
    """Share of a task's episodes in one stage with a successful step, over the episodes not dropped."""
    valid = arrays["mask"][task].any(-1)
    return np.array(arrays["success"][task][valid].mean() if valid.any() else np.nan, np.float64)


# --------------------------------------------------------------------------------------------
# Learner side


def flat(tensors: Any) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflat(vector: torch.Tensor, like: Params) -> Params:
    sizes = [p.numel() for p in like.values()]
    return {k: v.view_as(p) for (k, p), v in zip(like.items(), vector.split(sizes), strict=True)}


def conjugate_gradient(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int,
                       residual_tol: float = 1e-10) -> tuple[torch.Tensor, torch.Tensor]:
    """Approximately solve A x = b for symmetric positive-definite A given as `matvec`;
    returns x and the residual r = b − A x (so xᵀA x = xᵀ(b − r) costs no extra product)."""
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = r @ r
    for _ in range(iters):
        ap = matvec(p)
        alpha = rr / (p @ ap)
        x += alpha * p
        r -= alpha * ap
        new_rr = r @ r
        if new_rr.item() < residual_tol:
            break
        p = r + (new_rr / rr) * p
        rr = new_rr
    return x, r


# --------------------------------------------------------------------------------------------
# Closed forms for TRPO: the meta-gradient and the KL Hessian-vector products at θ_old
#
# θ'(θ) = θ_k with θ_{j+1} = θ_j − α ∇ℓ_j(θ_j), so J = dθ'/dθ = Π_j (I − α H_j), H_j the Hessian
# of the inner loss at θ_j (per task; J = I when first-order). The meta-gradient is Jᵀ ∇θ' L.
# At θ_old the mean KL between old and new adapted policies has zero gradient w.r.t. θ', so its
# Hessian w.r.t. θ is exactly Jᵀ F J, F the KL Hessian w.r.t. θ' (the Gaussian's Fisher matrix,
# a Gauss-Newton product). The products with H_j and F are written out below for the MLP from
# values cached once per update: each conjugate-gradient iteration costs a few matrix products
# per layer instead of a backward pass through a double-backward graph. Everything is stacked
# over tasks: tensors [N, R, ...], R = E·T rows.


def _activation(name: str, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(act(z), act'(z), act''(z)); None where act'' is 0."""
    if name == "tanh":
        h = torch.tanh(z)
        slope = 1 - h * h
        return h, slope, -2 * h * slope
    return torch.relu(z), (z > 0).to(z.dtype), None


def _weight_grad(grad_z: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """grad_zᵀ · inputs per task, [N, out, in]; ordered so that thin products stay fast on CPU."""
    if inputs.shape[-1] < grad_z.shape[-1]:
        return (inputs.mT @ grad_z).mT
    return grad_z.mT @ inputs


class MLPTape:
    """The policy evaluated at stacked parameters on [N, R, obs] rows, keeping what Jacobian
    products need: layer inputs, activation slopes and second derivatives."""

    def __init__(self, policy: GaussianMLPPolicy, params: Params, obs: torch.Tensor):
        self.layers = policy.linear_layers()
        self.weights = [params[w] for w, _ in self.layers]
        self.inputs: list[torch.Tensor] = []
        self.slopes: list[torch.Tensor] = []
        self.second: list[torch.Tensor | None] = []
        h = obs
        for i, (w, b) in enumerate(self.layers):
            self.inputs.append(h)
            z = torch.baddbmm(params[b].unsqueeze(-2), h, params[w].mT)
            if i < len(self.layers) - 1:
                h, slope, second = _activation(policy.activation, z)
                self.slopes.append(slope)
                self.second.append(second)
        self.mean = z
        raw = params["log_std"]
        self.log_std = raw.clamp(min=MIN_LOG_STD)[:, None, :]  # [N, 1, a]
        self.std_mask = (raw > MIN_LOG_STD).to(raw.dtype)  # where d log_std / d param = 1

    def jvp(self, tangent: Params) -> tuple[list[torch.Tensor], list[torch.Tensor | None], torch.Tensor]:
        """Tangents of every layer's pre-activation z_l (the last is d mean) and input h_{l-1}
        (None for the observations), and of log_std."""
        dzs, dhs = [], [None]
        for i, (w, b) in enumerate(self.layers):
            dz = torch.baddbmm(tangent[b].unsqueeze(-2), self.inputs[i], tangent[w].mT)
            if dhs[i] is not None:
                dz.baddbmm_(dhs[i], self.weights[i].mT)
            dzs.append(dz)
            if i < len(self.layers) - 1:
                dhs.append(self.slopes[i] * dz)
        return dzs, dhs, tangent["log_std"] * self.std_mask

    def vjp(self, grad_mean: torch.Tensor, grad_log_std: torch.Tensor) -> tuple[Params, list[torch.Tensor]]:
        """Parameter gradient from cotangents of mean [N, R, a] and log_std [N, a] (backprop),
        and the cotangent of every layer's pre-activation."""
        out: Params = {"log_std": grad_log_std * self.std_mask}
        grad_zs: list[torch.Tensor] = [grad_mean] * len(self.layers)
        gz = grad_mean
        for i in reversed(range(len(self.layers))):
            w, b = self.layers[i]
            grad_zs[i] = gz
            out[w], out[b] = _weight_grad(gz, self.inputs[i]), gz.sum(-2)
            if i > 0:
                gz = (gz @ self.weights[i]).mul_(self.slopes[i - 1])
        return out, grad_zs


class InnerCurvature:
    """Products with the Hessian of each task's inner loss (Σ_r c_r log π(a_r|s_r), c = −A·weight)
    at stacked parameters θ_j; also the inner step itself."""

    def __init__(self, policy: GaussianMLPPolicy, params: Params, stage: Stage, second_order: bool = True):
        self.tape = tape = MLPTape(policy, params, stage.obs.flatten(1, 2))
        self.c = (-stage.advantages * row_weights(stage.mask)).flatten(1, 2)[..., None]  # [N, R, 1]
        self.inv_std = (-tape.log_std).exp()  # [N, 1, a]
        self.u = (stage.actions.flatten(1, 2) - tape.mean) * self.inv_std  # standardised actions
        grad_mean = self.c * self.u * self.inv_std  # ∂ℓ/∂mean
        grad_log_std = (self.c * (self.u.square() - 1)).sum(-2)  # ∂ℓ/∂log_std
        self.grad, self.grad_zs = tape.vjp(grad_mean, grad_log_std)
        # act''(z_l) ⊙ ∂ℓ/∂h_l: how the backward pass changes with the forward one
        self.curv = [
            None if second is None or not second_order else second * (self.grad_zs[i + 1] @ tape.weights[i + 1])
            for i, second in enumerate(tape.second)
        ]

    def hvp(self, v: Params) -> Params:
        """H_j v per task (v stacked): the tangent of the backward pass (forward-over-reverse)."""
        tape, c, u, inv_std = self.tape, self.c, self.u, self.inv_std
        dzs, dhs, ds = tape.jvp(v)
        ds = ds[:, None, :]
        d_grad_mean = c * (-inv_std.square() * dzs[-1] - 2 * u * inv_std * ds)
        d_grad_log_std = (c * (-2 * u * inv_std * dzs[-1] - 2 * u.square() * ds)).sum(-2)
        out: Params = {"log_std": d_grad_log_std * tape.std_mask}
        dgz = d_grad_mean
        for i in reversed(range(len(tape.layers))):
            w, b = tape.layers[i]
            gz = self.grad_zs[i]
            out[w], out[b] = _weight_grad(dgz, tape.inputs[i]), dgz.sum(-2)
            if i > 0:  # d(gz_{l-1}) = act' ⊙ d(gh_{l-1}) + act'' ⊙ dz_{l-1} ⊙ gh_{l-1}
                out[w].baddbmm_(gz.mT, dhs[i])
                dgz = (dgz @ tape.weights[i]).baddbmm_(gz, v[w]).mul_(tape.slopes[i - 1])
                if self.curv[i - 1] is not None:
                    dgz.addcmul_(self.curv[i - 1], dzs[i - 1])
        return out


def row_weights(mask: torch.Tensor) -> torch.Tensor:
    """Per-step weights w with Σ w·x = episode_mean(x) for each task: mask / (length · valid episodes)."""
    return mask / (mask.sum(-1, keepdim=True).clamp_min(1.0) * valid_episodes(mask)[..., None, None])


class _TaskGroupCurvature:
    """The closed forms for a group of tasks; `n_total` tasks in all (the means are over them)."""

    def __init__(self, policy: GaussianMLPPolicy, params: Params, inner: list[Stage], post: Stage,
                 config: MAMLConfig, n_total: int, inner_lr: InnerLR):
        n = post.obs.shape[0]
        self.config, self.n, self.n_total, self.inner_lr = config, n, n_total, inner_lr
        self.inner: list[InnerCurvature] = []
        theta = {k: p.detach().expand(n, *p.shape) for k, p in params.items()}
        # post_std learned: post_log_std is no input of the inner losses (H_j and the inner steps
        # leave it alone) and becomes the adapted policies' log σ: θ'(θ) = P(θ_k), P copying it
        carried = {POST_LOG_STD: theta.pop(POST_LOG_STD)} if POST_LOG_STD in theta and inner else {}
        for stage in inner:
            curvature = InnerCurvature(policy, theta, stage)
            if not config.first_order:
                self.inner.append(curvature)
            theta = {k: p - step_size(inner_lr, k) * curvature.grad[k] for k, p in theta.items()}
        self.post_std = bool(carried)
        self.adapted = {**theta, **carried, "log_std": carried[POST_LOG_STD]} if carried else theta
        # at θ_old every ratio is 1: the surrogate is −mean(A) and its gradient w.r.t. θ'_i is the
        # policy gradient of task i's post-update episodes (divided by the number of tasks)
        self.post_gradient = InnerCurvature(policy, self.adapted, post, second_order=False)
        self.post = self.post_gradient.tape
        self.post_weights = (row_weights(post.mask) / n_total).flatten(1, 2)[..., None]  # KL = Σ w·KL_r

    def fisher(self, u: Params) -> Params:
        """F u per task: the Gauss-Newton product of the Gaussian KL (1/σ² on the mean, 2 on log σ)."""
        tape = self.post
        dzs, _, ds = tape.jvp(u)
        grad_mean = self.post_weights * (-2 * tape.log_std).exp() * dzs[-1]
        grad_log_std = 2 * self.post_weights.sum(-2) * ds
        return tape.vjp(grad_mean, grad_log_std)[0]

    def jacobian(self, x: Params, transpose: bool) -> Params:
        """J x (θ tangent -> θ' tangents) or Jᵀ x; J = Π_j (I − diag(α) H_j), each H_j symmetric,
        so each factor's transpose is I − H_j diag(α)."""
        lr = partial(step_size, self.inner_lr)
        carried: Params = {}
        if self.post_std:  # J = P Π_j (…): Pᵀ moves the log σ tangent to post_log_std
            if transpose:
                x, carried = {**x, "log_std": torch.zeros_like(x["log_std"])}, {POST_LOG_STD: x["log_std"]}
            else:
                x = dict(x)
                carried = {POST_LOG_STD: x.pop(POST_LOG_STD)}
        for h in reversed(self.inner) if transpose else self.inner:
            if transpose:
                hx = h.hvp({k: lr(k) * t for k, t in x.items()})
                x = {k: x[k] - hx[k] for k in x}
            else:
                hx = h.hvp(x)
                x = {k: x[k] - lr(k) * hx[k] for k in x}
        if self.post_std and not transpose:
            return {**x, "log_std": carried[POST_LOG_STD]}
        return {**x, **carried}

    def meta_gradient(self, like: Params) -> torch.Tensor:
        x = self.jacobian({k: g / self.n_total for k, g in self.post_gradient.grad.items()}, transpose=True)
        return flat(x[k].sum(0) for k in like)

    def kl_hessian(self, v: Params) -> torch.Tensor:
        x = {k: t.expand(self.n, *t.shape) for k, t in v.items()}
        x = self.jacobian(self.fisher(self.jacobian(x, transpose=False)), transpose=True)
        return flat(x[k].sum(0) for k in v)


class KLCurvature:
    """The closed forms TRPO needs at θ_old: the meta-gradient Jᵀ ∇θ' L_post and the KL
    Hessian-vector product v ↦ Jᵀ F J v. Built once per update from the inner stages and the
    post-update episodes; also gives the old adapted policies' post-update distributions.

    On CPU the tasks are processed a few at a time (`tasks_per_group`, default: about 1 MB of
    activations per layer) so that the intermediate arrays stay in cache; on a GPU all at once.
    """

    def __init__(self, policy: GaussianMLPPolicy, params: Params, inner: list[Stage], post: Stage,
                 config: MAMLConfig, tasks_per_group: int | None = None, inner_lr: InnerLR | None = None):
        n, rows = post.obs.shape[0], post.mask[0].numel()
        if tasks_per_group is None:
            on_gpu = post.obs.device.type != "cpu"
            tasks_per_group = n if on_gpu else max(1, 2**18 // (rows * max(config.hidden_sizes)))
        self.groups = []
        for a in range(0, n, tasks_per_group):
            part = slice(a, a + tasks_per_group)
            group_inner = [Stage(*(x[part] for x in stage)) for stage in inner]
            group_post = Stage(*(x[part] for x in post))
            self.groups.append(_TaskGroupCurvature(policy, params, group_inner, group_post, config, n,
                                                   config.inner_lr if inner_lr is None else inner_lr))
        self.adapted = {k: torch.cat([g.adapted[k] for g in self.groups]) for k in params}
        shape = post.actions.shape
        self.old_mean = torch.cat([g.post.mean for g in self.groups]).view(shape)
        self.old_log_std = torch.cat([g.post.log_std for g in self.groups]).unsqueeze(1).expand(shape)
        self.loss = -episode_mean(post.advantages, post.mask).mean()

    def meta_gradient(self, like: Params) -> torch.Tensor:
        """∇θ of the surrogate at θ_old, flat: Jᵀ applied to the post-update gradients, summed."""
        return sum(g.meta_gradient(like) for g in self.groups)

    def __call__(self, v: torch.Tensor, like: Params) -> torch.Tensor:
        """Jᵀ F J v for a flat θ-vector v (no damping)."""
        tangent = unflat(v, like)
        return sum(g.kl_hessian(tangent) for g in self.groups)


def surrogate_and_kl(policy: nn.Module, params: Params, inner: list[Stage], post: Stage,
                     old_mean: torch.Tensor, old_log_std: torch.Tensor, config: MAMLConfig,
                     inner_lr: InnerLR | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The MAML-TRPO objective of θ: adapt every task, then on its post-update episodes
    loss = −mean_i mean(π_θ'_i(a|s) / π_old(a|s) · A) and kl = mean_i mean KL(π_old ‖ π_θ'_i),
    where π_old are the adapted policies of the θ the episodes were judged against."""
    inner_lr = config.inner_lr if inner_lr is None else inner_lr
    adapted = adapted_params(policy, params, inner, post.obs.shape[0], inner_lr, config.first_order)
    mean, log_std = per_task_forward(policy, adapted, post.obs)
    ratio = (gaussian_log_prob(mean, log_std, post.actions) - post.logp).exp()
    loss = -episode_mean(ratio * post.advantages, post.mask).mean()
    kl = episode_mean(gaussian_kl(old_mean, old_log_std, mean, log_std), post.mask).mean()
    return loss, kl


def trpo_step(objective: Callable[[Params], tuple[torch.Tensor, torch.Tensor]], params: Params,
              config: MAMLConfig, closed_form: KLCurvature | None = None) -> tuple[Params, dict[str, float]]:
    """One TRPO step on θ (Schulman et al. 2015, as pytorch-maml-rl's MAMLTRPO).

    Natural-gradient direction by conjugate gradient on Hessian-vector products of the mean KL
    (through the inner step unless first-order), scaled so the quadratic KL model equals max_kl,
    then a backtracking line search that accepts the first step with KL < max_kl and a lower
    loss. If none qualifies θ is returned unchanged.

    `objective(θ)` -> (surrogate loss, mean KL). Without `closed_form` autograd differentiates
    it: once for the meta-gradient, twice for the KL Hessian (as pytorch-maml-rl); with it (a
    `KLCurvature` built at `params`) both come from its closed forms.
    """
    names, values = list(params), list(params.values())
    if closed_form is None:
        loss, kl = objective(params)
        # materialize_grads: a parameter the objective does not reach gets a zero gradient (the
        # exploring log σ with post_std learned and first-order)
        g = flat(torch.autograd.grad(loss, values, retain_graph=True, materialize_grads=True))
        grad_kl = flat(torch.autograd.grad(kl, values, create_graph=True, materialize_grads=True))

        def kl_hessian(v: torch.Tensor) -> torch.Tensor:
            return flat(torch.autograd.grad(grad_kl @ v, values, retain_graph=True, materialize_grads=True))
    else:
        loss, g = closed_form.loss, closed_form.meta_gradient(params)
        kl_hessian = partial(closed_form, like=params)

    def kl_hvp(v: torch.Tensor) -> torch.Tensor:
        return kl_hessian(v) + config.cg_damping * v

    step_dir, residual = conjugate_gradient(kl_hvp, g, config.cg_iters)
    shs = 0.5 * (step_dir @ (g - residual))  # ½ sᵀ(H + λI)s
    stats = {"meta_loss_before": loss.item(), "grad_norm": g.norm().item(), "ls_steps": float(config.ls_max_steps),
             "step_accepted": 0.0, "meta_loss": loss.item(), "kl": 0.0}
    if not (torch.isfinite(shs) and shs > 0):
        return params, stats
    full_step = step_dir * torch.sqrt(config.max_kl / shs)
    old = flat(values).detach()
    step_size = 1.0
    with torch.no_grad():
        for i in range(config.ls_max_steps):
            candidate = unflat(old - step_size * full_step, dict(zip(names, values, strict=True)))
            new_loss, new_kl = objective(candidate)
            if new_loss.item() < loss.item() and new_kl.item() < config.max_kl:
                stats.update(ls_steps=float(i), step_accepted=1.0, meta_loss=new_loss.item(), kl=new_kl.item())
                return candidate, stats
            step_size *= config.ls_backtrack_ratio
    return params, stats


class MAMLLearner:
    """Learner side: the inner steps recomputed from the workers' data, batched over tasks, then
    the outer step chosen by `config.outer`.

    Stats: meta_loss_before/meta_loss (surrogate before/after the step), kl (old vs new adapted
    policies on the post-update episodes), grad_norm, return_pre/return_post (the workers' mean
    episode returns), and per outer step ls_steps/step_accepted (trpo), inner_kl/clip_frac (ppo-clip).
    """

    def __init__(self, policy: GaussianMLPPolicy, config: MAMLConfig, device: torch.device, seed: int):
        self.config = config
        self.device = torch.device(device)
        self.policy = policy.to(self.device)
        self.dtype = next(self.policy.parameters()).dtype
        self.generator = torch.Generator().manual_seed(seed)  # the MAML updates draw no randomness
        # α of every inner step the learner recomputes; a per-parameter dict when a caller
        # meta-learns it (Meta-SGD, adversarial.py's learn_inner_lr)
        self.inner_lr: InnerLR = config.inner_lr
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.ppo_lr) if config.outer == "ppo-clip" else None

    def stages(self, results: list[TaskResult]) -> tuple[list[Stage], Stage]:
        """Stack the tasks' results into the inner stages and the post stage, [N, E, T, ...]."""
        names = stage_names(self.config.num_inner_steps)
        missing = [f"{s}/obs" for s in names if f"{s}/obs" not in results[0]]
        if missing:
            raise ValueError(f"results lack {missing} (num_inner_steps={self.config.num_inner_steps})")
        built = []
        for s in names:
            arrays = {k: np.stack([r[f"{s}/{k}"] for r in results]) for k in FIELDS}
            built.append(Stage.from_arrays(arrays, self.config, self.dtype, self.device))
        return built[:-1], built[-1]

    def update(self, results: list[TaskResult]) -> dict[str, float]:
        inner, post = self.stages(results)
        params = dict(self.policy.named_parameters())
        if self.config.outer == "trpo":
            stats = self._trpo(params, inner, post)
        elif self.config.outer == "ppo-clip":
            stats = self._ppo_clip(params, inner, post)
        else:
            stats = self._reptile(params, inner, post)
        stats.update(
            return_pre=finite_mean(r["return_pre"] for r in results),
            return_post=finite_mean(r["return_post"] for r in results),
            num_tasks=float(len(results)),
            **self.noise_stats(),
        )
        return stats

    def noise_stats(self) -> dict[str, float]:
        """Mean log σ of the exploring policy, and of the adapted ones with post_std: learned."""
        out = {"log_std": self.policy.log_std.mean().item()}
        if hasattr(self.policy, POST_LOG_STD):
            out["post_log_std"] = self.policy.post_log_std.mean().item()
        return out

    def _old_post_policy(self, params: Params, inner: list[Stage], post: Stage) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean, log_std, log-prob of the taken actions) of the adapted policies of the current θ."""
        with torch.no_grad():
            adapted = adapted_params(self.policy, params, inner, post.obs.shape[0], self.inner_lr)
            mean, log_std = per_task_forward(self.policy, adapted, post.obs)
            return mean, log_std, gaussian_log_prob(mean, log_std, post.actions)

    def _trpo(self, params: Params, inner: list[Stage], post: Stage) -> dict[str, float]:
        with torch.no_grad():
            curvature = KLCurvature(self.policy, params, inner, post, self.config, inner_lr=self.inner_lr)
            old_mean, old_log_std = curvature.old_mean, curvature.old_log_std
            old_logp = gaussian_log_prob(old_mean, old_log_std, post.actions)
        behaviour_err = ((old_logp - post.logp).abs() * post.mask).max().item()
        post = post._replace(logp=old_logp)  # ratio 1 at the current θ, as pytorch-maml-rl
        objective = partial(self._objective, inner=inner, post=post, old_mean=old_mean, old_log_std=old_log_std)
        closed_form = curvature if self.config.closed_form else None
        new_params, stats = trpo_step(objective, params, self.config, closed_form)
        with torch.no_grad():
            for name, p in self.policy.named_parameters():
                p.copy_(new_params[name])
        stats["behaviour_logp_err"] = behaviour_err
        return stats

    def _objective(self, params: Params, inner: list[Stage], post: Stage, old_mean: torch.Tensor,
                   old_log_std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return surrogate_and_kl(self.policy, params, inner, post, old_mean, old_log_std, self.config, self.inner_lr)

    def _ppo_clip(self, params: Params, inner: list[Stage], post: Stage) -> dict[str, float]:
        """ProMP (Rothfuss et al. 2019): clipped surrogate of the adapted policies on the
        post-update episodes (ratio against the behaviour log-probs), plus inner_kl_coef × the
        KL between old and new pre-update policies of every inner step; full-batch Adam steps."""
        cfg, policy = self.config, self.policy
        assert self.optimizer is not None
        with torch.no_grad():  # the pre-update policies of the old θ, one per inner stage
            thetas = [params, *adapt(policy, params, inner, self.inner_lr)][:len(inner)]
            old_pre = [
                policy_forward(policy, th, st.obs) if j == 0 else per_task_forward(policy, th, st.obs)
                for j, (th, st) in enumerate(zip(thetas, inner, strict=True))
            ]
            old_mean, old_log_std, _ = self._old_post_policy(params, inner, post)
        stats = {"meta_loss_before": 0.0, "inner_kl": 0.0, "clip_frac": 0.0, "grad_norm": 0.0}
        for epoch in range(cfg.ppo_epochs):
            adapted = adapt(policy, params, inner, self.inner_lr, cfg.first_order)
            final = adapted[-1] if adapted else adapted_params(policy, params, inner, post.obs.shape[0], self.inner_lr)
            inner_kl = torch.zeros((), dtype=self.dtype, device=self.device)
            for j, (stage, (m_old, s_old)) in enumerate(zip(inner, old_pre, strict=True)):
                mean, log_std = policy_forward(policy, params, stage.obs) if j == 0 else per_task_forward(policy, adapted[j - 1], stage.obs)
                inner_kl = inner_kl + episode_mean(gaussian_kl(m_old, s_old, mean, log_std), stage.mask).mean()
            mean, log_std = per_task_forward(policy, final, post.obs)
            ratio = (gaussian_log_prob(mean, log_std, post.actions) - post.logp).exp()
            clipped = ratio.clamp(1 - cfg.ppo_clip, 1 + cfg.ppo_clip)
            surrogate = -episode_mean(torch.min(ratio * post.advantages, clipped * post.advantages), post.mask).mean()
            loss = surrogate + cfg.inner_kl_coef * inner_kl
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = flat(torch.zeros_like(p) if p.grad is None else p.grad for p in policy.parameters()).norm()
            self.optimizer.step()
            if epoch == 0:
                stats["meta_loss_before"] = surrogate.item()
            stats["inner_kl"] += inner_kl.item() / cfg.ppo_epochs
            stats["clip_frac"] += episode_mean(((ratio - 1).abs() > cfg.ppo_clip).to(self.dtype), post.mask).mean().item() / cfg.ppo_epochs
            stats["grad_norm"] += grad_norm.item() / cfg.ppo_epochs
        with torch.no_grad():  # the unclipped surrogate and the post-update KL after the epochs
            loss_after, kl_after = self._objective(params, inner, post, old_mean, old_log_std)
        stats.update(meta_loss=loss_after.item(), kl=kl_after.item())
        return stats

    def _reptile(self, params: Params, inner: list[Stage], post: Stage) -> dict[str, float]:
        """θ ← θ + ε · mean_i(φ_i − θ), φ_i = θ after the k inner steps (recomputed from the
        inner stages, = the worker's θ'_i) and one more step on the post-update episodes.
        Reptile has no surrogate: meta_loss and kl are reported as 0, grad_norm is |mean Δ|."""
        cfg, policy = self.config, self.policy
        with torch.no_grad():
            adapted = adapted_params(policy, params, inner, post.obs.shape[0], self.inner_lr)
            phi = inner_step(policy, adapted, post, self.inner_lr, per_task=True)
            delta = {k: (phi[k] - p).mean(0) for k, p in params.items()}
            for k, p in params.items():
                p.add_(cfg.reptile_lr * delta[k])
        return {"meta_loss": 0.0, "kl": 0.0, "grad_norm": flat(delta.values()).norm().item()}

    def optimizer_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Adam state for ppo-clip; trpo and reptile keep no optimizer state."""
        return ({}, {}) if self.optimizer is None else optimizer_tensors(self.optimizer)

    def load_optimizer_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        if self.optimizer is not None:
            load_optimizer_tensors(self.optimizer, tensors, meta, self.device)


def evaluate(
    policy: GaussianMLPPolicy, family: TaskFamily, tasks: list[Task], config: MAMLConfig, seed: int
) -> list[dict[str, Any]]:
    """Return before and after the configured inner steps, per task (meta_batch_size at a time)."""
    sampler = MAMLSampler(family, config, config.episodes_per_task, seed)
    sampler.set_weights(0, get_weights(policy))
    out = []
    for start in range(0, len(tasks), config.meta_batch_size):
        for r in sampler.collect(tasks[start : start + config.meta_batch_size], 0):
            out.append({"task_id": int(r["task_id"]), "return_pre": float(r["return_pre"]), "return_post": float(r["return_post"]),
                        **({"success_rate_pre": float(r["success_pre"]), "success_rate": float(r["success_post"])}
                           if "success_post" in r else {})})
    return out


# The algorithm interface the runtime uses (see metaray.learner.get_algorithm).
name = "maml"
mode = "sync"
Config = MAMLConfig
Sampler = MAMLSampler
Learner = MAMLLearner
