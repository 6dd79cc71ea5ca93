"""Normalised scores of finished bench results, each task against the family's expert and random
actions on that same task: normalised = (R − R_random) / (R_expert − R_random), the mean over
the result's held-out tasks (what `eval.normalise` adds to an evaluation; this is for results
evaluated without it). Both ends: `--episodes` episodes per task (metaray.tasks.reference).

    python benchmarks/normalised_scores.py RESULT_DIR_OR_FILE... [--episodes 10]

Writes benchmarks/results/normalised_scores/<date>-<commit>/normalised_scores.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from rl2_duan import machine  # noqa: E402

from metaray.bench.provenance import git_commit, script_output  # noqa: E402
from metaray.tasks import make_family  # noqa: E402
from metaray.tasks.reference import normalised_score, reference_returns  # noqa: E402


def result_files(paths: list[Path]) -> list[Path]:
    files = []
    for path in paths:
        found = sorted(p for p in path.glob("*.json") if p.name not in ("suite.json",) and not p.name.startswith("report"))
        files += found if path.is_dir() else [path]
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--episodes", type=int, default=10, help="episodes per task for each end")
    args = parser.parse_args()
    ends_cache: dict[tuple, dict[int, dict[str, float]]] = {}
    rows = []
    for file in result_files(args.results):
        result = json.loads(file.read_text())
        ev, task = result["eval"], result["config"]["task"]
        if result.get("metric") != "mean_return":
            print(f"{file}: metric {result.get('metric')!r}, not mean_return: skipped")
            continue
        family = make_family(task["family"], task.get("kwargs") or {})
        tasks = family.sample(ev["num_tasks"], np.random.default_rng(ev["seed"]), ev["split"])
        key = (repr(family), ev["num_tasks"], ev["seed"], ev["split"])
        if key not in ends_cache:
            ends_cache[key] = reference_returns(family, tasks, args.episodes, ev["seed"])
        ends = [ends_cache[key][t.task_id] for t in tasks]
        returns = result["per_task"]
        scores = [normalised_score(r, e["expert_return"], e["random_return"]) for r, e in zip(returns, ends, strict=True)]
        expert = statistics.mean(e["expert_return"] for e in ends)
        random = statistics.mean(e["random_return"] for e in ends)
        row = {"file": str(file.relative_to(ROOT) if file.is_relative_to(ROOT) else file), "suite": result["suite"],
               "run": result["run"], "seed": result["seed"], "iterations": result["iterations"],
               "env_steps": result["env_steps"], "num_tasks": len(tasks), "mean_return": statistics.mean(returns),
               "expert_return": expert, "random_return": random,
               "normalised_score": statistics.mean(scores),  # mean over tasks of each task's score
               "normalised_mean_return": normalised_score(statistics.mean(returns), expert, random)}
        rows.append(row)
        print(f"{row['suite']} {row['run']} seed {row['seed']}: return {row['mean_return']:.2f}, normalised "
              f"{row['normalised_score']:.3f} (of the means {row['normalised_mean_return']:.3f}; expert {expert:.2f}, "
              f"random {random:.2f} on the same {len(tasks)} tasks)", flush=True)
    out = {"date": time.strftime("%Y-%m-%d"), "commit": git_commit(), "machine": machine(), "episodes_per_end": args.episodes,
           "results": rows}
    path = script_output(__file__, "normalised_scores.json")
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
