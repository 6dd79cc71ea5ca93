"""PEARL's learner on CPU: seconds per gradient step at a config's sizes, float32 against
`pearl.precision: bf16`, measured side by side in one process (alternating blocks), on replay
filled by the config's own sampler.

    python benchmarks/pearl_learner_cost.py configs/pearl-halfcheetah-vel.yaml --steps 50 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import torch

from metaray.bench.provenance import script_output
from metaray.cluster.config import load_config
from metaray.learner import pearl
from metaray.tasks import make_family


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--steps", type=int, default=50, help="gradient steps per timed block")
    parser.add_argument("--repeats", type=int, default=3, help="blocks per precision, alternating")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON path (default benchmarks/results/pearl_learner_cost/<date>-<commit>/pearl_learner_cost_<config>.json)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = load_config(args.config)
    algo = config.algo_config()
    family = make_family(config.task.family, config.task.kwargs)
    sampler = pearl.PEARLSampler(family, algo, algo.rounds_per_update, seed=0)
    batch, _ = sampler.sample(algo.rounds_per_update)
    learners = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        cfg = algo.model_copy(update={"precision": precision, "warmup_steps": 0, "updates_per_step": 1e-9})
        learner = pearl.PEARLLearner(pearl.PEARLAgent(sampler.spec, cfg), cfg, torch.device("cpu"), seed=0)
        learner.update([batch])  # fills the replay; no gradient step yet
        learner._step()  # warm-up
        learners[precision] = learner
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(args.repeats):
        for precision, learner in learners.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                learner._step()
            times[precision].append((time.perf_counter() - start) / args.steps)
    best = {p: min(t) for p, t in times.items()}
    result = {
        "config": args.config, "meta_batch": algo.meta_batch, "batch_size": algo.batch_size,
        "hidden_size": algo.hidden_size, "s_per_step": times, "best_s_per_step": best,
        "bf16_speedup": best["fp32"] / best["bf16"],
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "machine": f"{platform.processor() or platform.machine()}, torch threads 1",
    }
    print(f"{args.config}: fp32 {best['fp32'] * 1e3:.1f} ms / step, bf16 {best['bf16'] * 1e3:.1f} ms / step "
          f"({result['bf16_speedup']:.2f}x)")
    output = args.output or script_output(__file__, f"pearl_learner_cost_{Path(args.config).stem}.json")
    output.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
