"""MAML-TRPO learner speed, side by side in one process on the same point-nav meta-batch.

Compares, on real data (20 tasks x 20 episodes x horizon 100, 64x64 tanh, second order):
- the whole update with closed-form curvature (default, `closed_form: true`);
- the whole update differentiating through the vmapped torch.func inner step (`closed_form: false`);
- the whole update as a per-task Python loop with plain autograd (pytorch-maml-rl's structure:
  surrogate, KL and every Hessian-vector product loop over tasks), same CG and line search;
- the meta-gradient alone: vmapped over tasks vs a per-task Python loop (pytorch-maml-rl's
  structure), and the largest difference between the two gradients.
Writes benchmarks/results/maml_learner_speed/<date>-<commit>/maml_learner_speed_threads<N>.json.
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from metaray.bench.provenance import script_output

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from rl2_duan import machine  # noqa: E402

from metaray.learner import maml  # noqa: E402
from metaray.tasks import make_family  # noqa: E402


def timed(fn, repeats: int = 3) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def loop_meta_gradient(policy, params, inner, post, config):
    """Per-task loop with plain autograd: the meta-gradient baseline."""
    n, total = post.obs.shape[0], 0.0
    for i in range(n):
        p = dict(params)
        for stage in inner:
            loss = maml.inner_loss(policy, p, stage.obs[i], stage.actions[i], stage.advantages[i], stage.mask[i])
            grads = torch.autograd.grad(loss, list(p.values()), create_graph=True)
            p = {k: v - config.inner_lr * g for (k, v), g in zip(p.items(), grads, strict=True)}
        mean, log_std = maml.policy_forward(policy, p, post.obs[i])
        ratio = (maml.gaussian_log_prob(mean, log_std, post.actions[i]) - post.logp[i]).exp()
        total = total - maml.episode_mean(ratio * post.advantages[i], post.mask[i])
    return torch.autograd.grad(total / n, list(params.values()))


def loop_objective(policy, inner, post, old_mean, old_log_std, config, params):
    """(surrogate, KL) of θ as a per-task Python loop with plain autograd, pytorch-maml-rl's
    structure: the whole-update baseline when handed to the same `trpo_step`."""
    n, loss, kl = post.obs.shape[0], 0.0, 0.0
    outer_graph = torch.is_grad_enabled()  # off during the line search
    for i in range(n):
        p = dict(params) if outer_graph else {k: v.detach().requires_grad_() for k, v in params.items()}
        for stage in inner:
            with torch.enable_grad():
                inner_l = maml.inner_loss(policy, p, stage.obs[i], stage.actions[i], stage.advantages[i], stage.mask[i])
                grads = torch.autograd.grad(inner_l, list(p.values()), create_graph=outer_graph)
            p = {k: v - config.inner_lr * g for (k, v), g in zip(p.items(), grads, strict=True)}
        mean, log_std = maml.policy_forward(policy, p, post.obs[i])
        ratio = (maml.gaussian_log_prob(mean, log_std, post.actions[i]) - post.logp[i]).exp()
        loss = loss - maml.episode_mean(ratio * post.advantages[i], post.mask[i])
        kl = kl + maml.episode_mean(maml.gaussian_kl(old_mean[i], old_log_std[i], mean, log_std), post.mask[i])
    return loss / n, kl / n


def loop_update(policy, results, config) -> dict[str, float]:
    """The whole MAML-TRPO learner step (same data, same CG/line search) on the loop objective."""
    learner = maml.MAMLLearner(copy.deepcopy(policy), config, torch.device("cpu"), 0)
    inner, post = learner.stages(results)
    params = dict(learner.policy.named_parameters())
    old_mean, old_log_std, old_logp = learner.outer.old_post_policy(params, inner, post)
    post = post._replace(logp=old_logp)
    objective = partial(loop_objective, learner.policy, inner, post, old_mean, old_log_std, config)
    return maml.trpo_step(objective, params, config, None)[1]


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads for every variant")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    family = make_family("point-nav")
    config = maml.MAMLConfig()
    sampler = maml.MAMLSampler(family, config, 1, seed=0)
    policy = maml.make_policy(sampler.env.single_observation_space, sampler.env.single_action_space, config)
    sampler.set_weights(0, maml.get_weights(policy))
    results = sampler.collect(family.sample(config.meta_batch_size, np.random.default_rng(0)), 0)

    def update(closed_form: bool):
        cfg = config.model_copy(update={"closed_form": closed_form})
        return lambda: maml.MAMLLearner(copy.deepcopy(policy), cfg, torch.device("cpu"), 0).update(results)

    closed_s, closed_stats = timed(update(True))
    autograd_s, _ = timed(update(False))
    loop_s, loop_stats = timed(lambda: loop_update(policy, results, config))

    learner = maml.MAMLLearner(copy.deepcopy(policy), config, torch.device("cpu"), 0)
    inner, post = learner.stages(results)
    params = {k: v.detach().clone().requires_grad_() for k, v in learner.policy.named_parameters()}
    old_mean, old_log_std, old_logp = learner.outer.old_post_policy(params, inner, post)
    post = post._replace(logp=old_logp)

    def vmapped():
        loss = maml.surrogate_and_kl(learner.policy, params, inner, post, old_mean, old_log_std, config)[0]
        return torch.autograd.grad(loss, list(params.values()))

    vmap_s, g_vmap = timed(vmapped)
    grad_loop_s, g_loop = timed(lambda: loop_meta_gradient(learner.policy, params, inner, post, config))
    diff = max(float((a - b).abs().max()) for a, b in zip(g_vmap, g_loop, strict=True))
    scale = max(float(a.abs().max()) for a in g_loop)
    row = {
        "update_closed_form_s": round(closed_s, 3), "update_vmapped_autograd_s": round(autograd_s, 3),
        "update_speedup": round(autograd_s / closed_s, 2),
        "update_loop_s": round(loop_s, 3), "update_loop_over_closed_form": round(loop_s / closed_s, 2),
        "update_meta_loss_closed_form": closed_stats["meta_loss"], "update_meta_loss_loop": loop_stats["meta_loss"],
        "meta_gradient_vmapped_s": round(vmap_s, 3), "meta_gradient_loop_s": round(grad_loop_s, 3),
        "meta_gradient_loop_over_vmapped": round(grad_loop_s / vmap_s, 2),
        "meta_gradient_max_abs_diff": diff, "meta_gradient_max_abs": scale,
        "tasks": config.meta_batch_size, "episodes_per_task": config.episodes_per_task, "horizon": 100,
        "torch_threads": args.threads, "date": time.strftime("%Y-%m-%d"), "machine": machine(),
    }
    script_output(__file__, f"maml_learner_speed_threads{args.threads}.json").write_text(json.dumps(row, indent=1) + "\n")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
