"""RL²'s memories side by side: gru, lstm, snail, transformer, mann on the same benchmark, same
settings otherwise; final held-out score, time to a score (wall minutes and env steps), and
plots of the training return against wall time and against env steps.

Each (memory, seed) is a real `metaray train` run (resumable: run directories live under
`--runs-dir`, outside the work tree, and a second call continues them with `--resume`), then
`metaray eval` on the config's held-out tasks. Results go to
benchmarks/results/rl2_memories/<bench>.json, .md and .png.

    python benchmarks/rl2_memories.py --bench tabular-mdp-n10 --seeds 0 1 2 --runs-dir ~/metaray-runs
    python benchmarks/rl2_memories.py --bench tabular-mdp-n10 --report   # table and plots only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "rl2_memories"
sys.path.insert(0, str(ROOT / "benchmarks"))
from rl2_duan import BENCHES, commit, machine, metaray, train  # noqa: E402

MEMORIES = ("gru", "lstm", "snail", "transformer", "mann")


def trial_steps(config_path: str) -> int:
    """Steps in one trial of the benchmark (what snail's and the transformer's context must hold)."""
    from metaray.tasks import make_family

    cfg = yaml.safe_load((ROOT / config_path).read_text())
    family = make_family(cfg["task"]["family"], cfg["task"].get("kwargs", {}))
    return int(cfg["rl2"]["episodes_per_trial"]) * int(family.max_episode_steps)


def run_one(bench: str, memory: str, seed: int, runs_dir: Path, iterations: int | None, serial: bool,
            overrides: tuple[str, ...] = ()) -> dict:
    config, _ = BENCHES[bench]
    run_dir = runs_dir / f"{bench}-{memory}-seed{seed}"
    train(config, run_dir, [f"seed={seed}", f"rl2.memory={memory}", f"rl2.context_length={trial_steps(config)}",
                            *overrides], iterations, serial, f"{bench} {memory} seed {seed}")
    ev = metaray("eval", str(run_dir), "--json")
    if ev.returncode != 0:
        raise SystemExit(f"{bench} {memory} seed {seed}: eval failed: {ev.stderr.strip()[-500:]}")
    result = json.loads(ev.stdout.strip().splitlines()[-1])
    rows = [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines()]
    return {
        "bench": bench, "memory": memory, "seed": seed, "config": config, "serial": serial,
        "iterations": result["iteration"], "test_tasks": result["num_tasks"],
        "test_mean_return": round(result["mean_return"], 3),
        "curve": [(r["wall_time_s"], r["env_steps_total"], r["trial_return"]) for r in rows],
        "date": time.strftime("%Y-%m-%d"), "machine": machine(), "commit": commit(),
        "wall_s": round(rows[-1]["wall_time_s"], 1), "env_steps": rows[-1]["env_steps_total"],
    }


def time_to(curve: list, score: float, window: int = 10) -> tuple[float, float] | None:
    """(wall minutes, env steps) when the mean training return over `window` updates first
    reaches `score`; None if it never does."""
    returns = np.array([c[2] for c in curve])
    for i in range(window - 1, len(curve)):
        if returns[i - window + 1 : i + 1].mean() >= score:
            return curve[i][0] / 60, curve[i][1]
    return None


def report(bench: str, rows: list[dict], score: float) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [f"| memory | seeds | held-out mean return (per seed) | mean | time to a training return of {score:g} "
             "(wall min / env steps, per seed) |", "|---|---|---|---|---|"]
    fig, (by_time, by_steps) = plt.subplots(1, 2, figsize=(11, 4))
    for memory in MEMORIES:
        got = [r for r in rows if r["memory"] == memory]
        if not got:
            continue
        vals = [r["test_mean_return"] for r in got]
        reached = []
        for r in got:
            hit = time_to(r["curve"], score)
            reached.append("never" if hit is None else f"{hit[0]:.1f} / {hit[1] / 1e6:.1f}M")
        lines.append(f"| {memory} | {len(got)} | {', '.join(f'{v:.1f}' for v in vals)} | **{np.mean(vals):.1f}** | "
                     f"{', '.join(reached)} |")
        for i, r in enumerate(got):
            wall, steps, ret = (np.array(x) for x in zip(*r["curve"], strict=True))
            label = memory if i == 0 else None
            color = f"C{MEMORIES.index(memory)}"
            by_time.plot(wall / 60, ret, color=color, lw=0.8, label=label)
            by_steps.plot(steps / 1e6, ret, color=color, lw=0.8, label=label)
    by_time.set(xlabel="wall minutes", ylabel="training trial return", title=f"{bench}: return against wall time")
    by_steps.set(xlabel="env steps (millions)", ylabel="training trial return", title="against env steps")
    for ax in (by_time, by_steps):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    OUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT / f"{bench}.png", dpi=120)
    lines.append("")
    lines.append(f"Machine: {'; '.join(sorted({r['machine'] for r in rows}))}. "
                 f"Dates: {', '.join(sorted({r['date'] for r in rows}))}.")
    text = "\n".join(lines) + "\n"
    (OUT / f"{bench}.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", choices=sorted(BENCHES), required=True)
    parser.add_argument("--memories", nargs="+", choices=MEMORIES, default=list(MEMORIES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs-dir", type=Path, default=Path.home() / "metaray-runs" / "rl2_memories")
    parser.add_argument("--iterations", type=int, help="override the config's iterations")
    parser.add_argument("--serial", action="store_true", help="train without Ray (one process)")
    parser.add_argument("--score", type=float, help="the score whose time to reach is reported "
                                                    "(default: Duan et al.'s RL² number for the benchmark)")
    parser.add_argument("--report", action="store_true", help="only rebuild the table and plots")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every run (as `metaray train --set`)")
    args = parser.parse_args()
    store = OUT / f"{args.bench}.json"
    rows = json.loads(store.read_text()) if store.exists() else []
    if not args.report:
        for memory in args.memories:
            for seed in args.seeds:
                row = run_one(args.bench, memory, seed, args.runs_dir.expanduser(), args.iterations, args.serial,
                              tuple(args.overrides))
                rows = [r for r in rows if (r["memory"], r["seed"]) != (memory, seed)] + [row]
                OUT.mkdir(parents=True, exist_ok=True)
                store.write_text(json.dumps(rows, indent=1) + "\n")
                print(f"{args.bench} {memory} seed {seed}: held-out {row['test_mean_return']}", flush=True)
    score = args.score if args.score is not None else BENCHES[args.bench][1].get("RL2 (Duan)", 0.0)
    print(report(args.bench, rows, score))


if __name__ == "__main__":
    main()
