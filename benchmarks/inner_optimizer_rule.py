"""What a learned inner optimizer does: its effective step size against the gradient's magnitude,
per layer, on held-out tasks (issue 30).

For a run trained with `maml.inner_optimizer: lstm` (or meta-sgd), this adapts the policy of the
newest checkpoint on held-out tasks as the workers do and records, for every parameter entry of
every task, the inner gradient g, the effective step size i (θ' = f θ − i g; meta-sgd: α) and the
decay 1 − f, then plots i / inner_lr against |g| per layer (one panel per parameter tensor, a
2D histogram) and writes the per-layer medians as JSON. SGD would be the horizontal line at 1.

    python benchmarks/inner_optimizer_rule.py RUN_DIR [--num-tasks 20] [--output PREFIX]

Seed 0's run of the `lstm-1step` trial, e.g.:
    python benchmarks/inner_optimizer_rule.py RUNS/inner-optimizers-point-nav/<bench>/lstm-1step-seed0
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from metaray.bench.provenance import script_output  # noqa: E402
from metaray.cluster.checkpoint import load_newest_checkpoint  # noqa: E402
from metaray.cluster.evaluation import load_run  # noqa: E402
from metaray.learner import maml  # noqa: E402
from metaray.networks import get_weights  # noqa: E402
from metaray.tasks import make_family  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--num-tasks", type=int, default=20)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--output", type=Path, default=None,
                        help="prefix of the .png and .json (default: benchmarks/results/inner_optimizer_rule/<date>-<commit>/<run>)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config, _ = load_run(args.run_dir)
    cfg = config.algo_config()
    if getattr(cfg, "inner_optimizer", "sgd") == "sgd":
        raise SystemExit(f"{args.run_dir}: trained with inner_optimizer sgd; nothing learned to show")
    found = load_newest_checkpoint(args.run_dir)
    family = make_family(config.task.family, config.task.kwargs)
    tasks = family.sample(args.num_tasks, np.random.default_rng(args.seed), "test")
    sampler = maml.MAMLSampler(family, cfg.model_copy(update={"num_inner_steps": 1}), args.num_tasks * cfg.episodes_per_task, args.seed)
    policy = maml.make_policy(sampler.env.single_observation_space, sampler.env.single_action_space, cfg)
    policy.load_state_dict({k.split("/", 1)[1]: torch.from_numpy(np.array(v)) for k, v in found.tensors.items()
                            if k.startswith("policy/")})
    sampler.set_weights(0, get_weights(policy))
    results = sampler.collect(tasks, 0)
    learner = maml.MAMLLearner(policy, cfg.model_copy(update={"num_inner_steps": 1}), torch.device("cpu"), seed=0)
    inner, _ = learner.stages(results)
    stage = inner[0]
    theta = policy.theta()
    with torch.no_grad():
        grads, losses = torch.vmap(torch.func.grad_and_value(lambda p, *a: maml.inner_loss(policy, p, *a)),
                                   in_dims=(None, 0, 0, 0, 0))(theta, stage.obs, stage.actions, stage.advantages, stage.mask)
        opt = policy.inner_optimizer
        sizes = opt.step_sizes()
        if sizes is None:  # the LSTM: its coefficients at the first inner step
            step, decay = opt.coefficients(grads, losses, {})
            split_step = dict(zip(opt.names, step.split(opt.sizes, 1), strict=True))
            split_decay = dict(zip(opt.names, decay.split(opt.sizes, 1), strict=True))
        else:
            split_step = {k: a.expand_as(grads[k]).reshape(args.num_tasks, -1) for k, a in sizes.items()}
            split_decay = {k: torch.zeros_like(v) for k, v in split_step.items()}
    names = [k for k in theta if grads[k].abs().sum() > 0]  # (post_log_std gets no inner gradient)
    summary = {}
    cols = 3
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        signed = grads[name].reshape(args.num_tasks, -1).flatten().numpy()
        g = np.abs(signed)
        ratio = (split_step[name].flatten() / cfg.inner_lr).numpy()
        keep = g > 0
        ax.hist2d(np.log10(g[keep]), ratio[keep], bins=40, cmap="viridis", norm=matplotlib.colors.LogNorm())
        ax.axhline(1.0, color="w", lw=0.8, ls="--")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("log10 |gradient|")
        ax.set_ylabel("step / inner_lr")
        summary[name] = {"median_step_over_inner_lr": float(np.median(ratio)), "p10": float(np.percentile(ratio, 10)),
                         "p90": float(np.percentile(ratio, 90)),
                         "median_decay": float(split_decay[name].median()), "median_abs_grad": float(np.median(g)),
                         # the rule reads the gradient's sign too (Andrychowicz et al.'s preprocessing)
                         "median_step_positive_gradient": float(np.median(ratio[signed > 0])) if (signed > 0).any() else None,
                         "median_step_negative_gradient": float(np.median(ratio[signed < 0])) if (signed < 0).any() else None}
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(f"{cfg.inner_optimizer} inner optimizer of {args.run_dir.name} (iteration {found.state['iteration']}), "
                 f"{args.num_tasks} held-out tasks")
    fig.tight_layout()
    prefix = args.output
    if prefix is None:  # the commit and command beside the plot (provenance.json)
        script_output(__file__, f"{args.run_dir.name}.json")
        prefix = script_output(__file__, f"{args.run_dir.name}.png").with_suffix("")
    fig.savefig(f"{prefix}.png", dpi=110)
    Path(f"{prefix}.json").write_text(json.dumps({"run": str(args.run_dir), "iteration": found.state["iteration"],
                                                  "inner_optimizer": cfg.inner_optimizer, "layers": summary}, indent=1))
    for name, s in summary.items():
        print(f"{name:>14}: step/inner_lr median {s['median_step_over_inner_lr']:.3f} (p10 {s['p10']:.3f}, p90 {s['p90']:.3f}), "
              f"decay {s['median_decay']:+.4f}; g > 0: {s['median_step_positive_gradient']:.3f}, "
              f"g < 0: {s['median_step_negative_gradient']:.3f}")
    print(f"wrote {prefix}.png and {prefix}.json")


if __name__ == "__main__":
    main()
