"""Meta-World ML1 meta-test success of RL² and MAML-TRPO, trained and evaluated with metaray.

For each algorithm: `metaray train` its ML1 config (local Ray, 2 workers) with the overrides
below, then `metaray eval` on the test split (held-out goals), and once more on the first
checkpoint, so the table shows success before and after meta-training on the same test tasks.
Writes benchmarks/results/metaworld_quality/<date>-<commit>/metaworld_ml1_<env>.json and .png (training success per iteration).

    python benchmarks/metaworld_quality.py --env reach-v3 --maml-iterations 30 --rl2-iterations 60

The configs are Meta-World's 500-step episodes and garage's MAML settings; the runs here are
sized down (fewer tasks and episodes per iteration, few iterations) to fit 2 CPU cores: the
scale is in the JSON.
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

RUNS = {
    "maml": ("configs/maml-trpo-ml1-reach.yaml", ["maml.meta_batch_size=10", "maml.episodes_per_task=5",
                                                  "checkpoint.every=5"]),
    "rl2": ("configs/rl2-ml1-reach.yaml", ["checkpoint.every=5"]),
}


def evaluate(run_dir: Path, num_tasks: int) -> dict:
    out = metaray("eval", str(run_dir), "--json", "--num-tasks", str(num_tasks))
    if out.returncode != 0:
        raise RuntimeError(f"metaray eval {run_dir} failed: {out.stderr.strip()[-500:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    keep = ("iteration", "num_tasks", "mean_return", "return_pre", "return_post", "success_rate",
            "success_rate_pre", "success_last")
    return {k: result[k] for k in keep if k in result}


def run(algo: str, env_name: str, iterations: int, seed: int, eval_tasks: int) -> dict:
    config, overrides = RUNS[algo]
    run_dir = RESULTS / "runs" / f"metaworld-{algo}-{env_name}-s{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    sets = [*overrides, f"task.kwargs.env_name={env_name}", f"seed={seed}", "metrics.tensorboard=false",
            "checkpoint.keep=1000"]  # keep the first checkpoint for the before/after evaluation
    start = time.perf_counter()
    out = metaray("train", config, "--run-dir", str(run_dir), "--iterations", str(iterations),
                  *[a for s in sets for a in ("--set", s)])
    if out.returncode != 0:
        raise RuntimeError(f"metaray train {config} failed: {out.stderr.strip()[-1000:]}")
    train_s = time.perf_counter() - start
    rows = [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines()]
    final = evaluate(run_dir, eval_tasks)
    # the earliest checkpoint on the same test tasks (checkpoints are directories named by iteration)
    ckpts = sorted((run_dir / "checkpoints").iterdir())
    early_dir = RESULTS / "runs" / f"metaworld-{algo}-{env_name}-s{seed}-first"
    shutil.rmtree(early_dir, ignore_errors=True)
    early_dir.mkdir(parents=True)
    shutil.copy(run_dir / "config.yaml", early_dir / "config.yaml")
    shutil.copytree(ckpts[0], early_dir / "checkpoints" / ckpts[0].name)
    first = evaluate(early_dir, eval_tasks)
    key = "success_rate_post" if algo == "maml" else "success_rate"
    return {
        "algo": algo, "config": config, "overrides": sets, "seed": seed, "iterations": iterations,
        "env_steps": rows[-1]["env_steps_total"], "train_wall_s": round(train_s, 1),
        "train_success": [r.get(key) for r in rows],
        "train_success_pre": [r.get("success_rate_pre") for r in rows] if algo == "maml" else None,
        "eval_first_checkpoint": first, "eval_final": final,
    }


def plot(results: list[dict], env_name: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        label = "MAML-TRPO post-adaptation" if r["algo"] == "maml" else "RL² (share of trial episodes)"
        ax.plot(range(1, len(r["train_success"]) + 1), r["train_success"], label=f"{label}, seed {r['seed']}")
        if r["train_success_pre"]:
            ax.plot(range(1, len(r["train_success_pre"]) + 1), r["train_success_pre"], "--",
                    label=f"MAML-TRPO pre-adaptation, seed {r['seed']}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("success rate on training tasks")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Meta-World ML1 {env_name}: training success")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="reach-v3")
    parser.add_argument("--algos", nargs="+", default=["maml", "rl2"], choices=sorted(RUNS))
    parser.add_argument("--maml-iterations", type=int, default=30)
    parser.add_argument("--rl2-iterations", type=int, default=60)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--eval-tasks", type=int, default=50, help="test tasks per evaluation (ML1 has 50)")
    args = parser.parse_args()
    results = []
    for algo in args.algos:
        iterations = args.maml_iterations if algo == "maml" else args.rl2_iterations
        for seed in args.seeds:
            results.append(run(algo, args.env, iterations, seed, args.eval_tasks))
            print(json.dumps({k: results[-1][k] for k in ("algo", "seed", "train_wall_s", "eval_first_checkpoint",
                                                          "eval_final")}), flush=True)
    stem = script_output(__file__, f"metaworld_ml1_{args.env}.json")
    stem.with_suffix(".json").write_text(json.dumps(
        {"env": args.env, "date": time.strftime("%Y-%m-%d"), "machine": machine(), "runs": results}, indent=1) + "\n")
    plot(results, args.env, stem.with_suffix(".png"))


if __name__ == "__main__":
    main()
