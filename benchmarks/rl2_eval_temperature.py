"""Held-out return of trained RL² runs when scored at several action temperatures
(`rl2.eval_temperature`: logits / T; 0 = argmax), each run's newest checkpoint on the same tasks.
The temperature is an evaluation setting: choose it on some seeds, claim on others.

    python benchmarks/rl2_eval_temperature.py RUN_DIR... --temperatures 1 0.5 0.3 0 \
        --num-tasks 5000 --output benchmarks/results/x/eval_temperature
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from metaray.bench.provenance import git_commit, machine, packages
from metaray.cluster.checkpoint import CheckpointError
from metaray.cluster.config import ConfigError
from metaray.cluster.evaluation import evaluate_run


def t_interval(values: list[float]) -> tuple[float, float]:
    """95 % Student-t interval of the mean over seeds."""
    from scipy import stats

    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, mean
    half = float(stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values)))
    return mean - half, mean + half


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--temperatures", nargs="+", type=float, default=[1.0, 0.5, 0.3, 0.0])
    parser.add_argument("--num-tasks", type=int, default=5000)
    parser.add_argument("--output", type=Path, required=True, help="prefix of the .json and .md written")
    args = parser.parse_args()
    try:
        rows = evaluate_all(args.runs, args.temperatures, args.num_tasks)
    except (CheckpointError, ConfigError) as err:
        raise SystemExit(f"rl2_eval_temperature: {err}") from None
    write(args.runs, args.temperatures, args.num_tasks, rows, args.output)


def evaluate_all(runs: list[Path], temperatures: list[float], num_tasks: int) -> dict[str, dict[str, dict]]:
    """{run name: {temperature: held-out mean, its standard error, per-episode means}}."""
    rows: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            rows[run.name] = {}
            for temperature in temperatures:
                result = evaluate_run(run, num_tasks=num_tasks, output=Path(tmp) / "eval.json",
                                      overrides=[f"rl2.eval_temperature={temperature}"])
                rows[run.name][str(temperature)] = {
                    "mean_return": result["mean_return"],
                    "stderr": result["std_return"] / math.sqrt(result["num_tasks"]),
                    "iteration": result["iteration"],
                    "episode_return_means": result.get("episode_return_means"),
                }
                print(f"{run.name}  T={temperature:g}  {result['mean_return']:.2f}", flush=True)
    return rows


def write(runs: list[Path], temperatures: list[float], num_tasks: int, rows: dict, output: Path) -> None:
    summary = {}
    for temperature in temperatures:
        values = [rows[run.name][str(temperature)]["mean_return"] for run in runs]
        summary[str(temperature)] = {"mean": float(np.mean(values)), "ci95_t": t_interval(values)}
    out = {**git_commit(), "machine": machine(), "packages": packages(), "date": time.strftime("%Y-%m-%d"),
           "runs": {run.name: str(run) for run in runs}, "num_tasks": num_tasks, "per_run": rows,
           "over_runs": summary}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(out, indent=1))
    head = "| temperature | " + " | ".join(run.name for run in runs) + " | mean [95 % t-interval] |"
    lines = [head, "|" + "---|" * (len(runs) + 2)]
    for temperature in temperatures:
        cells = [f"{rows[run.name][str(temperature)]['mean_return']:.2f}" for run in runs]
        lo, hi = summary[str(temperature)]["ci95_t"]
        lines.append(f"| {temperature:g} | " + " | ".join(cells)
                     + f" | {summary[str(temperature)]['mean']:.2f} [{lo:.2f}, {hi:.2f}] |")
    table = "\n".join(lines) + "\n"
    output.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
