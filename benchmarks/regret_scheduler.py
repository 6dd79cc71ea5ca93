"""Regret-driven task scheduling against uniform sampling, side by side on point-nav.

Trains MAML-TRPO (configs/maml-trpo-point-nav.yaml, local Ray, 2 workers) twice with the same
seed, once with `scheduler.strategy: uniform` and once with `regret` (the scripted expert as
antagonist), then evaluates both with `metaray eval` on the same held-out tasks: the test split
(goals in [-0.5, 0.5]^2) and an out-of-distribution ring (max(|x|, |y|) in [0.5, 0.7]). Reports
the mean post-adaptation return and the mean over the worst 10% of tasks (CVaR 10%).
Writes benchmarks/results/regret_scheduler/<date>-<commit>/regret_scheduler.json and .png.

    python benchmarks/regret_scheduler.py --iterations 60 --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from metaray.bench.provenance import script_output

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))
from rl2_duan import machine, metaray  # noqa: E402

CONFIG = "configs/maml-trpo-point-nav.yaml"
RING = ["task.kwargs.goal_low=-0.7", "task.kwargs.goal_high=0.7", "task.kwargs.goal_min_abs=0.5"]


def evaluate(run_dir: Path, num_tasks: int, sets: list[str], output: Path) -> dict:
    out = metaray("eval", str(run_dir), "--json", "--num-tasks", str(num_tasks), "--output", str(output),
                  *[a for s in sets for a in ("--set", s)])
    if out.returncode != 0:
        raise RuntimeError(f"metaray eval failed: {out.stderr.strip()[-500:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {k: result[k] for k in ("num_tasks", "return_pre", "mean_return", "cvar10_return")}


def run(strategy: str, seed: int, iterations: int, eval_tasks: int) -> dict:
    run_dir = RESULTS / "runs" / f"regret-{strategy}-s{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    out = metaray("train", CONFIG, "--run-dir", str(run_dir), "--iterations", str(iterations), "--set", f"seed={seed}",
                  "--set", f"scheduler.strategy={strategy}", "--set", "metrics.tensorboard=false")
    if out.returncode != 0:
        raise RuntimeError(f"metaray train failed: {out.stderr.strip()[-1000:]}")
    rows = [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines()]
    return {
        "strategy": strategy, "seed": seed, "iterations": iterations, "train_wall_s": round(time.perf_counter() - start, 1),
        "train_return_post_last10": sum(r["return_post"] for r in rows[-10:]) / len(rows[-10:]),
        "regret_mean_last": rows[-1].get("regret_mean"),
        "test": evaluate(run_dir, eval_tasks, [], run_dir / "eval.json"),
        "ring": evaluate(run_dir, eval_tasks, RING, run_dir / "eval-ring.json"),
    }


def plot(results: list[dict], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, split, title in ((axes[0], "test", "held-out test goals"), (axes[1], "ring", "out-of-distribution ring")):
        labels, means, cvars = [], [], []
        for r in results:
            labels.append(f"{r['strategy']}\nseed {r['seed']}")
            means.append(r[split]["mean_return"])
            cvars.append(r[split]["cvar10_return"])
        x = range(len(labels))
        ax.bar([i - 0.2 for i in x], means, 0.4, label="mean")
        ax.bar([i + 0.2 for i in x], cvars, 0.4, label="worst 10% (CVaR)")
        ax.set_xticks(list(x), labels, fontsize=8)
        ax.set_title(title)
        ax.set_ylabel("post-adaptation return")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--eval-tasks", type=int, default=100)
    args = parser.parse_args()
    results = []
    for seed in args.seeds:
        for strategy in ("uniform", "regret"):
            results.append(run(strategy, seed, args.iterations, args.eval_tasks))
            print(json.dumps(results[-1]), flush=True)
    out = script_output(__file__, "regret_scheduler.json")
    out.write_text(json.dumps({"config": CONFIG, "date": time.strftime("%Y-%m-%d"), "machine": machine(),
                               "ring": RING, "runs": results}, indent=1) + "\n")
    plot(results, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
