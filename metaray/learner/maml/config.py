"""MAML-family hyperparameters: one documented pydantic model."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

BUILTIN_INNER_OPTIMIZERS = ("sgd", "meta-sgd", "lstm")


class MAMLConfig(BaseModel):
    """Hyperparameters of the MAML family. Defaults: pytorch-maml-rl's 2D-navigation config."""

    model_config = ConfigDict(extra="forbid")
    section: ClassVar[str] = "maml"  # the config section, for messages

    outer: Literal["trpo", "ppo-clip", "reptile"] = Field("trpo", description="Outer step: 'trpo' (MAML-TRPO), 'ppo-clip' (ProMP: clipped surrogate + inner KL penalty, Adam), 'reptile' (θ moves towards the adapted parameters).")
    first_order: bool = Field(False, description="Drop second-order terms (trpo, ppo-clip): the meta-gradient is the post-update policy gradient at θ'_i applied to θ.")
    inner_lr: float = Field(0.1, gt=0, description="Inner (adaptation) step size α (with meta-sgd / lstm: where the learned step sizes start).")
    inner_optimizer: str = Field("sgd", description="How θ'_i is made from the inner gradient: 'sgd' θ − α g (MAML); 'meta-sgd' θ − α ⊙ g with one meta-learned α per parameter entry (Li et al. 2017); 'lstm' a coordinate-wise LSTM reading each entry's gradient, the inner loss and the previous update, θ' = f ⊙ θ − i ⊙ g (Ravi & Larochelle 2017), exactly SGD before meta-training; or your own, 'package.module:ClassName', a subclass of metaray.learner.maml.InnerOptimizer built as Class(shapes, inner_lr, **inner_optimizer_kwargs). Learned ones travel with the policy's weights and are trained by Adam (inner_optimizer_lr) on the post-update objective; see learner/maml/inner_optimizers.py for the contract.")
    inner_optimizer_kwargs: dict[str, Any] = Field(default_factory=dict, description="A user's inner_optimizer ('package.module:ClassName'): the settings its constructor takes after (shapes, inner_lr).")
    inner_optimizer_lr: float = Field(0.01, gt=0, description="meta-sgd / lstm: Adam learning rate of the inner optimizer's meta-parameters.")
    inner_lstm_hidden_size: PositiveInt = Field(16, description="lstm: hidden units of the coordinate-wise LSTM (its state is per task and per parameter entry).")
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
    cg_subsample: float = Field(1.0, gt=0, le=1, description="TRPO: fraction of the meta-batch's tasks the KL Hessian-vector products of conjugate gradient are computed on (drawn anew each update, scaled to the whole batch; rllab's subsample_factor, over tasks), in the closed form and by autograd alike; the meta-gradient and the line search use every task. 1: all.")
    ls_max_steps: int = Field(15, ge=1, description="TRPO: line-search tries before the step is rejected (θ unchanged).")
    ls_backtrack_ratio: float = Field(0.8, gt=0, lt=1, description="TRPO: step shrink factor per line-search try.")
    closed_form: bool = Field(True, description="TRPO: meta-gradient Jᵀ∇L and KL Hessian-vector products Jᵀ F J written out for the MLP (same values, about 3× faster on CPU); false: autograd through the vmapped inner step, twice for the KL Hessian, as pytorch-maml-rl. With a learned rule that has a linear form (lstm) only the KL Hessian is in closed form, the rule's coefficients held fixed in it; false: through the rule by autograd.")
    ppo_clip: float = Field(0.2, gt=0, description="ppo-clip: clip range of the post-update likelihood ratio.")
    ppo_epochs: int = Field(5, ge=1, description="ppo-clip: full-batch Adam steps per meta-iteration.")
    ppo_lr: float = Field(1e-3, gt=0, description="ppo-clip: Adam learning rate.")
    inner_kl_coef: float = Field(5e-4, ge=0, description="ppo-clip (ProMP): weight of the KL penalty between old and new pre-update policies of each inner step.")
    reptile_lr: float = Field(0.1, gt=0, description="reptile: outer step size ε in θ ← θ + ε·mean_i(φ_i − θ).")
    post_std: Literal["shared", "learned"] = Field("shared", description="σ of the adapted policy: 'shared' (MAML: the exploring pre-update log σ, moved only by the inner steps) or 'learned' (its own meta-parameter post_log_std, initialised to init_post_log_std and learned by the outer step on the post-update objective, so exploitation noise is learned apart from exploration noise; first-order, the pre-update σ then stays at init_log_std). trpo / ppo-clip with at least one inner step.")
    init_post_log_std: float | None = Field(None, ge=-5, le=2, description="post_std learned: initial log σ of the adapted policies (default: init_log_std).")

    @field_validator("inner_optimizer")
    @classmethod
    def _a_known_or_importable_inner_optimizer(cls, value: str) -> str:
        if value in BUILTIN_INNER_OPTIMIZERS:
            return value
        # torch is imported only for a user's rule
        from metaray.learner.maml.inner_optimizers import resolve_inner_optimizer

        resolve_inner_optimizer(value, f"{cls.section}.inner_optimizer")
        return value

    @model_validator(mode="after")
    def _post_std_needs_an_adapted_policy(self) -> MAMLConfig:
        if self.post_std == "learned" and (self.outer == "reptile" or self.num_inner_steps == 0):
            raise ValueError("post_std 'learned' needs outer trpo or ppo-clip and num_inner_steps >= 1 (an adapted policy with an outer objective)")
        if self.inner_optimizer != "sgd" and (self.outer == "reptile" or self.num_inner_steps == 0):
            raise ValueError(f"{self.section}.inner_optimizer: {self.inner_optimizer} needs outer trpo or ppo-clip and num_inner_steps >= 1 "
                             "(reptile has no objective through the inner step to train it); allowed here: sgd")
        if self.inner_optimizer in BUILTIN_INNER_OPTIMIZERS:
            if self.inner_optimizer_kwargs:
                raise ValueError(f"{self.section}.inner_optimizer_kwargs: settings for a user's inner optimizer "
                                 f"('package.module:ClassName'), not {self.inner_optimizer}")
        else:
            from metaray.learner.maml.inner_optimizers import check_inner_optimizer_settings

            check_inner_optimizer_settings(self.inner_optimizer, self.inner_optimizer_kwargs, f"{self.section}.inner_optimizer_kwargs")
        return self

