"""Meta adversarial imitation hyperparameters: MAML's generator settings plus the
discriminator's and the demonstrations'."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, PositiveInt, model_validator

from metaray.learner.maml.config import MAMLConfig


class AdversarialConfig(MAMLConfig):
    """MAML's generator settings (outer step, inner lr, episodes, policy) plus the discriminator's
    and the demonstrations'. Defaults: point-nav scale."""

    section: ClassVar[str] = "adversarial"

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
    wrong_demos: bool = Field(False, description="Control: each task gets another task's demos (task i uses task i+1's of the same meta-batch); scores should fall.")

    @model_validator(mode="before")
    @classmethod
    def _meta_sgd_was_learn_inner_lr(cls, data: Any) -> Any:
        """Configs from before `inner_optimizer` still load: `learn_inner_lr: true` is `meta-sgd`,
        `inner_lr_lr` is `inner_optimizer_lr`."""
        if not isinstance(data, dict) or not ({"learn_inner_lr", "inner_lr_lr"} & data.keys()):
            return data
        data = dict(data)
        learn, lr = data.pop("learn_inner_lr", False), data.pop("inner_lr_lr", None)
        if learn:
            if data.get("inner_optimizer", "meta-sgd") != "meta-sgd":
                raise ValueError("adversarial.learn_inner_lr: true (the old name of inner_optimizer: meta-sgd) conflicts with "
                                 f"inner_optimizer: {data['inner_optimizer']}")
            data["inner_optimizer"] = "meta-sgd"
        if lr is not None:
            data.setdefault("inner_optimizer_lr", lr)
        return data

    @model_validator(mode="after")
    def _a_learned_inner_optimizer_needs_generator_steps(self) -> AdversarialConfig:
        if self.inner_optimizer != "sgd" and not self.adapt_generator:
            raise ValueError(f"adversarial.inner_optimizer: {self.inner_optimizer} needs adapt_generator: true (no generator inner step to learn); allowed here: sgd")
        return self

