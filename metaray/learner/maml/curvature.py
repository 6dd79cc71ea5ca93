"""Closed forms for MAML-TRPO: the meta-gradient and the KL Hessian-vector products at θ_old.

θ'(θ) = θ_k with θ_{j+1} = θ_j − α ∇ℓ_j(θ_j), so J = dθ'/dθ = Π_j (I − α H_j), H_j the Hessian
of the inner loss at θ_j (per task; J = I when first-order). The meta-gradient is Jᵀ ∇θ' L.
At θ_old the mean KL between old and new adapted policies has zero gradient w.r.t. θ', so its
Hessian w.r.t. θ is exactly Jᵀ F J, F the KL Hessian w.r.t. θ' (the Gaussian's Fisher matrix,
a Gauss-Newton product). The products with H_j and F are written out below for the MLP from
values cached once per update: each conjugate-gradient iteration costs a few matrix products
per layer instead of a backward pass through a double-backward graph. Everything is stacked
over tasks: tensors [N, R, ...], R = E·T rows. Tests check both against autograd.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

import torch

from metaray.learner.maml.adaptation import POST_LOG_STD, StepSizes, step_size
from metaray.learner.maml.config import MAMLConfig
from metaray.learner.maml.inner_optimizers import InnerOptimizer
from metaray.learner.maml.returns import Stage, episode_mean, valid_episodes
from metaray.networks import (
    MIN_LOG_STD,
    GaussianMLPPolicy,
    Params,
    flat,
    gaussian_kl,
    gaussian_log_prob,
    per_task_forward,
    unflat,
)

_T = TypeVar("_T")
_R = TypeVar("_R")
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def map_tasks(fn: Callable[[_T], _R], items: Iterable[_T]) -> list[_R]:
    """`[fn(x) for x in items]`, the items spread over the learner's torch threads, each running
    with one intra-op thread; results in order (sums over them stay deterministic).

    The closed forms work task by task on [R, 100]-sized matrices, which torch's intra-op threads
    split with a barrier per product: on a quiet machine that is as fast as whole tasks side by
    side, but with one other busy process on the cores every barrier waits for it (halfcheetah-vel
    update with 2 threads: 7.3 s intra-op vs 3.3 s side by side, 3.3 s with one thread;
    benchmarks/maml_task_threads.py). torch's thread count is process-wide, so it is 1 while the
    map runs, restored after."""
    items = list(items)
    threads = torch.get_num_threads()
    if threads <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._max_workers < threads:
            _POOL = ThreadPoolExecutor(threads, thread_name_prefix="maml-tasks")
        pool = _POOL
    torch.set_num_threads(1)
    try:
        grad_mode = torch.is_grad_enabled()

        def call(x: _T) -> _R:
            with torch.set_grad_enabled(grad_mode):  # grad mode is per thread
                return fn(x)

        return list(pool.map(call, items))
    finally:
        torch.set_num_threads(threads)


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
        log_prob = -0.5 * self.u.square() - tape.log_std - 0.5 * math.log(2 * math.pi)
        self.loss = (self.c * log_prob).sum((-2, -1))  # ℓ per task: what a learned rule reads
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
    """The closed forms for a group of tasks; `n_total` tasks in all (the means are over them).

    Inner step j: θ_{j+1} = (1 − d_j) ⊙ θ_j − s_j ⊙ g_j, with s_j the step size(s) (d_j = 0),
    or both from a learned rule's `linear_coefficients` (per task and entry), held fixed in J."""

    def __init__(self, policy: GaussianMLPPolicy, params: Params, inner: list[Stage], post: Stage,
                 config: MAMLConfig, n_total: int, inner_lr: StepSizes | InnerOptimizer):
        n = post.obs.shape[0]
        self.config, self.n, self.n_total = config, n, n_total
        # the factors of J, one per inner step: (H_j's products, s_j, d_j); first-order: no H_j,
        # and only a step with a decay (d_j ≠ 0) is more than the identity
        self.steps: list[tuple[InnerCurvature | None, StepSizes, Params | None]] = []
        memory: dict[str, torch.Tensor] = {}
        theta = {k: p.detach().expand(n, *p.shape) for k, p in params.items()}
        # post_std learned: post_log_std is no input of the inner losses (H_j and the inner steps
        # leave it alone) and becomes the adapted policies' log σ: θ'(θ) = P(θ_k), P copying it
        carried = {POST_LOG_STD: theta.pop(POST_LOG_STD)} if POST_LOG_STD in theta and inner else {}
        for stage in inner:
            curvature = InnerCurvature(policy, theta, stage)
            if isinstance(inner_lr, InnerOptimizer):
                # the rule also moves post_log_std (zero gradient; coordinate-wise, its rows
                # change no other entry's coefficients): handed over here, its own left unused
                ruled, grads = {**theta, **carried}, {**curvature.grad, **{k: torch.zeros_like(v) for k, v in carried.items()}}
                coefficients = inner_lr.linear_coefficients(ruled, grads, curvature.loss, memory)
                assert coefficients is not None, "a rule without linear_coefficients has no closed form"
                step, decay = coefficients
            else:
                step, decay = inner_lr, None
            if not config.first_order:
                self.steps.append((curvature, step, decay))
            elif decay is not None:
                self.steps.append((None, step, decay))
            theta = {k: (p if decay is None else (1 - decay[k]) * p) - step_size(step, k) * curvature.grad[k]
                     for k, p in theta.items()}
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
        """J x (θ tangent -> θ' tangents) or Jᵀ x; J = Π_j (diag(1 − d_j) − diag(s_j) H_j), each
        H_j symmetric, so each factor's transpose is diag(1 − d_j) − H_j diag(s_j); first-order
        (H_j taken as 0) J = Π_j diag(1 − d_j)."""
        carried: Params = {}
        if self.post_std:  # J = P Π_j (…): Pᵀ moves the log σ tangent to post_log_std
            if transpose:
                x, carried = {**x, "log_std": torch.zeros_like(x["log_std"])}, {POST_LOG_STD: x["log_std"]}
            else:
                x = dict(x)
                carried = {POST_LOG_STD: x.pop(POST_LOG_STD)}
        for h, step, decay in reversed(self.steps) if transpose else self.steps:
            lr = partial(step_size, step)
            kept = x if decay is None else {k: (1 - decay[k]) * t for k, t in x.items()}
            if h is None:  # first-order: the inner gradient is a constant, d_j alone scales
                x = kept
            elif transpose:
                hx = h.hvp({k: lr(k) * t for k, t in x.items()})
                x = {k: kept[k] - hx[k] for k in x}
            else:
                hx = h.hvp(x)
                x = {k: kept[k] - lr(k) * hx[k] for k in x}
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


