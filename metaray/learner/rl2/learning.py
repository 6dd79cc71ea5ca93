"""The RL² learner: GAE over each trial, PPO-clip with (truncated) BPTT."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from metaray.learner.optim_state import load_optimizer_tensors, optimizer_tensors
from metaray.learner.rl2.config import RL2Config
from metaray.learner.rl2.networks import RL2Policy, trial_inputs
from metaray.learner.rl2.sampler import Trials, concat_trials


def trial_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> torch.Tensor:
    """GAE over whole trials [B, T]; the trial's end is terminal (value 0 after it).

    Episode boundaries inside a trial are not terminal: RL²'s MDP is the trial.
    """
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = torch.where(m, delta + gamma * lam * last, torch.zeros_like(last))
        adv[:, t] = last
        next_value = torch.where(m, values[:, t], torch.zeros_like(last))
    return adv


class RL2Learner:
    """Learner side of RL²: PPO-clip with GAE over whole trials and (truncated) BPTT."""

    def __init__(self, policy: RL2Policy, config: RL2Config, device: torch.device, seed: int):
        self.config = config
        self.device = device
        self.policy = policy.to(device)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.lr, eps=1e-5)
        self.generator = torch.Generator().manual_seed(seed)
        self.updates = 0  # updates done (the learning-rate schedule's clock)
        value_params = {id(p) for p in (policy.value_net or policy.value_head).parameters()}
        self._groups = [[p for p in policy.parameters() if id(p) not in value_params],
                        [p for p in policy.parameters() if id(p) in value_params]]
        if config.shared_memory:  # one memory under both losses: one clip over everything
            self._groups = [list(policy.parameters())]

    def update(self, batches: list[Trials]) -> dict[str, float]:
        cfg, policy, spec = self.config, self.policy, self.policy.spec
        batch = concat_trials(batches)
        inputs = trial_inputs(spec, batch.obs, batch.actions, batch.rewards, batch.dones)

        def to_dev(a: np.ndarray) -> torch.Tensor:
            t = torch.from_numpy(np.ascontiguousarray(a))
            return t.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else t

        x, actions = to_dev(inputs), to_dev(batch.actions)
        rewards, mask, old_logp = to_dev(batch.rewards), to_dev(batch.mask), to_dev(batch.logp)
        n_trials = x.shape[0]
        with torch.no_grad():
            with self.autocast():
                _, values_norm = policy(x)
            values = policy.denormalize(values_norm)
            adv = trial_gae(rewards, values, mask, cfg.gamma, cfg.gae_lambda)
            returns = adv + values if cfg.value_lambda == cfg.gae_lambda else (
                trial_gae(rewards, values, mask, cfg.gamma, cfg.value_lambda) + values)
            explained = 1.0 - float((returns - values)[mask].var() / returns[mask].var().clamp_min(1e-8))
            if cfg.value_norm:
                self._update_value_stats(returns[mask])
            targets = (returns - policy.value_mean) / policy.value_std
            if cfg.normalize_advantages:
                a = adv[mask]
                adv = (adv - a.mean()) / (a.std() + 1e-8)

        lr = self.learning_rate()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        stats = {"policy_loss": 0.0, "value_loss": 0.0, "entropy": 0.0, "approx_kl": 0.0, "clip_frac": 0.0, "grad_norm": 0.0}
        n_mb = min(cfg.minibatches, n_trials)
        steps, stopped_early = 0, False
        for _ in range(cfg.epochs):
            if stopped_early:
                break
            perm = torch.randperm(n_trials, generator=self.generator).to(self.device)
            for idx in perm.chunk(n_mb):
                with self.autocast():
                    head, v = policy(x[idx], cfg.bptt_len)
                dist = policy.distribution(head)
                logp = policy.log_prob(dist, actions[idx])
                m = mask[idx]
                log_ratio = logp - old_logp[idx]
                ratio = log_ratio.exp()
                a = adv[idx]
                pg = -torch.min(ratio * a, ratio.clamp(1 - cfg.clip_ratio, 1 + cfg.clip_ratio) * a)
                ent = policy.entropy(dist)
                vloss = nn.functional.huber_loss(v, targets[idx], reduction="none")
                mf = m.float()
                denom = mf.sum().clamp_min(1.0)
                policy_loss = (pg * mf).sum() / denom
                value_loss = (vloss * mf).sum() / denom
                entropy = (ent * mf).sum() / denom
                loss = policy_loss + cfg.value_coef * value_loss - cfg.entropy_coef * entropy
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = sum(float(nn.utils.clip_grad_norm_(group, cfg.max_grad_norm)) for group in self._groups[:1])
                for group in self._groups[1:]:
                    nn.utils.clip_grad_norm_(group, cfg.max_grad_norm)
                self.optimizer.step()
                with torch.no_grad():
                    approx_kl = (((ratio - 1) - log_ratio) * mf).sum().item() / denom.item()
                    stats["policy_loss"] += policy_loss.item()
                    stats["value_loss"] += value_loss.item()
                    stats["entropy"] += entropy.item()
                    stats["approx_kl"] += approx_kl
                    stats["clip_frac"] += (((ratio - 1).abs() > cfg.clip_ratio).float() * mf).sum().item() / denom.item()
                    stats["grad_norm"] += grad_norm
                steps += 1
                if cfg.target_kl > 0 and approx_kl > 1.5 * cfg.target_kl:
                    stopped_early = True
                    break
        out = {k: v / steps for k, v in stats.items()}
        out["trial_return"] = float(batch.rewards.sum(1).mean())
        out["num_trials"] = n_trials
        out["ppo_minibatch_steps"] = steps
        out["value_explained_variance"] = explained
        out["value_mean"], out["value_std"] = float(policy.value_mean), float(policy.value_std)
        out["lr"] = lr
        self.updates += 1
        return out

    def autocast(self) -> torch.autocast:
        """bfloat16 autocast for the networks' bodies when `precision` is bf16 (heads stay float32)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.precision == "bf16")

    def learning_rate(self) -> float:
        """This update's learning rate: `lr`, or on the linear schedule of `lr_anneal_updates`."""
        cfg = self.config
        if not cfg.lr_anneal_updates:
            return cfg.lr
        return cfg.lr * max(1.0 - self.updates / cfg.lr_anneal_updates, 1.0 / cfg.lr_anneal_updates)

    def _update_value_stats(self, returns: torch.Tensor, beta: float = 0.1) -> None:
        """PopArt (van Hasselt et al. 2016): move the return statistics towards this batch's and
        rescale the value head so that its outputs in return units stay what they were. The
        first update takes the batch's statistics as they are."""
        policy = self.policy
        w = 1.0 if int(policy.value_updates) == 0 else beta
        old_mean, old_std = policy.value_mean.clone(), policy.value_std.clone()
        mean = (1 - w) * old_mean + w * returns.mean()
        second = (1 - w) * (old_std**2 + old_mean**2) + w * (returns**2).mean()
        std = (second - mean**2).clamp_min(1e-4).sqrt()
        head = policy.value_head
        head.weight.mul_(old_std / std)
        head.bias.mul_(old_std).add_(old_mean - mean).div_(std)
        policy.value_mean.copy_(mean)
        policy.value_std.copy_(std)
        policy.value_updates += 1

    def optimizer_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, meta = optimizer_tensors(self.optimizer)
        return tensors, {**meta, "updates": self.updates}

    def load_optimizer_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        load_optimizer_tensors(self.optimizer, tensors, meta, self.device)
        self.updates = int(meta.get("updates", 0))

