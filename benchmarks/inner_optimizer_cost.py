"""Cost of a MAML-TRPO learner step per inner optimizer, side by side in one process (issue 30).

On one real meta-batch of a shipped config (sampled once with the untrained policy), times the
whole learner update (`MAMLLearner.update`: old policies, meta-gradient, conjugate gradient,
line search, and the learned optimizer's own Adam step) for
- sgd and meta-sgd (every product in closed form),
- lstm with its curvature in closed form, the rule's coefficients held fixed (`closed_form: true`,
  the default): the meta-gradient and the line search through the rule by autograd,
- lstm by autograd throughout (`closed_form: false`: the KL Hessian through the rule).
Each variant starts from the same weights (the LSTM perturbed off its SGD-equal start, as after
meta-training) and is timed as the median of `--repeats` updates. Writes
benchmarks/results/inner_optimizer_cost/<date>-<commit>/inner_optimizer_cost.json.

    python benchmarks/inner_optimizer_cost.py [--configs configs/maml-trpo-point-nav.yaml ...] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from rl2_duan import machine  # noqa: E402

from metaray.bench.provenance import git_commit, script_output  # noqa: E402
from metaray.cluster.config import load_config  # noqa: E402
from metaray.learner import maml  # noqa: E402
from metaray.networks import get_weights  # noqa: E402
from metaray.tasks import make_family  # noqa: E402

VARIANTS = {  # name -> config changes
    "sgd": {"inner_optimizer": "sgd"},
    "meta-sgd": {"inner_optimizer": "meta-sgd"},
    "lstm (curvature in closed form)": {"inner_optimizer": "lstm", "closed_form": True},
    "lstm (autograd throughout)": {"inner_optimizer": "lstm", "closed_form": False},
}


def perturbed(policy: maml.GaussianMLPPolicy, seed: int = 1) -> maml.GaussianMLPPolicy:
    """The LSTM moved off its SGD-equal start (its output layer is zero at initialisation)."""
    learned = getattr(policy, "inner_optimizer", None)
    if isinstance(learned, maml.LSTMInnerOptimizer):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in learned.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return policy


def measure(config_path: str, repeats: int) -> dict:
    config = load_config(config_path)
    base = config.algo_config()
    family = make_family(config.task.family, config.task.kwargs)
    tasks = family.sample(base.meta_batch_size, np.random.default_rng(0))
    rows, results = {}, None
    for name, update in VARIANTS.items():
        cfg = base.model_copy(update=update)
        torch.manual_seed(0)
        sampler = maml.MAMLSampler(family, cfg, 1, seed=0)
        policy = perturbed(maml.make_policy(sampler.env.single_observation_space, sampler.env.single_action_space, cfg))
        if results is None:  # one meta-batch for every variant (sampled with the untrained policy)
            sampler.set_weights(0, get_weights(policy))
            start = time.perf_counter()
            results = sampler.collect(tasks, 0)
            sampling_s = time.perf_counter() - start
        times, stats = [], {}
        for _ in range(repeats):
            learner = maml.MAMLLearner(copy.deepcopy(policy), cfg, torch.device("cpu"), seed=0)
            start = time.perf_counter()
            stats = learner.update(results)
            times.append(time.perf_counter() - start)
        rows[name] = {"update_s": round(statistics.median(times), 3), "update_s_all": [round(t, 3) for t in times],
                      "step_accepted": stats.get("step_accepted"), "meta_loss": stats.get("meta_loss"), "kl": stats.get("kl")}
        print(f"{config_path}  {name:34s} {rows[name]['update_s']:.3f} s", flush=True)
    sgd, closed, auto = (rows[k]["update_s"] for k in ("sgd", "lstm (curvature in closed form)", "lstm (autograd throughout)"))
    return {"config": config_path, "tasks": base.meta_batch_size, "episodes_per_task": base.episodes_per_task,
            "hidden_sizes": list(base.hidden_sizes), "cg_iters": base.cg_iters, "cg_subsample": base.cg_subsample,
            "sampling_s_one_meta_batch": round(sampling_s, 2), "variants": rows,
            "lstm_closed_form_speedup": round(auto / closed, 2), "lstm_closed_form_over_sgd": round(closed / sgd, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["configs/maml-trpo-point-nav.yaml", "configs/maml-trpo-halfcheetah-vel.yaml"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON path (default benchmarks/results/inner_optimizer_cost/<date>-<commit>/inner_optimizer_cost.json)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "git": git_commit(ROOT), "torch_threads": 1,
           "configs": [measure(c, args.repeats) for c in args.configs]}
    args.output = args.output or script_output(__file__, "inner_optimizer_cost.json")
    args.output.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({c["config"]: (c["lstm_closed_form_speedup"], c["lstm_closed_form_over_sgd"]) for c in out["configs"]}))


if __name__ == "__main__":
    main()