def group_size(post: Stage, config: MAMLConfig) -> int:
    """Tasks per group for the closed forms: on CPU about 1 MB of activations per layer, so that
    the intermediate arrays stay in cache; on a GPU all tasks at once."""
    n, rows = post.obs.shape[0], post.mask[0].numel()
    return n if post.obs.device.type != "cpu" else max(1, 2**18 // (rows * max(config.hidden_sizes)))


def task_order(n: int, subsample: float, generator: torch.Generator | None) -> tuple[torch.Tensor, int]:
    """(an order of the n tasks, m): the first m of it are the `subsample` of tasks the KL
    Hessian is estimated on (all n, in order, when `subsample` ≥ 1). The closed form and the
    autograd path draw the same tasks from generators seeded alike."""
    m = n if subsample >= 1 else max(1, min(n, round(subsample * n)))
    return (torch.arange(n) if m == n else torch.randperm(n, generator=generator)), m


class KLCurvature:
    """The closed forms TRPO needs at θ_old: the meta-gradient Jᵀ ∇θ' L_post and the KL
    Hessian-vector product v ↦ Jᵀ F J v. Built once per update from the inner stages and the
    post-update episodes; also gives the old adapted policies' post-update distributions.

    The tasks are processed a group at a time (`tasks_per_group`, default `group_size`), the
    groups side by side on the learner's threads (`map_tasks`).

    `subsample` < 1: the KL Hessian (what conjugate gradient multiplies by, ten times per
    update) is estimated on that fraction of the tasks, drawn with `generator`, scaled to the
    whole meta-batch (rllab's and garage's `subsample_factor`, over tasks); the meta-gradient,
    the old policies and the line search use every task.
    """

    def __init__(self, policy: GaussianMLPPolicy, params: Params, inner: list[Stage], post: Stage,
                 config: MAMLConfig, tasks_per_group: int | None = None, inner_lr: StepSizes | InnerOptimizer | None = None,
                 subsample: float = 1.0, generator: torch.Generator | None = None):
        n = post.obs.shape[0]
        tasks_per_group = group_size(post, config) if tasks_per_group is None else tasks_per_group
        order, m = task_order(n, subsample, generator)
        # the groups: the first ones hold the Hessian's subsample of tasks (whole groups)
        parts = [part_order[a:a + tasks_per_group].to(post.obs.device)
                 for part_order in (order[:m], order[m:]) for a in range(0, len(part_order), tasks_per_group)]
        rule = config.inner_lr if inner_lr is None else inner_lr

        def build(part: torch.Tensor) -> _TaskGroupCurvature:
            group_inner = [Stage(*(x[part] for x in stage)) for stage in inner]
            return _TaskGroupCurvature(policy, params, group_inner, Stage(*(x[part] for x in post)), config, n, rule)

        self.groups = map_tasks(build, parts)
        self.hessian_groups = self.groups[:-(-m // tasks_per_group)]
        self.hessian_scale = n / m
        inverse = torch.argsort(order).to(post.obs.device)  # the groups' task order back to the batch's
        self.adapted = {k: torch.cat([g.adapted[k] for g in self.groups])[inverse] for k in params}
        shape = post.actions.shape
        self.old_mean = torch.cat([g.post.mean for g in self.groups])[inverse].view(shape)
        self.old_log_std = torch.cat([g.post.log_std for g in self.groups])[inverse].unsqueeze(1).expand(shape)
        self.loss = -episode_mean(post.advantages, post.mask).mean()

    def meta_gradient(self, like: Params) -> torch.Tensor:
        """∇θ of the surrogate at θ_old, flat: Jᵀ applied to the post-update gradients, summed."""
        return sum(map_tasks(partial(_TaskGroupCurvature.meta_gradient, like=like), self.groups))

    def __call__(self, v: torch.Tensor, like: Params) -> torch.Tensor:
        """Jᵀ F J v for a flat θ-vector v (no damping), over the subsample of tasks when set."""
        tangent = unflat(v, like)
        out = sum(map_tasks(partial(_TaskGroupCurvature.kl_hessian, v=tangent), self.hessian_groups))
        return out if self.hessian_scale == 1 else out * self.hessian_scale


def adapted_closed_form(policy: GaussianMLPPolicy, params: Params, inner: list[Stage], num_tasks: int,
                        inner_lr: StepSizes) -> Params:
    """θ'_i stacked per task after the inner steps, each step's gradient from the hand-written
    backward pass (no autograd): `adaptation.adapted_params` without a graph, for the line search."""
    theta = {k: p.detach().expand(num_tasks, *p.shape) for k, p in params.items()}
    if not inner:
        return theta
    carried = {POST_LOG_STD: theta.pop(POST_LOG_STD)} if POST_LOG_STD in theta else {}
    for stage in inner:
        grad = InnerCurvature(policy, theta, stage, second_order=False).grad
        theta = {k: p - step_size(inner_lr, k) * grad[k] for k, p in theta.items()}
    return {**theta, **carried, "log_std": carried[POST_LOG_STD]} if carried else theta


def line_search_objective(policy: GaussianMLPPolicy, params: Params, inner: list[Stage], post: Stage,
                          old_mean: torch.Tensor, old_log_std: torch.Tensor, inner_lr: StepSizes,
                          config: MAMLConfig, tasks_per_group: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`trpo.surrogate_and_kl` without a graph, for the line search: the inner steps by the
    hand-written backward pass, a group of tasks at a time on the learner's threads."""
    n = post.obs.shape[0]
    size = group_size(post, config) if tasks_per_group is None else tasks_per_group

    def group(a: int) -> tuple[torch.Tensor, torch.Tensor]:
        part = slice(a, a + size)
        stages = [Stage(*(x[part] for x in stage)) for stage in inner]
        sub = Stage(*(x[part] for x in post))
        adapted = adapted_closed_form(policy, params, stages, sub.obs.shape[0], inner_lr)
        mean, log_std = per_task_forward(policy, adapted, sub.obs)
        ratio = (gaussian_log_prob(mean, log_std, sub.actions) - sub.logp).exp()
        kl = gaussian_kl(old_mean[part], old_log_std[part], mean, log_std)
        return episode_mean(ratio * sub.advantages, sub.mask), episode_mean(kl, sub.mask)

    losses, kls = zip(*map_tasks(group, range(0, n, size)), strict=True)
    return -torch.cat(losses).mean(), torch.cat(kls).mean()
