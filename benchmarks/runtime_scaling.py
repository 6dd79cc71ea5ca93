"""Runtime throughput with 1 and 2 rollout workers on this machine, side by side, and RL²'s
policy-lag distribution.

Runs `metaray train` (local Ray) on the same config with `--workers 1` and `--workers 2`, one
after the other, and reads their progress rows: env steps/s (median over the iterations after
the first), the scaling ratio, and for RL² the per-batch policy lag. Writes
benchmarks/results/runtime_scaling/<date>-<commit>/runtime_scaling.json.

    python benchmarks/runtime_scaling.py --config configs/quickstart.yaml --iterations 60
    python benchmarks/runtime_scaling.py --config configs/maml-trpo-point-nav.yaml --iterations 15
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from metaray.bench.provenance import script_output

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))
from rl2_duan import machine  # noqa: E402


def run(config: str, workers: int, iterations: int) -> dict:
    run_dir = RESULTS / "runs" / f"scaling-{Path(config).stem}-w{workers}"
    subprocess.run(["rm", "-rf", str(run_dir)], check=True)
    exe = str(Path(sys.executable).with_name("metaray"))
    subprocess.run([exe, "train", config, "--run-dir", str(run_dir), "--workers", str(workers), "--iterations",
                    str(iterations), "--set", "metrics.tensorboard=false"], check=True, cwd=ROOT, capture_output=True)
    rows = [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines()][1:]
    steps = rows[-1]["env_steps_total"] - rows[0]["env_steps_total"]
    seconds = rows[-1]["wall_time_s"] - rows[0]["wall_time_s"]
    out = {
        "workers": workers, "iterations": len(rows) + 1,
        "env_steps_per_s": round(steps / seconds, 1),
        "env_steps_per_s_median_iteration": round(statistics.median(r["env_steps_per_s"] for r in rows), 1),
        "seconds_per_iteration_median": round(statistics.median(
            b["wall_time_s"] - a["wall_time_s"] for a, b in zip(rows, rows[1:], strict=False)), 3),
    }
    if "policy_lag_max" in rows[0]:
        out["policy_lag_mean"] = round(statistics.mean(r["policy_lag_mean"] for r in rows), 3)
        out["policy_lag_max_histogram"] = dict(sorted(Counter(int(r["policy_lag_max"]) for r in rows).items()))
        out["dropped_batches_total"] = rows[-1]["dropped_batches_total"]
    if "sampling_s" in rows[0]:
        out["sampling_s_median"] = round(statistics.median(r["sampling_s"] for r in rows), 3)
        out["learner_step_s_median"] = round(statistics.median(r["learner_step_s"] for r in rows), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--iterations", type=int, default=60)
    args = parser.parse_args()
    one, two = run(args.config, 1, args.iterations), run(args.config, 2, args.iterations)
    row = {"config": args.config, "one_worker": one, "two_workers": two,
           "scaling_ratio": round(two["env_steps_per_s"] / one["env_steps_per_s"], 2),
           "date": time.strftime("%Y-%m-%d"), "machine": machine()}
    store = script_output(__file__, "runtime_scaling.json")
    data = json.loads(store.read_text()) if store.exists() else []
    data = [d for d in data if d["config"] != args.config] + [row]
    store.write_text(json.dumps(data, indent=1) + "\n")
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
