"""PEARL hyperparameters: one documented pydantic model.

Defaults follow Rakelly et al. 2019 (`oyster`, configs/default.py and cheetah-vel.json) where the
paper's choice fits two CPU cores; where it does not (network width, meta-batch, batch size,
replay ratio), the field says what the paper used.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class PEARLConfig(BaseModel):
    """Hyperparameters of PEARL (probabilistic embeddings for actor-critic meta-RL)."""

    model_config = ConfigDict(extra="forbid")

    num_train_tasks: int = Field(100, ge=1, description="The fixed set of train tasks, each with its own replay buffers (the paper: 100 for cheetah-vel). Drawn from the train split with `task_set_seed`, so every worker and the learner agree on it.")
    task_set_seed: int = Field(0, ge=0, description="Seed of the draw of the train task set (not the run's seed: runs with different seeds share the tasks).")
    latent_size: int = Field(5, ge=1, description="Dimension of the task variable z (the paper: 5).")
    hidden_size: int = Field(256, ge=1, description="Width of the actor's and critics' 3 hidden layers (the paper: 300).")
    encoder_hidden_size: int = Field(200, ge=1, description="Width of the context encoder's 3 hidden layers (the paper: 200).")
    use_next_obs_in_context: bool = Field(False, description="A context transition is (s, a, r, s') instead of (s, a, r) (the paper: off, on for sparse point-robot).")

    # data collection: one round per task (the stream's 'trial'), as in the paper's training loop
    prior_episodes: int = Field(2, ge=1, description="Episodes per round with z drawn from the prior (the paper's num_steps_prior: 400 steps = 2 episodes of 200); they fill the task's context buffer, which each round replaces.")
    posterior_episodes: int = Field(0, ge=0, description="Episodes per round with z from the posterior that also go to the context buffer (num_steps_posterior; the paper: 0).")
    extra_posterior_episodes: int = Field(3, ge=0, description="Episodes per round with z from the posterior that go to the RL buffer only (num_extra_rl_steps_posterior: 600 steps = 3 episodes).")
    slots_per_worker: int = Field(5, ge=1, description="Rounds (tasks) a rollout worker runs side by side in its vector env.")
    rounds_per_update: int = Field(5, ge=1, description="Rounds gathered before one learner update (the paper's num_tasks_sample: 5).")
    max_policy_lag: int = Field(2, ge=0, description="Rounds sampled with weights more than this many versions old are dropped (counted).")
    sync: bool = Field(True, description="Workers wait for each update before sampling on (the paper's alternation, and exact in --serial); false: they sample on while the learner updates.")

    # learning
    updates_per_step: float = Field(0.4, gt=0, description="Gradient steps per env step received: the replay ratio (the paper: 2000 steps per 5000 env steps = 0.4).")
    warmup_steps: int = Field(2000, ge=0, description="Env steps in the buffers before the first gradient step (the paper: 2000 per train task before training, with the prior).")
    meta_batch: int = Field(16, ge=1, description="Tasks per gradient step (the paper: 16).")
    batch_size: int = Field(256, ge=1, description="RL transitions per task per gradient step (the paper: 256).")
    context_batch: int = Field(100, ge=1, description="Context transitions per task to infer z from, drawn with replacement from the task's context buffer (the paper's embedding_batch_size: 100); workers use the same count.")
    buffer_size_per_task: int = Field(100_000, ge=1, description="Capacity of each train task's RL buffer, in transitions (a ring: the oldest go first). Checked at start against the machine's memory.")
    gamma: float = Field(0.99, gt=0, le=1, description="Discount.")
    tau: float = Field(0.005, gt=0, le=1, description="Polyak rate of the target critics.")
    actor_lr: float = Field(3e-4, gt=0, description="Adam learning rate of the actor.")
    critic_lr: float = Field(3e-4, gt=0, description="Adam learning rate of the twin critics.")
    encoder_lr: float = Field(3e-4, gt=0, description="Adam learning rate of the context encoder (trained through the critic loss and the KL term, never the actor's loss).")
    alpha_lr: float = Field(3e-4, gt=0, description="Adam learning rate of the entropy temperature when `auto_alpha`.")
    reward_scale: float = Field(5.0, gt=0, description="Rewards are multiplied by this in the critic's targets (the paper: 5 for cheetah-vel; with alpha 1 it sets the entropy's weight).")
    alpha: float = Field(1.0, gt=0, description="Entropy temperature (fixed, as in the paper, where reward_scale plays its role), or its starting value when `auto_alpha`.")
    auto_alpha: bool = Field(False, description="Tune the temperature to a target entropy of -action_dim (Haarnoja et al. 2018b) instead of keeping it fixed.")
    kl_lambda: float = Field(0.1, ge=0, description="Weight of KL(q(z|c) || N(0, I)) in the encoder's loss (the paper: 0.1; 0 = a deterministic-looking encoder).")
    policy_mean_reg: float = Field(1e-3, ge=0, description="L2 penalty on the actor's pre-tanh mean (the paper's policy_mean_reg_weight).")
    policy_std_reg: float = Field(1e-3, ge=0, description="L2 penalty on the actor's log-std (policy_std_reg_weight).")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="The learner's arithmetic: bf16 runs the hidden layers of the encoder, actor and critics under torch.autocast in bfloat16 (weights, optimizers, output layers and losses stay float32): a gradient step at the halfcheetah-vel config's sizes 1.29x faster (28.0 -> 21.7 ms, benchmarks/pearl_learner_cost.py) on the CI machine's AVX512-BF16 cores; on point-nav one seed learned as well as in fp32 (benchmarks/README.md). Workers always run float32.")
    max_grad_norm: float = Field(0.0, ge=0, description="Gradient-norm clip per network (0 = none, as in the paper).")

    # evaluation (the paper's protocol)
    eval_adaptation_episodes: int = Field(2, ge=0, description="metaray eval: episodes whose experience updates the posterior before the reported ones (z from the prior first, then from the posterior of everything seen so far; the paper: num_exp_traj_eval 2 for cheetah-vel).")
    eval_deterministic: bool = Field(True, description="metaray eval: act with the actor's mean action (the paper's eval_deterministic); false: sample as in training.")
    eval_episodes: int = Field(1, ge=1, description="metaray eval: episodes reported after the adaptation ones (their mean is `return_post`).")

    @model_validator(mode="after")
    def _schedule(self) -> PEARLConfig:
        if self.meta_batch > self.num_train_tasks:
            raise ValueError(f"pearl.meta_batch: {self.meta_batch} tasks per step but only {self.num_train_tasks} "
                             "train tasks (pearl.num_train_tasks)")
        return self

    @property
    def episodes_per_round(self) -> int:
        return self.prior_episodes + self.posterior_episodes + self.extra_posterior_episodes
