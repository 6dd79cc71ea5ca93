"""The learner side of meta adversarial imitation: θ takes MAML's outer step on the relabelled
episodes (`maml.OuterStep`, which also trains a learned inner optimizer), φ the discriminator
meta-update."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import torch

from metaray.core import TaskResult, stack_episodes, stack_stage
from metaray.learner.adversarial.config import AdversarialConfig
from metaray.learner.adversarial.game import (
    Transitions,
    disc_adapt,
    disc_loss,
    transitions,
    with_demos,
)
from metaray.learner.adversarial.networks import AdversarialAgent
from metaray.learner.maml import MAMLLearner
from metaray.learner.optim_state import load_optimizer_tensors, optimizer_tensors
from metaray.networks import INNER_OPTIMIZER, Params, flat


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

    def _stage_data(self, results: list[TaskResult], stage: str, demo_side: str) -> tuple[Transitions, Transitions]:
        def stack(key: str) -> np.ndarray:
            return np.stack([r.extras[key] for r in results])
        demo = transitions(stack_episodes([r.extras[demo_side] for r in results]), stack(f"demo_logp/{stage}"),
                           self.dtype, self.device)
        pol = transitions(stack_stage(results, stage), stack(f"disc_logp/{stage}"), self.dtype, self.device)
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
        leaked = sorted({k for r in results for k in r.metrics})
        if leaked:
            raise ValueError(f"adversarial learner got true-reward metrics {leaked}: only TaskResult.for_learner() may reach it")
        inner, post = self.gen.stages(results)
        params = self.gen.policy.theta()
        cfg = self.config
        if cfg.demo_advantage > 0:  # as the workers adapted: support demos join every inner stage
            support = stack_episodes([r.extras["support"] for r in results])
            inner = [with_demos(stage, support, cfg.demo_advantage) for stage in inner]
        if cfg.query_demo_advantage > 0:
            query = stack_episodes([r.extras["query"] for r in results])
            post = with_demos(post, query, cfg.query_demo_advantage)
        if cfg.query_demo_advantage > 0:  # the demo steps' behaviour log-probs: the old θ'_i's (ratio 1)
            episodes = post.obs.shape[1] - query.obs.shape[1]
            _, _, old_logp = self.gen.outer.old_post_policy(params, inner, post)
            post = post._replace(logp=torch.cat([post.logp[:, :episodes], old_logp[:, episodes:]], 1))
        stats = self.gen.outer(params, inner, post)  # (and the learned inner optimizer's step)
        stats.update(self._update_discriminator(results), num_tasks=float(len(results)), **self.gen.outer.noise_stats())
        return stats

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
            return {"disc_loss": loss.item(), "disc_grad_norm": flat(delta.values()).norm().item()}
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
        return {"disc_loss": loss.item(), "disc_grad_norm": flat(grads).norm().item()}

    def optimizer_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        gen_tensors, gen_meta = self.gen.optimizer_state()
        tensors = {f"generator/{k}": v for k, v in gen_tensors.items()}
        meta: dict[str, Any] = {"generator": gen_meta}
        if self.disc_optimizer is not None:
            disc_tensors, meta["discriminator"] = optimizer_tensors(self.disc_optimizer)
            tensors.update({f"discriminator/{k}": v for k, v in disc_tensors.items()})
        return tensors, meta

    def load_optimizer_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        def part(prefix: str) -> dict[str, torch.Tensor]:
            return {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith(f"{prefix}/")}
        gen_tensors, gen_meta = part("generator"), dict(meta.get("generator", {}))
        if "inner_lr" in meta and INNER_OPTIMIZER not in gen_meta:  # a checkpoint from before inner_optimizer
            gen_meta[INNER_OPTIMIZER] = meta["inner_lr"]
            gen_tensors.update({f"{INNER_OPTIMIZER}/{k}": v for k, v in part("inner_lr").items()})
        self.gen.load_optimizer_state(gen_tensors, gen_meta)
        if self.disc_optimizer is not None and "discriminator" in meta:
            load_optimizer_tensors(self.disc_optimizer, part("discriminator"), meta["discriminator"], self.device)

