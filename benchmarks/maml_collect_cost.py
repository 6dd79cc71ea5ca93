"""What one MAML meta-iteration's sampling costs on one core, and how much of it is MuJoCo's
`mj_step`: one `collect` of a config's meta-batch (after one warm-up collect), in this process,
one torch thread, under cProfile. Sizes long runs (e.g. ant-dir's 1000 iterations) before they
are queued. Writes benchmarks/results/maml_collect_cost/<date>-<commit>/maml_collect_cost.json.

    python benchmarks/maml_collect_cost.py configs/maml-trpo-ant-dir.yaml configs/maml-trpo-halfcheetah-vel.yaml
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import time

import numpy as np
import torch

from metaray.bench.provenance import script_output
from metaray.cluster.config import load_config
from metaray.learner.maml.sampler import MAMLSampler
from metaray.tasks import make_family


def measure(path: str) -> dict:
    config = load_config(path)
    algo = config.algo_config()
    family = make_family(config.task.family, config.task.kwargs)
    sampler = MAMLSampler(family, algo, slots=algo.meta_batch_size * algo.episodes_per_task, seed=0)
    tasks = family.sample(algo.meta_batch_size, np.random.default_rng(1))
    sampler.collect(tasks, sampler.version)  # warm-up: envs built, caches filled
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    results = sampler.collect(tasks, sampler.version)
    profile.disable()
    seconds = time.perf_counter() - start
    steps = sum(r.env_steps for r in results)
    stats = pstats.Stats(profile).stats
    mj_step = sum(v[2] for k, v in stats.items() if k[2] == "<built-in method mujoco._functions.mj_step>")
    sampler.close()
    return {"config": path, "family": config.task.family, "tasks": algo.meta_batch_size,
            "episodes_per_task": algo.episodes_per_task, "env_steps": steps, "collect_s": round(seconds, 2),
            "env_steps_per_s": round(steps / seconds), "mj_step_share": round(mj_step / seconds, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", help="MAML-family configs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for path in args.configs:
        rows.append(measure(path))
        print(json.dumps(rows[-1]), flush=True)
    script_output(__file__, "maml_collect_cost.json").write_text(
        json.dumps({"date": time.strftime("%Y-%m-%d"), "torch_threads": 1, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
