"""A MAML meta-iteration, this tree against an older commit, side by side on the same machine.

Each side runs `metaray train CONFIG --iterations N` on a local Ray instance (the config's
workers and learner threads), in alternating rounds (old, new, old, new, ...) so that drifts of
the machine hit both; the older commit runs from a git worktree (`git worktree add`) with this
venv, its own sources first on PYTHONPATH. Per side: the median wall time of an iteration
(the first of each run left out: Ray start-up, first weights), of its sampling phase and of
its learner step, from the runs' progress.jsonl. Writes
benchmarks/results/maml_iteration_speed/<date>-<commit>/maml_iteration_speed_vs_<old>.json.

    python benchmarks/maml_iteration_speed.py --old d6b6647 --iterations 4 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from metaray.bench.provenance import script_output

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from rl2_duan import commit, machine  # noqa: E402


def run(tree: Path, config: str, iterations: int, overrides: list[str]) -> list[dict]:
    run_dir = Path(tempfile.mkdtemp(prefix="maml-speed-")) / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "metaray.cli", "train", config, "--iterations", str(iterations),
           "--run-dir", str(run_dir), *[a for o in overrides for a in ("--set", o)]]
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: {' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines()]
    shutil.rmtree(run_dir.parent, ignore_errors=True)
    for before, row in zip(rows, rows[1:], strict=False):  # an iteration's own wall time
        row["iteration_s"] = row["wall_time_s"] - before["wall_time_s"]
    return rows[1:]  # the first: Ray start-up, first weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="the commit to compare with")
    parser.add_argument("--config", default="configs/maml-trpo-halfcheetah-vel.yaml")
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override for both sides")
    args = parser.parse_args()
    old_tree = Path(tempfile.mkdtemp(prefix="metaray-old-")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(old_tree), args.old], cwd=ROOT, check=True,
                   capture_output=True)
    try:
        sides: dict[str, list[dict]] = {"old": [], "new": []}
        for round_ in range(args.rounds):
            for side, tree in (("old", old_tree), ("new", ROOT)):
                start = time.perf_counter()
                rows = run(tree, args.config, args.iterations, args.overrides)
                sides[side] += rows
                print(f"round {round_} {side}: {time.perf_counter() - start:.0f} s; iteration s "
                      f"{[round(r['iteration_s'], 1) for r in rows]}", flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=ROOT, check=False, capture_output=True)

    def summary(rows: list[dict]) -> dict:
        walls = [r["iteration_s"] for r in rows]
        return {"iteration_s_median": round(statistics.median(walls), 2), "iterations": len(walls),
                "sample_s_median": round(statistics.median(r.get("sample_s_mean", float("nan")) for r in rows), 2),
                "learner_step_s_median": round(statistics.median(r.get("learner_step_s", float("nan")) for r in rows), 2)}

    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "config": args.config, "overrides": args.overrides,
              "old_commit": args.old, "new_commit": commit(), "iterations_per_run": args.iterations, "rounds": args.rounds,
              "old": summary(sides["old"]), "new": summary(sides["new"])}
    result["speedup"] = round(result["old"]["iteration_s_median"] / result["new"]["iteration_s_median"], 2)
    path = script_output(__file__, f"maml_iteration_speed_vs_{args.old}.json")
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
