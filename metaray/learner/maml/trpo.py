"""TRPO for MAML (Schulman et al. 2015, as pytorch-maml-rl's MAMLTRPO): the surrogate and KL of
the adapted policies, conjugate gradient, and the step with its backtracking line search."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from metaray.learner.maml.adaptation import InnerLR, adapted_params
from metaray.learner.maml.config import MAMLConfig
from metaray.learner.maml.curvature import KLCurvature
from metaray.learner.maml.returns import Stage, episode_mean
from metaray.networks import Params, flat, gaussian_kl, gaussian_log_prob, per_task_forward, unflat


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


def surrogate_and_kl(policy: nn.Module, params: Params, inner: list[Stage], post: Stage,
                     old_mean: torch.Tensor, old_log_std: torch.Tensor, config: MAMLConfig,
                     inner_lr: InnerLR | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The MAML-TRPO objective of θ: adapt every task, then on its post-update episodes
    loss = −mean_i mean(π_θ'_i(a|s) / π_old(a|s) · A) and kl = mean_i mean KL(π_old ‖ π_θ'_i),
    where π_old are the adapted policies of the θ the episodes were judged against."""
    inner_lr = config.inner_lr if inner_lr is None else inner_lr
    adapted = adapted_params(policy, params, inner, post.obs.shape[0], inner_lr, config.first_order)
    return post_surrogate_and_kl(policy, adapted, post, old_mean, old_log_std)


def post_surrogate_and_kl(policy: nn.Module, adapted: Params, post: Stage, old_mean: torch.Tensor,
                          old_log_std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`surrogate_and_kl` from the adapted parameters θ'_i (stacked)."""
    mean, log_std = per_task_forward(policy, adapted, post.obs)
    ratio = (gaussian_log_prob(mean, log_std, post.actions) - post.logp).exp()
    loss = -episode_mean(ratio * post.advantages, post.mask).mean()
    kl = episode_mean(gaussian_kl(old_mean, old_log_std, mean, log_std), post.mask).mean()
    return loss, kl


def trpo_step(objective: Callable[[Params], tuple[torch.Tensor, torch.Tensor]], params: Params,
              config: MAMLConfig, closed_form: KLCurvature | None = None,
              closed_form_gradient: bool = True,
              kl_objective: Callable[[Params], tuple[torch.Tensor, torch.Tensor]] | None = None) -> tuple[Params, dict[str, float]]:
    """One TRPO step on θ (Schulman et al. 2015, as pytorch-maml-rl's MAMLTRPO).

    Natural-gradient direction by conjugate gradient on Hessian-vector products of the mean KL
    (through the inner step unless first-order), scaled so the quadratic KL model equals max_kl,
    then a backtracking line search that accepts the first step with KL < max_kl and a lower
    loss. If none qualifies θ is returned unchanged.

    `objective(θ)` -> (surrogate loss, mean KL). Without `closed_form` autograd differentiates
    it: once for the meta-gradient, twice for the KL Hessian (as pytorch-maml-rl); with it (a
    `KLCurvature` built at `params`) both come from its closed forms, or only the KL Hessian
    with `closed_form_gradient=False` (a learned inner rule: the meta-gradient goes through it
    by autograd, exactly; the curvature holds its coefficients fixed). `kl_objective`: the
    objective whose KL autograd's Hessian is taken of (a subsample of the tasks,
    `cg_subsample`); default `objective`.
    """
    names, values = list(params), list(params.values())
    if closed_form is not None and not closed_form_gradient:
        loss, _ = objective(params)
        g = flat(torch.autograd.grad(loss, values, materialize_grads=True))
        kl_hessian = partial(closed_form, like=params)
    elif closed_form is None:
        loss, kl = objective(params)
        if kl_objective is not None:
            kl = kl_objective(params)[1]
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

