"""The PEARL learner: per-task replay in the learner, SAC on (s, z) with z inferred from context.

Each `update` adds the rounds it is handed to the buffers, then takes `updates_per_step` x
(their env steps) gradient steps (the replay ratio stays fixed however sampling runs). One
gradient step, as in Rakelly et al. 2019 (Alg. 1), read top to bottom in `_step`:
  1. draw `meta_batch` train tasks; for each, a context batch from its context buffer and an RL
     batch from its RL buffer;
  2. q(z|c) by the encoder's product of Gaussians, z ~ q reparameterised;
  3. critic loss: twin Q(s, a, z) against r * reward_scale + gamma * (1 - done) *
     (min Q_target(s', a', z) - alpha log pi(a'|s', z)), a' ~ pi(s', z); it trains the critics
     AND the encoder (through z), plus kl_lambda * KL(q(z|c) || N(0, I)) for the encoder;
  4. actor loss: alpha log pi(a|s, z) - min Q(s, a, z) with z detached (the encoder learns from
     the critic only), plus the paper's small mean / log-std penalties;
  5. temperature (if `auto_alpha`), then Polyak-averaged target critics.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from metaray.learner.optim_state import load_optimizer_tensors, optimizer_tensors
from metaray.learner.pearl.buffer import FIELDS, TaskReplay, check_buffer_fits
from metaray.learner.pearl.config import PEARLConfig
from metaray.learner.pearl.networks import PEARLAgent, kl_to_unit_gaussian
from metaray.learner.pearl.sampler import Rounds, concat_rounds


def critic_target(rewards: torch.Tensor, terminals: torch.Tensor, next_q: torch.Tensor, next_logp: torch.Tensor,
                  alpha: torch.Tensor | float, gamma: float, reward_scale: float) -> torch.Tensor:
    """SAC's soft Bellman target: r * scale + gamma * (1 - done) * (min_i Q_i' - alpha log pi')."""
    soft_next = next_q.min(-1).values - alpha * next_logp
    return rewards * reward_scale + gamma * (1.0 - terminals.float()) * soft_next


