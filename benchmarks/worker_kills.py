"""Iteration time while rollout workers keep dying: `kill -9` of one rollout worker every
`--every` seconds during a `metaray train` run (local Ray), as an operator's bad day would.

Before background restarts (issue 25, item 7) a restart's backoff blocked the driver and the
healthy workers idled: iterations took 28-72 s instead of ~2 s. Reports the iteration times of
the run (median, 90th percentile, max), the restarts and re-queued tasks, and writes them to
`--output` (default benchmarks/results/worker_kills/<date>-<commit>/worker_kills.json).

    python benchmarks/worker_kills.py --config configs/maml-trpo-point-nav.yaml --iterations 40 --every 8
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from metaray.bench.provenance import script_output

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))
from rl2_duan import machine  # noqa: E402


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (the run's own Ray processes)."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def rollout_workers(pid: int) -> list[int]:
    found = []
    for child in descendants(pid):
        try:
            if Path(f"/proc/{child}/cmdline").read_bytes().startswith(b"ray::RolloutWorker"):
                found.append(child)
        except OSError:
            continue
    return sorted(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/maml-trpo-point-nav.yaml")
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--every", type=float, default=8.0, help="seconds between kills")
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default: the dated folder)")
    args = parser.parse_args()
    run = Path(tempfile.mkdtemp(prefix="worker-kills-")) / "run"
    cmd = [sys.executable, "-m", "metaray.cli", "train", args.config, "--run-dir", str(run), "--iterations",
           str(args.iterations), "--set", "workers.max_worker_restarts=1000", "--set", "checkpoint.every=1000"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    kills, turn = 0, 0
    next_kill = None
    while proc.poll() is None:
        time.sleep(0.2)
        if next_kill is None:
            if (run / "progress.jsonl").exists():  # the run is up: start the kills
                next_kill = time.monotonic() + args.every
            continue
        if time.monotonic() >= next_kill:
            workers = rollout_workers(proc.pid)
            if workers:
                os.kill(workers[turn % len(workers)], signal.SIGKILL)
                kills, turn = kills + 1, turn + 1
            next_kill += args.every
    out = proc.stdout.read() if proc.stdout else ""
    rows = [json.loads(line) for line in (run / "progress.jsonl").read_text().splitlines()]
    walls = [r["wall_time_s"] for r in rows]
    per_iteration = np.diff([0.0, *walls])[1:]  # the first one includes start-up
    result = {
        "config": args.config, "iterations": len(rows), "kill_every_s": args.every, "kills": kills,
        "exit_code": proc.returncode, "worker_restarts_total": rows[-1]["worker_restarts_total"],
        "tasks_requeued_total": rows[-1]["tasks_requeued_total"],
        "iteration_s_median": float(np.median(per_iteration)), "iteration_s_p90": float(np.percentile(per_iteration, 90)),
        "iteration_s_max": float(per_iteration.max()), "wall_time_s": walls[-1],
        "raylet_lines_on_display": out.count("(raylet)"), "machine": machine(),
    }
    args.output = args.output or script_output(__file__, "worker_kills.json")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
