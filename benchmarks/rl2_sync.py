"""RL² with synchronous sampling (`rl2.sync: true`, every batch on-policy, workers idle while the
learner updates) against asynchronous (`false`: workers sample on, batches one version old), at
equal wall time: the training return each reaches after the same minutes, and held-out returns.

Each (mode, seed) is a real `metaray train` on local Ray (2 rollout workers and the learner on
this machine; resumable run directories under `--runs-dir`), then `metaray eval`. Results go to
benchmarks/results/rl2_sync/<bench>.json, .md and .png.

    python benchmarks/rl2_sync.py --bench bandit-n100-k5 --seeds 0 1 2 --runs-dir ~/metaray-runs/rl2_sync
    python benchmarks/rl2_sync.py --bench bandit-n100-k5 --report     # table and plot only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "rl2_sync"
sys.path.insert(0, str(ROOT / "benchmarks"))
from rl2_duan import BENCHES, commit, machine, metaray, train  # noqa: E402

MODES = {"sync": "true", "async": "false"}


def run_one(bench: str, mode: str, seed: int, runs_dir: Path, iterations: int | None, overrides: tuple[str, ...]) -> dict:
    config, _ = BENCHES[bench]
    run_dir = runs_dir / f"{bench}-{mode}-seed{seed}"
    code = commit()
    train(config, run_dir, [f"seed={seed}", f"rl2.sync={MODES[mode]}", *overrides], iterations, False,
          f"{bench} {mode} seed {seed}")
    ev = metaray("eval", str(run_dir), "--json")
    if ev.returncode != 0:
        raise SystemExit(f"{bench} {mode} seed {seed}: eval failed: {ev.stderr.strip()[-500:]}")
    result = json.loads(ev.stdout.strip().splitlines()[-1])
    rows = [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines()]
    return {
        "bench": bench, "mode": mode, "seed": seed, "config": config, "iterations": result["iteration"],
        "test_tasks": result["num_tasks"], "test_mean_return": round(result["mean_return"], 3),
        "wall_s": round(rows[-1]["wall_time_s"], 1), "env_steps": rows[-1]["env_steps_total"],
        "policy_lag_mean": round(float(np.mean([r.get("policy_lag_mean", 0.0) for r in rows])), 3),
        "dropped_batches": rows[-1].get("dropped_batches_total", 0),
        "curve": [(r["wall_time_s"], r["env_steps_total"], r["trial_return"]) for r in rows],
        "date": time.strftime("%Y-%m-%d"), "machine": machine(), "commit": code,
    }


def return_at(curve: list, minutes: float, window: int = 10) -> float:
    """Mean training return over the `window` updates up to `minutes` of wall time."""
    returns = [c[2] for c in curve if c[0] <= minutes * 60]
    return float(np.mean(returns[-window:])) if returns else float("nan")


def report(bench: str, rows: list[dict]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # equal wall time: the shortest run's length, and a third and two thirds of it
    end = min(r["curve"][-1][0] for r in rows) / 60
    marks = [end / 3, 2 * end / 3, end]
    lines = [f"| mode | seeds | training return at {', '.join(f'{m:.1f}' for m in marks)} min (mean over seeds) | "
             "held-out (per seed) | env steps/s | policy lag (mean) | dropped batches |",
             "|---|---|---|---|---|---|---|"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, mode in enumerate(MODES):
        got = [r for r in rows if r["mode"] == mode]
        if not got:
            continue
        at = [np.mean([return_at(r["curve"], m) for r in got]) for m in marks]
        held_out = ", ".join(f"{r['test_mean_return']:.2f}" for r in got)
        lines.append(f"| {mode} | {len(got)} | {' / '.join(f'{v:.2f}' for v in at)} | {held_out} | "
                     f"{np.mean([r['env_steps'] / r['wall_s'] for r in got]):,.0f} | "
                     f"{np.mean([r['policy_lag_mean'] for r in got]):.2f} | {sum(r['dropped_batches'] for r in got)} |")
        for j, r in enumerate(got):
            wall, _, ret = (np.array(x) for x in zip(*r["curve"], strict=True))
            ax.plot(wall / 60, ret, color=f"C{i}", lw=0.8, label=mode if j == 0 else None)
    ax.set(xlabel="wall minutes", ylabel="training trial return", title=f"{bench}: rl2.sync true vs false")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    OUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT / f"{bench}.png", dpi=120)
    lines.append("")
    lines.append(f"Machine: {'; '.join(sorted({r['machine'] for r in rows}))}. Commits: "
                 f"{', '.join(sorted({r['commit'] for r in rows}))}. Dates: {', '.join(sorted({r['date'] for r in rows}))}.")
    text = "\n".join(lines) + "\n"
    (OUT / f"{bench}.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", choices=sorted(BENCHES), required=True)
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs-dir", type=Path, default=Path.home() / "metaray-runs" / "rl2_sync")
    parser.add_argument("--iterations", type=int, help="override the config's iterations")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every run (as `metaray train --set`)")
    parser.add_argument("--report", action="store_true", help="only rebuild the table and plot")
    args = parser.parse_args()
    store = OUT / f"{args.bench}.json"
    rows = json.loads(store.read_text()) if store.exists() else []
    if not args.report:
        for seed in args.seeds:  # modes interleaved, so both see the machine alike
            for mode in args.modes:
                row = run_one(args.bench, mode, seed, args.runs_dir.expanduser(), args.iterations,
                              tuple(args.overrides))
                rows = [r for r in rows if (r["mode"], r["seed"]) != (mode, seed)] + [row]
                OUT.mkdir(parents=True, exist_ok=True)
                store.write_text(json.dumps(rows, indent=1) + "\n")
                print(f"{args.bench} {mode} seed {seed}: held-out {row['test_mean_return']}", flush=True)
    if rows:
        print(report(args.bench, rows))


if __name__ == "__main__":
    main()
