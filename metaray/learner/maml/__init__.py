"""MAML-RL (Finn et al. 2017) and its relatives: MAML-TRPO, first-order MAML, ProMP, Reptile.

A Gaussian MLP policy with parameters θ is adapted to each task by a few vanilla policy-gradient
steps (the inner step), θ'_i = θ − α ∇θ L_inner(θ; pre-update episodes of task i), and θ is
trained so that the adapted policies do well (the outer step). Everything per task runs batched
over tasks: the policy is a function of a parameter dict (`networks.policy_forward`), run with
stacked per-task parameters as one batched matrix product per layer
(`networks.per_task_forward`), and the inner gradient is `vmap(grad(inner_loss))`, which is
itself differentiable, so the meta-gradient flows through it. For TRPO the meta-gradient and the
KL Hessian-vector products at θ_old also have exact closed forms (`curvature.KLCurvature`);
they are the default because on CPU they are about 3× faster than differentiating through the
inner step twice.

The package, by role:
- `config`: `MAMLConfig`, every hyperparameter documented;
- `returns`: returns, the linear feature baseline, GAE, `Stage` (a stage's episodes as tensors);
- `adaptation`: the inner step, shared by worker and learner;
- `inner_optimizers`: the learned inner steps (`inner_optimizer: meta-sgd | lstm`) and their contract;
- `sampler`: `MAMLSampler`, the worker side (no graph);
- `curvature`, `trpo`: the closed forms and the TRPO step;
- `learning`: `OuterStep` (trpo / ppo-clip / reptile) and `MAMLLearner`;
- here: `evaluate` and `MAML`, the algorithm as the runtime sees it (`metaray.core`).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import torch

from metaray.core import AlgorithmBase, LoopSpec, TaskResult, WireSpec
from metaray.learner.maml.adaptation import (
    POST_LOG_STD,
    InnerLR,
    adapt,
    adapted_params,
    inner_gradients,
    inner_loss,
    inner_step,
    stage_names,
    step_size,
    with_post_std,
)
from metaray.learner.maml.config import MAMLConfig
from metaray.learner.maml.curvature import InnerCurvature, KLCurvature, MLPTape, row_weights
from metaray.learner.maml.inner_optimizers import (
    InnerOptimizer,
    LSTMInnerOptimizer,
    MetaSGD,
    make_inner_optimizer,
)
from metaray.learner.maml.learning import MAMLLearner, OuterStep
from metaray.learner.maml.returns import (
    Stage,
    baseline_features,
    compute_advantages,
    discount_cumsum,
    episode_mean,
    fit_linear_baseline,
    normalize_advantages,
    valid_episodes,
)
from metaray.learner.maml.sampler import MAMLSampler, Rollout, inner_update, make_gaussian_policy
from metaray.learner.maml.trpo import conjugate_gradient, surrogate_and_kl, trpo_step
from metaray.networks import (
    GaussianMLPPolicy,
    Params,
    flat,
    gaussian_kl,
    gaussian_log_prob,
    get_weights,
    load_weights,
    per_task_forward,
    policy_forward,
    unflat,
)
from metaray.tasks import Task, TaskFamily

make_policy = make_gaussian_policy


def evaluate(policy: GaussianMLPPolicy, family: TaskFamily, tasks: list[Task], config: MAMLConfig,
             seed: int) -> list[dict[str, Any]]:
    """Return before and after the configured inner steps, per task (meta_batch_size at a time)."""
    sampler = MAMLSampler(family, config, config.episodes_per_task, seed)
    sampler.set_weights(0, get_weights(policy))
    out = []
    for start in range(0, len(tasks), config.meta_batch_size):
        for r in sampler.collect(tasks[start : start + config.meta_batch_size], 0):
            m = r.metrics
            out.append({"task_id": r.task_id, "return_pre": m["return_pre"], "return_post": m["return_post"],
                        **({"success_rate_pre": m["success_pre"], "success_rate": m["success_post"]}
                           if "success_post" in m else {})})
    return out


class MAML(AlgorithmBase):
    """The MAML family as a meta-batch algorithm (see metaray.core.Algorithm)."""

    name = "maml"
    mode = "meta-batch"
    Config = MAMLConfig

    def make_policy(self, obs_space: gym.Space, act_space: gym.Space, config: MAMLConfig) -> GaussianMLPPolicy:
        return make_gaussian_policy(obs_space, act_space, config)

    def make_sampler(self, family: TaskFamily, config: MAMLConfig, seed: int, tasks: list[Task] | None = None) -> MAMLSampler:
        return MAMLSampler(family, config, config.episodes_per_task, seed)

    def make_learner(self, policy: GaussianMLPPolicy, config: MAMLConfig, device: torch.device, seed: int) -> MAMLLearner:
        return MAMLLearner(policy, config, device, seed)

    def loop_spec(self, config: MAMLConfig) -> LoopSpec:
        return LoopSpec(tasks_per_iteration=config.meta_batch_size)

    def evaluate(self, policy: GaussianMLPPolicy, family: TaskFamily, tasks: list[Task], config: MAMLConfig,
                 seed: int) -> list[dict[str, Any]]:
        return evaluate(policy, family, tasks, config, seed)

    def wire_spec(self, config: MAMLConfig) -> WireSpec:
        """An actor outside Ray runs a whole task: every stage's episodes, one rollout each."""
        return WireSpec(tuple(stage_names(config.num_inner_steps)), config.episodes_per_task, 1)


__all__ = [
    "MAML", "POST_LOG_STD", "GaussianMLPPolicy", "InnerCurvature", "InnerLR", "InnerOptimizer", "KLCurvature",
    "LSTMInnerOptimizer", "MAMLConfig", "MetaSGD", "inner_update", "make_inner_optimizer",
    "MAMLLearner", "MAMLSampler", "MLPTape", "OuterStep", "Params", "Rollout", "Stage", "TaskResult", "adapt",
    "adapted_params", "baseline_features", "compute_advantages", "conjugate_gradient", "discount_cumsum",
    "episode_mean", "evaluate", "fit_linear_baseline", "flat", "gaussian_kl", "gaussian_log_prob", "get_weights",
    "inner_gradients", "inner_loss", "inner_step", "load_weights", "make_policy", "normalize_advantages", "per_task_forward",
    "policy_forward", "row_weights", "stage_names", "step_size", "surrogate_and_kl", "trpo_step", "unflat",
    "valid_episodes", "with_post_std",
]
