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
steps (`second-order`), or φ ← φ + ε mean_i(φ_i^k − φ) (`reptile`). With MAML's
`inner_optimizer: meta-sgd | lstm` the generator's inner step is learned (Meta-SGD's α per
parameter entry, or a coordinate-wise LSTM), carried by the generator (published and
checkpointed with the agent) and trained by Adam along the gradient of the post-stage
policy-gradient loss at θ_old (`maml.OuterStep`); old configs' `learn_inner_lr: true` is meta-sgd.

The learner never sees the true reward: workers keep it for metrics only (TaskResult.metrics,
which the rollout worker removes before the learner gets the result); a test replaces it with
noise and checks that the update does not change.

The package, by role: `config`; `networks` (discriminator, the agent that is published);
`game` (the game value and what both sides compute from it); `sampler` (the worker side and
the expert demos); `learning` (the learner side); `evaluation`; here `Adversarial`, the
algorithm as the runtime sees it (`metaray.core`).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import torch

from metaray.core import AlgorithmBase, Baseline, LoopSpec
from metaray.learner.adversarial.baselines import bc_from_scratch, meta_bc
from metaray.learner.adversarial.config import AdversarialConfig
from metaray.learner.adversarial.evaluation import evaluate, evaluation_chunks
from metaray.learner.adversarial.game import (
    Transitions,
    disc_adapt,
    disc_logits,
    disc_loss,
    executed_log_prob,
    masked_mean,
    relabel,
    stage_logp,
    transitions,
    with_demos,
)
from metaray.learner.adversarial.learning import AdversarialLearner
from metaray.learner.adversarial.networks import (
    AdversarialAgent,
    Discriminator,
    make_policy,
    split_weights,
)
from metaray.learner.adversarial.sampler import AdversarialSampler, Demos, expert_demos
from metaray.tasks import Task, TaskFamily
from metaray.tasks.reference import random_policy_returns


class Adversarial(AlgorithmBase):
    """Meta adversarial imitation as a meta-batch algorithm (see metaray.core.Algorithm). Actors
    outside Ray cannot run its tasks (their demos and discriminator steps): no wire spec."""

    name = "adversarial"
    mode = "meta-batch"
    Config = AdversarialConfig
    requires_expert = True

    def make_policy(self, obs_space: gym.Space, act_space: gym.Space, config: AdversarialConfig) -> AdversarialAgent:
        return make_policy(obs_space, act_space, config)

    def make_sampler(self, family: TaskFamily, config: AdversarialConfig, seed: int,
                     tasks: list[Task] | None = None) -> AdversarialSampler:
        return AdversarialSampler(family, config, config.episodes_per_task, seed)

    def make_learner(self, policy: AdversarialAgent, config: AdversarialConfig, device: torch.device,
                     seed: int) -> AdversarialLearner:
        return AdversarialLearner(policy, config, device, seed)

    def loop_spec(self, config: AdversarialConfig) -> LoopSpec:
        return LoopSpec(tasks_per_iteration=config.meta_batch_size)

    def evaluate(self, policy: AdversarialAgent, family: TaskFamily, tasks: list[Task], config: AdversarialConfig,
                 seed: int) -> list[dict[str, Any]]:
        return evaluate(policy, family, tasks, config, seed)

    def baselines(self, family: TaskFamily, config: AdversarialConfig) -> dict[str, Baseline]:
        """Behaviour cloning from scratch and Meta-BC on the same K support demos (baselines.py)."""
        def bc(family: TaskFamily, tasks: list[Task], config: AdversarialConfig, eval_seed: int, seed: int) -> list[dict[str, Any]]:
            torch.manual_seed(seed)
            return bc_from_scratch(family, tasks, config, eval_seed)

        def metabc(family: TaskFamily, tasks: list[Task], config: AdversarialConfig, eval_seed: int, seed: int) -> list[dict[str, Any]]:
            torch.manual_seed(seed)
            return meta_bc(family, tasks, config, eval_seed, train_seed=seed)

        return {"bc": bc, "meta-bc": metabc}


__all__ = [
    "Adversarial", "AdversarialAgent", "AdversarialConfig", "AdversarialLearner", "AdversarialSampler", "Demos",
    "Discriminator", "Transitions", "disc_adapt", "disc_logits", "disc_loss", "evaluate", "evaluation_chunks",
    "executed_log_prob", "expert_demos", "make_policy", "masked_mean", "random_policy_returns", "relabel",
    "split_weights", "stage_logp", "transitions", "with_demos",
]
