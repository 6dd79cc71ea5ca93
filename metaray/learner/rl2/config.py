"""RL² hyperparameters: one documented pydantic model."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class RL2Config(BaseModel):
    """Hyperparameters of RL². Defaults suit the bandit / tabular-MDP families."""

    model_config = ConfigDict(extra="forbid")

    episodes_per_trial: int = Field(10, ge=1, description="Episodes per trial (n); the memory spans them. For `bandit` this is the number of pulls.")
    memory: Literal["gru", "lstm", "snail", "transformer", "mann"] = Field("gru", description="The sequence model over the trial: gru (Duan et al. 2016), lstm, snail (Mishra et al. 2018: causal convolutions and attention), transformer (causal, pre-LN), mann (Santoro et al. 2016: LSTM controller with an external memory).")
    hidden_size: int = Field(128, ge=1, description="Width of the input encoder and the memory.")
    gru_update_bias: float = Field(0.0, description="gru: initial bias of the update gate z (h' = (1 - z) n + z h); 1.0 starts the memory keeping most of what it holds at each step (pytorch_rl2's forget_bias 1.0; Jozefowicz et al. 2015 for the LSTM's forget gate, which lstm always gets). 0: torch's initialisation.")
    shared_memory: bool = Field(False, description="One encoder and memory for the policy and the value function (the value loss then dominates the memory's gradient); false: each has its own.")
    layer_norm: bool = Field(True, description="Layer norm after the input encoder and on the memory's output.")
    value_norm: bool = Field(True, description="Normalise value targets by running statistics of the returns (PopArt).")
    sync: bool = Field(True, description="The update waits for every worker's call, and workers wait for the update before sampling on: every batch is on-policy (trials_per_update is then rounded up to whole calls of slots_per_worker trials per worker). false: workers sample on while the learner updates (batches one version old; more throughput only where sampling, not the learner, is the slow part). Measured on bandits n=100: true 78.31 vs false 78.05 held-out at the same wall time (benchmarks/README.md).")
    slots_per_worker: int = Field(128, ge=1, description="Trials run side by side in one rollout worker's vector env.")
    trials_per_update: int = Field(1024, ge=1, description="Trials gathered before one learner update.")
    max_policy_lag: int = Field(2, ge=0, description="Trials sampled with weights more than this many versions old are dropped (counted).")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate.")
    lr_anneal_updates: int = Field(0, ge=0, description="Decay the learning rate linearly over this many updates, from lr to lr / lr_anneal_updates (CleanRL's anneal_lr; set it to the run's iterations), then keep it there; 0: constant. The count is the learner's, so a resumed run goes on where it was.")
    gamma: float = Field(0.99, gt=0, le=1, description="Discount over the whole trial.")
    gae_lambda: float = Field(0.3, ge=0, le=1, description="GAE lambda of the policy's advantages (Duan et al. used 0.3).")
    value_lambda: float = Field(1.0, ge=0, le=1, description="GAE lambda of the value function's targets. 1: the discounted return itself, right from the first update; a small lambda bootstraps off the value function, which over a 100-step trial takes hundreds of updates to become informative (while the advantages it feeds ignore all but the next few rewards).")
    clip_ratio: float = Field(0.1, gt=0, description="PPO clip range (0.1 as in Duan et al.'s and Mishra et al.'s PPO reproductions).")
    epochs: int = Field(4, ge=1, description="PPO passes over each batch.")
    minibatches: int = Field(4, ge=1, description="Minibatches per epoch (split over trials).")
    entropy_coef: float = Field(0.01, ge=0, description="Entropy bonus weight.")
    value_coef: float = Field(0.5, ge=0, description="Value loss weight (Huber loss on normalised returns).")
    max_grad_norm: float = Field(10.0, gt=0, description="Gradient-norm clip, for the policy's and the value function's parameters each: a guard against blow-ups, not a step-size control.")
    target_kl: float = Field(0.0, ge=0, description="Stop the update's epochs early once a minibatch's approximate KL exceeds 1.5x this (0 = never). Long trials need it: Adam steps compound through the recurrence.")
    eval_temperature: float = Field(1.0, ge=0, description="Evaluation only (metaray eval, eval.every, bench): actions drawn at this temperature, logits / T (continuous actions: the standard deviation x T); 0: the most likely action (argmax, or the mean). 1: as trained. Training always samples at 1. Measured on tabular MDPs n=10 (SNAIL, benchmarks/README.md): the sampling noise costs ~2 of the trial's return. metaray eval --set rl2.eval_temperature=T changes it for one evaluation.")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="The learner's arithmetic: bf16 runs the encoders and memories under torch.autocast in bfloat16 (weights, optimizer, heads and losses stay float32). About 1.9x faster GRU training on CPUs with AVX512-BF16 or AMX (the CI machine's EPYC), and on CUDA; slower on CPUs without them. Workers always step in float32.")
    bptt_len: int = Field(0, ge=0, description="Truncated BPTT window in steps; 0 = backpropagate through the whole trial.")
    normalize_advantages: bool = Field(True, description="Normalise advantages per batch.")
    context_length: int = Field(0, ge=0, description="transformer and snail: steps of the trial they can see, at least episodes_per_trial x the family's max_episode_steps (checked against the family at start); required (>= 1) for them, unused by the others.")
    num_layers: int = Field(2, ge=1, description="transformer: number of blocks.")
    num_heads: int = Field(2, ge=1, description="transformer: attention heads per block; must divide hidden_size.")
    snail_filters: int = Field(16, ge=1, description="snail: features each dense block (gated dilated causal convolution) adds.")
    mann_slots: int = Field(32, ge=1, description="mann: rows of the external memory.")
    mann_width: int = Field(32, ge=1, description="mann: width of a memory row (and of the read vector added to the controller's output).")
    previous_obs_input: bool = Field(False, description="Also feed the previous observation, so each input holds the whole transition (s, a, r) that the previous reward came from, and the memory need not carry s from one step to the next to pair it with a and r (tabular MDPs: the reward table is indexed by (s, a)). Off = Duan et al.'s inputs.")
    progress_input: bool = Field(False, description="Also feed the trial's progress (episodes finished / episodes_per_trial) to the GRU. With long trials the value depends on the steps left, which the GRU must otherwise learn to count (Pardo et al. 2018, time limits in RL). Off = Duan et al.'s inputs.")

    @model_validator(mode="after")
    def _memory_settings(self) -> RL2Config:
        if self.memory in ("transformer", "snail") and self.context_length < 1:
            raise ValueError(f"rl2.context_length: memory {self.memory} needs it set to the trial's length in steps "
                             "(episodes_per_trial x the family's max_episode_steps)")
        if self.memory == "transformer" and self.hidden_size % self.num_heads:
            raise ValueError(f"rl2.num_heads: {self.num_heads} does not divide hidden_size {self.hidden_size}")
        return self
