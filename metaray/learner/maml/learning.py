"""The learner side of the MAML family: the inner steps recomputed from the workers' episodes,
batched over tasks, then the outer step on θ.

`OuterStep` is the outer step alone (trpo, ppo-clip or reptile) on a meta-batch's inner and
post stages; `MAMLLearner` feeds it the workers' TaskResults, and meta-adversarial imitation
feeds it episodes relabelled with its discriminator's reward.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from metaray.core import TaskResult, stack_stage
from metaray.learner.maml.adaptation import (
    POST_LOG_STD,
    InnerLR,
    adapt,
    adapted_params,
    inner_loss,
    inner_step,
    stage_names,
)
from metaray.learner.maml.config import MAMLConfig
from metaray.learner.maml.curvature import KLCurvature, line_search_objective, task_order
from metaray.learner.maml.inner_optimizers import InnerOptimizer, has_linear_form
from metaray.learner.maml.returns import Stage, episode_mean
from metaray.learner.maml.trpo import surrogate_and_kl, trpo_step
from metaray.learner.optim_state import load_optimizer_tensors, optimizer_tensors
from metaray.networks import (
    INNER_OPTIMIZER,
    GaussianMLPPolicy,
    Params,
    flat,
    gaussian_kl,
    gaussian_log_prob,
    per_task_forward,
    policy_forward,
)


class OuterStep:
    """The outer step chosen by `config.outer` on θ = the policy's parameters.

    `inner_lr` is what every recomputed inner step uses: the config's α, or with a learned inner
    optimizer on the policy (`maml.inner_optimizer`) that optimizer as it stands: Meta-SGD's α
    per entry (detached), or the LSTM module. The learned optimizer's own step: Adam on the
    gradient of the post-update policy-gradient loss at θ_old through the inner steps (taken
    before θ moves, applied after θ's step, which holds it fixed).
    Stats: meta_loss_before/meta_loss (surrogate before and after the step), kl (old vs new
    adapted policies on the post-update episodes), grad_norm, and per outer step
    ls_steps/step_accepted/behaviour_logp_err (trpo), inner_kl/clip_frac (ppo-clip),
    inner_lr_grad_norm and the optimizer's summary (learned inner optimizers).
    """

    def __init__(self, policy: GaussianMLPPolicy, config: MAMLConfig, device: torch.device, seed: int = 0):
        self.policy, self.config = policy, config
        self.device = torch.device(device)
        self.dtype = next(policy.parameters()).dtype
        self.fixed_inner_lr = config.inner_lr
        self.seed, self.steps = seed, 0  # the draws of cg_subsample: a function of both, so a resume repeats them
        theta = list(policy.theta().values())
        self.optimizer = torch.optim.Adam(theta, lr=config.ppo_lr) if config.outer == "ppo-clip" else None
        self.learned: InnerOptimizer | None = getattr(policy, INNER_OPTIMIZER, None)
        self.learned_optimizer = None if self.learned is None else torch.optim.Adam(
            self.learned.parameters(), lr=config.inner_optimizer_lr)

    @property
    def inner_lr(self) -> InnerLR:
        if self.learned is None:
            return self.fixed_inner_lr
        sizes = self.learned.step_sizes()
        return self.learned if sizes is None else {k: a.detach() for k, a in sizes.items()}

    def __call__(self, params: Params, inner: list[Stage], post: Stage) -> dict[str, float]:
        """One outer step from θ = `params` (the policy's own parameters, updated in place)."""
        step = {"trpo": self.trpo, "ppo-clip": self.ppo_clip}.get(self.config.outer, self.reptile)
        if self.learned is None:
            stats = step(params, inner, post)
        else:
            learned_grad_norm = self.learned_gradient(params, inner, post)  # at θ_old, before θ moves
            self.learned.requires_grad_(False)  # θ's step holds it fixed (and leaves its .grad alone)
            try:
                stats = step(params, inner, post)
            finally:
                self.learned.requires_grad_(True)
            assert self.learned_optimizer is not None
            self.learned_optimizer.step()
            stats.update(inner_lr_grad_norm=learned_grad_norm, **self.learned.summary())
        self.steps += 1
        return stats

    def learned_gradient(self, params: Params, inner: list[Stage], post: Stage) -> float:
        """The learned inner optimizer's gradient, left in its parameters' .grad: of the
        post-stage policy-gradient loss of the adapted policies, −mean_i E[A ∇ log π_θ'_i],
        at θ_old (the gradient of the surrogate the outer step descends, where every ratio is
        1), through the inner steps (their gradients detached when `first_order`). Returns its norm."""
        assert self.learned is not None and self.learned_optimizer is not None
        theta = {k: p.detach() for k, p in params.items()}
        adapted = adapted_params(self.policy, theta, inner, post.obs.shape[0], self.learned, self.config.first_order)
        per_task_loss = torch.vmap(partial(inner_loss, self.policy))  # the same loss, on the post episodes
        loss = per_task_loss(adapted, post.obs, post.actions, post.advantages, post.mask).mean()
        self.learned_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # (entries the post objective does not reach, e.g. α of the replaced log σ, have no .grad)
        return flat(torch.zeros_like(p) if p.grad is None else p.grad for p in self.learned.parameters()).norm().item()

    def noise_stats(self) -> dict[str, float]:
        """Mean log σ of the exploring policy, and of the adapted ones with post_std: learned."""
        out = {"log_std": self.policy.log_std.mean().item()}
        if hasattr(self.policy, POST_LOG_STD):
            out["post_log_std"] = self.policy.post_log_std.mean().item()
        return out

    def old_post_policy(self, params: Params, inner: list[Stage], post: Stage) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean, log_std, log-prob of the taken actions) of the adapted policies of the current θ."""
        with torch.no_grad():
            adapted = adapted_params(self.policy, params, inner, post.obs.shape[0], self.inner_lr)
            mean, log_std = per_task_forward(self.policy, adapted, post.obs)
            return mean, log_std, gaussian_log_prob(mean, log_std, post.actions)

    def closed_form(self) -> bool:
        """The closed forms apply whole to fixed step sizes (sgd, meta-sgd), not to an update
        rule that depends on the gradient (lstm: autograd through the rule; see `curvature_only`)."""
        return self.config.closed_form and not isinstance(self.inner_lr, InnerOptimizer)

    def draws(self) -> torch.Generator:
        """The generator of this outer step's `cg_subsample` draws: a function of the seed and the
        step count, so a resumed run repeats them."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.steps)

    def curvature_only(self) -> bool:
        """A learned rule that says its update as (1 − d) ⊙ θ − s ⊙ g (the LSTM): TRPO's KL
        curvature in closed form with (s, d) held fixed, the meta-gradient and the line search
        through the rule by autograd (`closed_form: false`: all by autograd)."""
        rule = self.inner_lr
        return self.config.closed_form and isinstance(rule, InnerOptimizer) and has_linear_form(rule)

    def trpo(self, params: Params, inner: list[Stage], post: Stage) -> dict[str, float]:
        inner_lr = self.inner_lr
        curvature = None
        if isinstance(inner_lr, InnerOptimizer) and not self.curvature_only():
            old_mean, old_log_std, old_logp = self.old_post_policy(params, inner, post)
        else:
            with torch.no_grad():
                curvature = KLCurvature(self.policy, params, inner, post, self.config, inner_lr=inner_lr,
                                        subsample=self.config.cg_subsample, generator=self.draws())
                old_mean, old_log_std = curvature.old_mean, curvature.old_log_std
                old_logp = gaussian_log_prob(old_mean, old_log_std, post.actions)
        behaviour_err = ((old_logp - post.logp).abs() * post.mask).max().item()
        post = post._replace(logp=old_logp)  # ratio 1 at the current θ, as pytorch-maml-rl
        objective = partial(self._objective, inner=inner, post=post, old_mean=old_mean, old_log_std=old_log_std)
        closed_form = curvature if self.closed_form() or self.curvature_only() else None
        kl_objective = None  # autograd's KL Hessian on the `cg_subsample` of tasks the closed form would take
        order, m = task_order(post.obs.shape[0], self.config.cg_subsample, self.draws())
        if closed_form is None and m < len(order):
            part = order[:m].to(post.obs.device)
            kl_objective = partial(self._objective, inner=[Stage(*(x[part] for x in s)) for s in inner],
                                   post=Stage(*(x[part] for x in post)), old_mean=old_mean[part], old_log_std=old_log_std[part])
        new_params, stats = trpo_step(objective, params, self.config, closed_form,
                                      closed_form_gradient=not self.curvature_only(), kl_objective=kl_objective)
        with torch.no_grad():
            for name, p in self.policy.theta().items():
                p.copy_(new_params[name])
        stats["behaviour_logp_err"] = behaviour_err
        return stats

    def _objective(self, params: Params, inner: list[Stage], post: Stage, old_mean: torch.Tensor,
                   old_log_std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.closed_form() and not self.config.first_order and not torch.is_grad_enabled():
            # the line search: the inner steps' gradients by the hand-written backward pass
            return line_search_objective(self.policy, params, inner, post, old_mean, old_log_std, self.inner_lr, self.config)
        return surrogate_and_kl(self.policy, params, inner, post, old_mean, old_log_std, self.config, self.inner_lr)

    def ppo_clip(self, params: Params, inner: list[Stage], post: Stage) -> dict[str, float]:
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
            old_mean, old_log_std, _ = self.old_post_policy(params, inner, post)
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
            grad_norm = flat(torch.zeros_like(p) if p.grad is None else p.grad for p in policy.theta().values()).norm()
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

    def reptile(self, params: Params, inner: list[Stage], post: Stage) -> dict[str, float]:
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
        """Adam state for ppo-clip (trpo and reptile keep none), the learned inner optimizer's
        Adam state (keys `inner_optimizer/…`), and the count of outer steps."""
        tensors, meta = ({}, {}) if self.optimizer is None else optimizer_tensors(self.optimizer)
        if self.learned_optimizer is not None:
            learned_tensors, meta[INNER_OPTIMIZER] = optimizer_tensors(self.learned_optimizer)
            tensors = {**tensors, **{f"{INNER_OPTIMIZER}/{k}": v for k, v in learned_tensors.items()}}
        return tensors, {**meta, "outer_steps": self.steps}

    def load_optimizer_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        prefix = f"{INNER_OPTIMIZER}/"
        if self.optimizer is not None:
            own = {k: v for k, v in tensors.items() if not k.startswith(prefix)}
            load_optimizer_tensors(self.optimizer, own, meta, self.device)
        if self.learned_optimizer is not None and INNER_OPTIMIZER in meta:
            learned = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            load_optimizer_tensors(self.learned_optimizer, learned, meta[INNER_OPTIMIZER], self.device)
        self.steps = int(meta.get("outer_steps", 0))


class MAMLLearner:
    """Learner side: stacks the meta-batch's stages [N, E, T, ...] (advantages from each
    stage's own linear baseline) and takes the outer step."""

    def __init__(self, policy: GaussianMLPPolicy, config: MAMLConfig, device: torch.device, seed: int):
        self.config = config
        self.device = torch.device(device)
        self.policy = policy.to(self.device)
        self.dtype = next(self.policy.parameters()).dtype
        self.generator = torch.Generator().manual_seed(seed)  # the MAML updates draw no randomness
        self.outer = OuterStep(self.policy, config, self.device, seed)

    def stages(self, results: list[TaskResult]) -> tuple[list[Stage], Stage]:
        """The tasks' results as the inner stages and the post stage, tensors [N, E, T, ...]."""
        built = [Stage.from_episodes(stack_stage(results, s), self.config, self.dtype, self.device)
                 for s in stage_names(self.config.num_inner_steps)]
        return built[:-1], built[-1]

    def update(self, results: list[TaskResult]) -> dict[str, float]:
        inner, post = self.stages(results)
        stats = self.outer(self.policy.theta(), inner, post)
        stats.update(num_tasks=float(len(results)), **self.outer.noise_stats())
        return stats

    def optimizer_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return self.outer.optimizer_state()

    def load_optimizer_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.outer.load_optimizer_state(tensors, meta)
