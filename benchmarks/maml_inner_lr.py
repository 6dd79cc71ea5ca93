"""Does a MAML run adapt better with another inner step size than the one it was trained with?
Each run's newest checkpoint on the same held-out tasks (its `metaray eval` draw), the inner step
(`maml.inner_lr`, plain SGD) set to each value given; per value the return before and after
adaptation and the gain with its standard error over tasks (paired: the same tasks and the same
pre-adaptation episodes for every value).

    python benchmarks/maml_inner_lr.py RUN_DIR [RUN_DIR ...] --lrs 0.03 0.1 0.3 [--num-tasks 40]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from metaray.bench.provenance import script_output
from metaray.cluster.checkpoint import load_newest_checkpoint
from metaray.cluster.config import load_config
from metaray.cluster.evaluation import evaluate_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--lrs", type=float, nargs="+", required=True)
    parser.add_argument("--num-tasks", type=int, default=None, help="default: the run's eval.num_tasks")
    parser.add_argument("--name", default="maml_inner_lr.json")
    args = parser.parse_args()
    rows = []
    for run in args.runs:
        found = load_newest_checkpoint(run)
        if found.path is None:
            raise SystemExit(f"{run}: no checkpoint loads")
        trained = load_config(run / "config.yaml")
        if trained.algo != "maml" or trained.algo_config().inner_optimizer != "sgd":
            raise SystemExit(f"{run}: not a MAML run with the plain SGD inner step")
        for lr in args.lrs:
            config = load_config(run / "config.yaml", [f"maml.inner_lr={lr}"])
            out = evaluate_weights(config, found.tensors, num_tasks=args.num_tasks, where=str(found.path))
            pre = np.array([t["return_pre"] for t in out["tasks"]])
            post = np.array([t["return_post"] for t in out["tasks"]])
            gain = post - pre
            rows.append({"run": str(run), "checkpoint": found.path.name, "trained_inner_lr": trained.algo_config().inner_lr,
                         "inner_lr": lr, "num_tasks": out["num_tasks"], "eval_seed": out["seed"],
                         "return_pre": float(pre.mean()), "return_post": float(post.mean()),
                         "gain": float(gain.mean()), "gain_se": float(gain.std(ddof=1) / np.sqrt(len(gain))),
                         "per_task_pre": pre.tolist(), "per_task_post": post.tolist()})
            r = rows[-1]
            print(f"{run.name} {r['checkpoint']} inner_lr {lr:g}: pre {r['return_pre']:.2f} -> post {r['return_post']:.2f}, "
                  f"gain {r['gain']:+.2f} ± {r['gain_se']:.2f} (SE over {r['num_tasks']} tasks)", flush=True)
    path = script_output(__file__, args.name)
    path.write_text(json.dumps(rows, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
