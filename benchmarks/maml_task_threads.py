"""MAML-TRPO's closed forms on the learner's torch threads: each product split over intra-op
threads, against whole task groups side by side with one intra-op thread each
(`curvature.map_tasks`), in one process on the same halfcheetah-vel meta-batch, alternating;
on a quiet machine and with one busy process (a Python loop, same priority) beside.

Variants: 1 thread; 2 intra-op threads with the line search over all tasks stacked (the learner
before the change); 2 intra-op threads, every group in turn; 2 threads as task groups side by
side (now). Times (medians): the KL Hessian-vector product over the `cg_subsample` of tasks (what
conjugate gradient calls ten times per update), the line search's objective, the whole update.
Checks that every variant gives the same product. Writes benchmarks/results/maml_task_threads/<date>-<commit>/maml_task_threads.json.

    python benchmarks/maml_task_threads.py --repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import yaml

from metaray.bench.provenance import script_output

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from rl2_duan import commit, machine  # noqa: E402

from metaray.learner import maml  # noqa: E402
from metaray.learner.maml import curvature  # noqa: E402
from metaray.tasks import make_family  # noqa: E402


def in_turn(fn: Callable, items) -> list:
    """map_tasks as it was before: every group in turn on the intra-op threads."""
    return [fn(x) for x in items]


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--config", default="configs/maml-trpo-halfcheetah-vel.yaml")
    args = parser.parse_args()
    raw = yaml.safe_load((ROOT / args.config).read_text())
    config = maml.MAMLConfig(**raw["maml"])
    family = make_family(raw["task"]["family"], raw["task"].get("kwargs", {}))
    torch.set_num_threads(1)
    sampler = maml.MAMLSampler(family, config, 1, seed=0)
    policy = maml.make_policy(sampler.env.single_observation_space, sampler.env.single_action_space, config)
    sampler.set_weights(0, maml.get_weights(policy))
    results = sampler.collect(family.sample(config.meta_batch_size, np.random.default_rng(0)), 0)
    learner = maml.MAMLLearner(copy.deepcopy(policy), config, torch.device("cpu"), 0)
    inner, post = learner.stages(results)
    params = {k: v.detach() for k, v in learner.policy.named_parameters()}
    with torch.no_grad():
        kl = curvature.KLCurvature(learner.policy, params, inner, post, config, subsample=config.cg_subsample,
                                   generator=torch.Generator().manual_seed(0))
    v = torch.randn(maml.flat(params.values()).shape, generator=torch.Generator().manual_seed(1))

    def update() -> object:
        return maml.MAMLLearner(copy.deepcopy(policy), config, torch.device("cpu"), 0).update(results)

    def stacked_line_search(policy_, params_, inner_, post_, old_mean, old_log_std, inner_lr, config_, tasks_per_group=None):
        """The line search's objective before: one pass over all tasks stacked."""
        adapted = curvature.adapted_closed_form(policy_, params_, inner_, post_.obs.shape[0], inner_lr)
        return maml.trpo.post_surrogate_and_kl(policy_, adapted, post_, old_mean, old_log_std)

    with torch.no_grad():
        old_mean, old_log_std = kl.old_mean, kl.old_log_std
        post_old = post._replace(logp=maml.gaussian_log_prob(old_mean, old_log_std, post.actions))
        moved = {k: p + 0.01 for k, p in params.items()}

    def line_search() -> object:
        with torch.no_grad():
            return curvature.line_search_objective(learner.policy, moved, inner, post_old, old_mean, old_log_std,
                                                   config.inner_lr, config)

    variants = {  # name: (threads, groups in turn on the intra-op threads, line search stacked)
        "1 thread": (1, True, False),
        "2 intra-op threads, line search stacked (before)": (2, True, True),
        "2 intra-op threads": (2, True, False),
        "2 threads, task groups side by side (now)": (2, False, False),
    }
    out_rows: dict[str, dict] = {}
    for condition in ("quiet", "one busy process beside"):
        busy = None if condition == "quiet" else subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            rows: dict[str, dict] = {name: {"hvp_s": [], "line_search_s": [], "update_s": []} for name in variants}
            products = {}
            for _ in range(args.repeats):  # alternating, so that drifts of the machine hit every variant
                for name, (threads, in_turn_groups, stacked) in variants.items():
                    torch.set_num_threads(threads)
                    with contextlib.ExitStack() as stack:
                        if in_turn_groups:
                            stack.enter_context(mock.patch.object(curvature, "map_tasks", in_turn))
                        if stacked:
                            stack.enter_context(mock.patch.object(curvature, "line_search_objective", stacked_line_search))
                            stack.enter_context(mock.patch.object(maml.learning, "line_search_objective", stacked_line_search))
                        with torch.no_grad():
                            rows[name]["hvp_s"].append(timed(lambda: kl(v, params), 1)[0])
                            products[name] = kl(v, params)
                        rows[name]["line_search_s"].append(timed(line_search, 1)[0])
                        rows[name]["update_s"].append(timed(update, 1)[0])
        finally:
            if busy is not None:
                busy.kill()
        torch.set_num_threads(1)
        reference = products["1 thread"]
        out_rows[condition] = {
            name: {**{f"{k}_median": round(statistics.median(t), 4) for k, t in r.items()},
                   **{f"{k}_all": [round(x, 4) for x in t] for k, t in r.items()},
                   "max_rel_diff_to_1_thread": float((products[name] - reference).abs().max() / reference.abs().max())}
            for name, r in rows.items()
        }
    out = {"date": time.strftime("%Y-%m-%d"), "commit": commit(), "machine": machine(), "config": args.config,
           "tasks": config.meta_batch_size, "hessian_tasks": len(kl.hessian_groups), "repeats": args.repeats,
           "conditions": out_rows}
    path = script_output(__file__, "maml_task_threads.json")
    path.write_text(json.dumps(out, indent=1) + "\n")
    for condition, by_name in out_rows.items():
        for name, r in by_name.items():
            print(f"{condition:24s} {name:50s} hvp {r['hvp_s_median']:.3f} s  line search {r['line_search_s_median']:.3f} s  "
                  f"update {r['update_s_median']:.2f} s")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
