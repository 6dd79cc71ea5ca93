"""A MAML-RL training run: time per meta-iteration and pre/post-adaptation returns.

Runs `metaray train` (local Ray, 2 rollout workers + learner) on a config for N meta-iterations,
then `metaray eval` on held-out tasks, and adds a row to benchmarks/results/maml_run/<date>-<commit>/maml_runs.json
(the runs of one commit together).

    python benchmarks/maml_run.py --config configs/maml-trpo-point-nav.yaml --iterations 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from metaray.bench.provenance import script_output

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))
from rl2_duan import machine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/maml-trpo-point-nav.yaml")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serial", action="store_true")
    args = parser.parse_args()
    name = Path(args.config).stem
    run_dir = RESULTS / "runs" / f"{name}-it{args.iterations}-seed{args.seed}{'-serial' if args.serial else ''}"
    exe = str(Path(sys.executable).with_name("metaray"))
    cmd = [exe, "train", args.config, "--run-dir", str(run_dir), "--iterations", str(args.iterations),
           "--set", f"seed={args.seed}"] + (["--serial"] if args.serial else [])
    start = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True)
    command_s = time.time() - start
    ev = subprocess.run([exe, "eval", str(run_dir), "--json"], check=True, cwd=ROOT, capture_output=True, text=True)
    result = json.loads(ev.stdout)
    rows = [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines()]
    times = [b["wall_time_s"] - a["wall_time_s"] for a, b in zip(rows, rows[1:], strict=False)]
    row = {
        "config": args.config, "seed": args.seed, "mode": "serial" if args.serial else "local Ray, 2 workers",
        "iterations": len(rows), "command_wall_s": round(command_s, 1),
        "meta_iteration_s_median": round(statistics.median(times), 3) if times else None,
        "sampling_s_median": round(statistics.median(r["sampling_s"] for r in rows), 3),
        "learner_step_s_median": round(statistics.median(r["learner_step_s"] for r in rows), 3),
        "env_steps_per_iteration": rows[-1]["env_steps_total"] // len(rows),
        "curve": [{"iteration": r["iteration"], "return_pre": round(r["return_pre"], 2),
                   "return_post": round(r["return_post"], 2)} for r in rows],
        "test_tasks": result["num_tasks"], "test_return_pre": round(result["return_pre"], 2),
        "test_return_post": round(result["return_post"], 2),
        "date": time.strftime("%Y-%m-%d"), "machine": machine(),
    }
    store = script_output(__file__, "maml_runs.json")
    data = json.loads(store.read_text()) if store.exists() else []
    data = [d for d in data if (d["config"], d["seed"], d["iterations"], d["mode"]) !=
            (row["config"], row["seed"], row["iterations"], row["mode"])] + [row]
    store.write_text(json.dumps(data, indent=1) + "\n")
    print(json.dumps({k: v for k, v in row.items() if k != "curve"}))


if __name__ == "__main__":
    main()
