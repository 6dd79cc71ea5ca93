"""Held-out score against updates, env steps and wall time for long runs evaluated checkpoint by
checkpoint (`metaray eval RUN --num-tasks N --output RUN-eval-<update>-N.json`), beside reference
levels measured on the same tasks; one JSON and one plot.

    python benchmarks/heldout_curve.py RUN_DIR... --evals-glob '{run}-eval-*-5000.json' \
        --ref 'greedy planning=149.02' --ref 'PSRL=132.98' --bar 150 --at 2000 --output results/x
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from metaray.cluster.checkpoint import read_progress  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--evals-glob", default="{run}-eval-*-5000.json", help="eval files beside each run dir; {run} is its name")
    parser.add_argument("--ref", action="append", default=[], help="NAME=VALUE, a reference level on the same tasks")
    parser.add_argument("--bar", type=float, default=None)
    parser.add_argument("--at", type=int, default=None, help="the update every run is judged at (the declared budget)")
    parser.add_argument("--output", type=Path, required=True, help="prefix of the .json and .png")
    args = parser.parse_args()
    out: dict = {"runs": {}, "refs": {}, "bar": args.bar, "judged_at_update": args.at}
    for text in args.ref:
        name, value = text.rsplit("=", 1)
        out["refs"][name] = float(value)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for run in args.runs:
        progress = {row["iteration"]: row for row in read_progress(run)}
        points = []
        for path in sorted(run.parent.glob(args.evals_glob.format(run=run.name))):
            result = json.loads(path.read_text())
            it = int(result["iteration"])
            row = progress.get(it, {})
            sem = result["std_return"] / np.sqrt(result["num_tasks"])
            points.append({"update": it, "mean_return": result["mean_return"], "sem": float(sem),
                           "env_steps": row.get("env_steps_total"), "wall_time_s": row.get("wall_time_s"),
                           "episode_return_means": result.get("episode_return_means"), "file": path.name})
        points.sort(key=lambda p: p["update"])
        config = (run / "config.yaml").read_text()
        seed = next((line.split(":", 1)[1].strip() for line in config.splitlines() if line.startswith("seed:")), "?")
        last = progress[max(progress)] if progress else {}
        out["runs"][run.name] = {"seed": seed, "points": points, "updates_trained": last.get("iteration"),
                                 "env_steps_total": last.get("env_steps_total"), "wall_time_s": last.get("wall_time_s")}
        label = f"{run.name} (seed {seed})"
        for ax, key in zip(axes, ("update", "env_steps", "wall_time_s"), strict=True):
            xs = [p[key] / (3600 if key == "wall_time_s" else 1) for p in points if p[key] is not None]
            ys = [p["mean_return"] for p in points if p[key] is not None]
            ax.plot(xs, ys, marker=".", label=label)
    for ax, xlabel in zip(axes, ("updates", "env steps", "wall time of the run (h, sharing 2 cores)"), strict=True):
        for name, value in out["refs"].items():
            ax.axhline(value, ls="--", lw=0.8, color="gray")
            ax.text(ax.get_xlim()[0], value, f" {name}", va="bottom", fontsize=8, color="gray")
        if args.bar is not None:
            ax.axhline(args.bar, lw=0.8, color="red")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out mean return")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(f"{args.output}.png", dpi=110)
    if args.at is not None:
        finals = {name: next((p for p in r["points"] if p["update"] == args.at), None) for name, r in out["runs"].items()}
        scores = [p["mean_return"] for p in finals.values() if p is not None]
        out["at_update"] = {name: (None if p is None else p["mean_return"]) for name, p in finals.items()}
        if len(scores) == len(finals) and len(scores) > 1:
            mean, sd = float(np.mean(scores)), float(np.std(scores, ddof=1))
            from scipy import stats  # a t-interval over the seeds
            half = float(stats.t.ppf(0.975, len(scores) - 1) * sd / np.sqrt(len(scores)))
            out["mean_over_runs"] = {"mean": mean, "ci95_half_width": half, "n": len(scores)}
            print(f"at update {args.at}: " + ", ".join(f"{s:.2f}" for s in scores) + f" -> mean {mean:.2f} ± {half:.2f} (95% t, n={len(scores)})")
    Path(f"{args.output}.json").write_text(json.dumps(out, indent=1))
    print(f"wrote {args.output}.json and .png")


if __name__ == "__main__":
    main()
