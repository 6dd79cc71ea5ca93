"""The inner (adaptation) step, shared by the worker and the learner.

θ'_i = θ − α ∇θ L_inner(θ; task i's episodes), for all tasks at once with `vmap(grad(·))`;
under an outer autograd graph it is differentiable (second-order MAML).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from metaray.learner.maml.inner_optimizers import InnerOptimizer
from metaray.learner.maml.returns import Stage, episode_mean
from metaray.networks import Params, gaussian_log_prob, per_task_forward, policy_forward

# how an inner step moves θ: one step size α, one per parameter entry shaped as θ (Meta-SGD's,
# fixed), or a learned inner optimizer (`inner_optimizers`)
InnerLR = float | Params | InnerOptimizer
StepSizes = float | Params  # the fixed kinds: what the closed forms of `curvature` take


def inner_loss(policy: nn.Module, params: Params, obs: torch.Tensor, actions: torch.Tensor,
               advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Vanilla policy gradient loss of one task: −mean(log π(a|s) · A) over its episodes."""
    mean, log_std = policy_forward(policy, params, obs)
    return -episode_mean(gaussian_log_prob(mean, log_std, actions) * advantages, mask)


def step_size(inner_lr: StepSizes, name: str) -> float | torch.Tensor:
    """α for parameter `name`: the scalar, or its per-entry tensor (broadcasts over a task axis)."""
    return inner_lr[name] if isinstance(inner_lr, dict) else inner_lr


def inner_step(policy: nn.Module, params: Params, stage: Stage, inner_lr: InnerLR, per_task: bool,
               first_order: bool = False, memory: dict[str, torch.Tensor] | None = None) -> Params:
    """θ'_i = θ_i − α ∇ L_inner(θ_i; task i's episodes) for all tasks at once -> stacked params.
    α is a scalar or, per parameter entry, a dict shaped as θ (Meta-SGD; differentiable); a
    learned `InnerOptimizer` makes θ'_i from the gradients and losses instead, keeping its state
    across the steps of one adaptation in `memory`.

    `per_task=False`: `params` is one θ shared by all tasks (the first step); else stacked [N, ...].
    The gradient comes from `vmap(grad(...))` (a learned rule's, with the losses, from
    `inner_gradients`): under an outer autograd graph it is differentiable (second-order MAML);
    `first_order` detaches it, so dθ'/dθ = I (for a rule, what remains of θ in its update).
    """
    if isinstance(inner_lr, InnerOptimizer):
        grads, losses = inner_gradients(policy, params, stage, per_task, first_order)
        return inner_lr.update(params, grads, losses, {} if memory is None else memory)
    in_dims = (0 if per_task else None, 0, 0, 0, 0)
    grad_fn = torch.func.grad(partial(inner_loss, policy))
    grads = torch.vmap(grad_fn, in_dims=in_dims)(params, stage.obs, stage.actions, stage.advantages, stage.mask)
    if first_order:
        grads = {k: g.detach() for k, g in grads.items()}
    return {k: p - step_size(inner_lr, k) * grads[k] for k, p in params.items()}


def inner_gradients(policy: nn.Module, params: Params, stage: Stage, per_task: bool,
                    first_order: bool = False) -> tuple[Params, torch.Tensor]:
    """(∇ L_inner(θ_i) stacked [N, ...], L_inner(θ_i) [N]) for all tasks by one batched forward
    and plain autograd on Σ_i L_i (task i's loss depends only on its own θ_i, so the gradient
    with respect to the stacked θ_i is every task's own). The same values as
    vmap(grad_and_value(inner_loss)), and a graph autograd differentiates again faster (the
    TRPO step's Hessian-vector products through a learned inner optimizer). With a graph
    (θ requires grad, grad mode on, not `first_order`) the result is differentiable in θ."""
    n = stage.obs.shape[0]
    graph = torch.is_grad_enabled() and not first_order and any(p.requires_grad for p in params.values())
    with torch.enable_grad():
        stacked = {k: p if per_task else p.expand(n, *p.shape) for k, p in params.items()}
        if not graph:
            stacked = {k: p.detach().requires_grad_() for k, p in stacked.items()}
        mean, log_std = per_task_forward(policy, stacked, stage.obs)
        losses = -episode_mean(gaussian_log_prob(mean, log_std, stage.actions) * stage.advantages, stage.mask)
        grads = torch.autograd.grad(losses.sum(), list(stacked.values()), create_graph=graph, materialize_grads=True)
    if not graph:
        return {k: g.detach() for k, g in zip(stacked, grads, strict=True)}, losses.detach()
    return dict(zip(stacked, grads, strict=True)), losses


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
    theta, adapted, memory = params, [], {}
    for j, stage in enumerate(inner):
        params = inner_step(policy, params, stage, inner_lr, per_task=j > 0, first_order=first_order, memory=memory)
        adapted.append(params)
    if adapted:
        adapted[-1] = with_post_std(adapted[-1], theta)
    return adapted


def stage_names(num_inner_steps: int) -> list[str]:
    """The stages of a task's worker step: one per inner step, then the post-update one."""
    return [f"inner_{j}" for j in range(num_inner_steps)] + ["post"]