class PEARLLearner:
    def __init__(self, agent: PEARLAgent, config: PEARLConfig, device: torch.device, seed: int):
        self.config, self.device = config, device
        self.policy = self.agent = agent.to(device)
        agent.set_bf16(config.precision == "bf16")
        spec = agent.spec
        check_buffer_fits(config.num_train_tasks, config.buffer_size_per_task, spec.obs_dim, spec.act_dim)
        self.replay = TaskReplay(config.buffer_size_per_task, spec.obs_dim, spec.act_dim)
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        # foreach: one kernel per op over all of a network's tensors (these are small networks)
        self.critic_opt = torch.optim.Adam(agent.critic.parameters(), lr=config.critic_lr, foreach=True)
        self.encoder_opt = torch.optim.Adam(agent.encoder.parameters(), lr=config.encoder_lr, foreach=True)
        self.actor_opt = torch.optim.Adam(agent.actor.parameters(), lr=config.actor_lr, foreach=True)
        self.alpha_opt = torch.optim.Adam([agent.log_alpha], lr=config.alpha_lr)
        self.target_entropy = -float(spec.act_dim)
        self._target_params = list(agent.target_critic.parameters())
        self._online_params = list(agent.critic.parameters())
        self.grad_steps = 0
        self.env_steps = 0
        self._owed = 0.0  # gradient steps earned by env steps but not yet taken (fractional replay ratios)

    # ------------------------------------------------------------------ the update

    def update(self, payloads: list[Rounds]) -> dict[str, float]:
        cfg = self.config
        rounds = [p for p in payloads if len(p.task_ids)]
        stats: dict[str, float] = {}
        if rounds:
            batch = concat_rounds(rounds)
            self._add(batch)
            new_steps = len(batch.rewards)
            self.env_steps += new_steps
            stats["return_prior"] = float(batch.episode_returns[:, : cfg.prior_episodes].mean())
            if batch.episode_returns.shape[1] > cfg.prior_episodes:
                stats["return_post"] = float(batch.episode_returns[:, cfg.prior_episodes:].mean())
            if self.replay.num_transitions >= cfg.warmup_steps:
                self._owed += cfg.updates_per_step * new_steps
        n_steps = int(self._owed)
        self._owed -= n_steps
        sums: dict[str, float] = {}
        for _ in range(n_steps):
            for key, value in self._step().items():
                sums[key] = sums.get(key, 0.0) + value
        stats.update({key: value / n_steps for key, value in sums.items()})
        stats["grad_steps"] = float(n_steps)
        stats["grad_steps_total"] = float(self.grad_steps)
        stats["replay_transitions"] = float(self.replay.num_transitions)
        stats["replay_tasks"] = float(len(self.replay.rl))
        stats["alpha"] = self.agent.log_alpha.detach().exp().item()
        return stats

    def _add(self, batch: Rounds) -> None:
        for r, task_id in enumerate(batch.task_ids.tolist()):
            rows = batch.round_index == r
            fields = {name: getattr(batch, name)[rows] for name in FIELDS}
            self.replay.add_round(int(task_id), fields, batch.to_context[rows])

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def _step(self) -> dict[str, float]:
        cfg, agent = self.config, self.agent
        # 1. tasks, their context and RL batches
        tasks = self.replay.tasks()
        picked = [tasks[i] for i in self.rng.integers(len(tasks), size=cfg.meta_batch)]
        ctx = self.replay.gather(self.replay.context, picked, cfg.context_batch, self.rng)
        rl = {k: self._tensor(v) for k, v in self.replay.gather(self.replay.rl, picked, cfg.batch_size, self.rng).items()}
        parts = [ctx["obs"], ctx["actions"], ctx["rewards"][..., None]] + ([ctx["next_obs"]] if cfg.use_next_obs_in_context else [])
        context = self._tensor(np.concatenate(parts, -1))
        # 2. the posterior and z, one per task, repeated over its RL batch
        mean, var = agent.encoder.posterior(context)  # [M, L]
        z_task = mean + var.sqrt() * torch.randn(mean.shape, generator=self.generator).to(self.device)
        z = z_task[:, None].expand(-1, cfg.batch_size, -1)
        alpha = agent.log_alpha.exp().detach()
        # 3. critics + encoder
        with torch.no_grad():
            next_action, next_logp, _, _ = agent.actor(rl["next_obs"], z.detach(), self._noise(rl["actions"]))
            next_q = agent.target_critic(rl["next_obs"], next_action, z.detach())
            target = critic_target(rl["rewards"], rl["terminals"], next_q, next_logp, alpha, cfg.gamma, cfg.reward_scale)
        q = agent.critic(rl["obs"], rl["actions"], z)
        critic_loss = ((q - target[..., None]) ** 2).mean(dim=(0, 1)).sum()
        kl = kl_to_unit_gaussian(mean, var).sum()
        self.critic_opt.zero_grad(set_to_none=True)
        self.encoder_opt.zero_grad(set_to_none=True)
        (critic_loss + cfg.kl_lambda * kl).backward()
        self._clip(agent.critic)
        self._clip(agent.encoder)
        self.critic_opt.step()
        self.encoder_opt.step()
        # 4. actor, z detached
        z_fixed = z.detach()
        action, logp, pre_mean, log_std = agent.actor(rl["obs"], z_fixed, self._noise(rl["actions"]))
        agent.critic.requires_grad_(False)  # the actor's loss needs d Q / d action, not the critics' weight gradients
        try:
            q_new = agent.critic(rl["obs"], action, z_fixed).min(-1).values
        finally:
            agent.critic.requires_grad_(True)
        actor_loss = (alpha * logp - q_new).mean()
        actor_loss = actor_loss + cfg.policy_mean_reg * (pre_mean**2).mean() + cfg.policy_std_reg * (log_std**2).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self._clip(agent.actor)
        self.actor_opt.step()
        # 5. temperature and targets
        if cfg.auto_alpha:
            alpha_loss = -(agent.log_alpha * (logp.detach() + self.target_entropy)).mean()
            self.alpha_opt.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(self._target_params, self._online_params, cfg.tau)
        self.grad_steps += 1
        return {"critic_loss": critic_loss.item(), "actor_loss": actor_loss.item(), "kl": kl.item() / cfg.meta_batch,
                "z_var_mean": var.mean().item(), "q_mean": q.mean().item(), "entropy": -logp.mean().item()}

    def _noise(self, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(like.shape, generator=self.generator).to(self.device)

    def _clip(self, module: nn.Module) -> None:
        if self.config.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(module.parameters(), self.config.max_grad_norm)

    # ------------------------------------------------------------------ checkpoints

    def optimizer_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Four Adam states, the step counters and the task/batch draws' generator (the replay
        itself is not here: see `replay_state`)."""
        tensors: dict[str, torch.Tensor] = {}
        meta: dict[str, Any] = {"grad_steps": self.grad_steps, "env_steps": self.env_steps, "owed": self._owed,
                                "rng": self.rng.bit_generator.state}
        for name, opt in self._optimizers().items():
            opt_tensors, opt_meta = optimizer_tensors(opt)
            tensors.update({f"{name}/{k}": v for k, v in opt_tensors.items()})
            meta[name] = opt_meta
        return tensors, meta

    def load_optimizer_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.grad_steps, self.env_steps, self._owed = int(meta["grad_steps"]), int(meta["env_steps"]), float(meta["owed"])
        self.rng.bit_generator.state = meta["rng"]
        for name, opt in self._optimizers().items():
            prefix = f"{name}/"
            own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            load_optimizer_tensors(opt, own, meta[name], self.device)

    def replay_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The replay buffers (`checkpoint.replay_buffer: true` saves them)."""
        return self.replay.state()

    def load_replay_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.replay.load(meta, arrays)

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"critic": self.critic_opt, "encoder": self.encoder_opt, "actor": self.actor_opt, "alpha": self.alpha_opt}
