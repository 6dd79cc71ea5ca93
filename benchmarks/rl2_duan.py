"""RL² against Duan et al. 2016 (Tables 1 and 2): train, evaluate on held-out tasks, tabulate.

Each (benchmark, seed) is a real `metaray train` run in local Ray mode (2 rollout workers and a
learner on this machine), then `metaray eval` on held-out test tasks. Results are appended to
benchmarks/results/rl2_duan/<date>-<commit>/rl2_duan.json as they finish; the Markdown table (rl2_duan.md beside it)
is rebuilt from every commit's rows, the newest row of a (bench, seed) winning.

    python benchmarks/rl2_duan.py --bench bandit-n10-k5 --seeds 0 1 2
    python benchmarks/rl2_duan.py --table   # rebuild the table only
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from metaray.bench import provenance
from metaray.bench.provenance import merged_rows, script_output

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = RESULTS / "runs"

# name -> (config, Duan et al. 2016 reference numbers)
BENCHES = {
    "bandit-n10-k5": ("configs/rl2-bandit-n10-k5.yaml", {"Gittins": 6.6, "RL2 (Duan)": 6.7, "random": 5.0}),
    "bandit-n10-k10": ("configs/rl2-bandit-n10-k10.yaml", {}),
    "bandit-n100-k5": ("configs/rl2-bandit-n100-k5.yaml", {"Gittins": 78.3, "RL2 (Duan)": 78.7, "random": 50.0}),
    "bandit-n100-k10": ("configs/rl2-bandit-n100-k10.yaml", {}),
    "tabular-mdp-n10": ("configs/rl2-tabular-mdp-n10.yaml", {"RL2 (Duan)": 156.2, "UCRL2": 146.6, "random": 100.6}),
    "tabular-mdp-n25": ("configs/rl2-tabular-mdp-n25.yaml", {}),
}


def commit() -> str:
    """The work tree's commit (with "+dirty" when it has uncommitted changes): what produced a number."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    head = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = [line for line in git("status", "--porcelain", "--untracked-files=no").splitlines()
               if "benchmarks/results/" not in line]  # results written by the runs themselves
    return head + ("+dirty" if changed else "")


def machine() -> str:
    m = provenance.machine()
    return f"{m['cores']} cores, {m['cpu']}, {m['os'].split()[0]} {m['arch']}, {m['gpu'] or 'no GPU'}"


def metaray(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("metaray")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=ROOT, check=False)


def train(config: str, run_dir: Path, overrides: list[str], iterations: int | None, serial: bool, what: str) -> float:
    """`metaray train` (continued with --resume when the run directory holds a run); seconds taken."""
    args = ["train", config, "--run-dir", str(run_dir)]
    for override in overrides:
        args += ["--set", override]
    if iterations:
        args += ["--iterations", str(iterations)]
    if serial:
        args.append("--serial")
    if (run_dir / "config.yaml").exists():
        args.append("--resume")
    start = time.time()
    done = metaray(*args)
    if done.returncode != 0:
        raise SystemExit(f"{what}: train failed: {done.stderr.strip()[-500:]}")
    return time.time() - start


def run_one(bench: str, seed: int, iterations: int | None, serial: bool, eval_only: bool = False,
            runs_dir: Path = RUNS, overrides: tuple[str, ...] = ()) -> dict:
    config, _ = BENCHES[bench]
    run_dir = runs_dir / f"{bench}-seed{seed}"
    if eval_only:
        return evaluate(bench, seed, run_dir, serial, None)
    code = commit()  # as the run starts (the tree may move on while it trains)
    train_s = train(config, run_dir, [f"seed={seed}", *overrides], iterations, serial, f"{bench} seed {seed}")
    return {**evaluate(bench, seed, run_dir, serial, round(train_s, 1)), "commit": code}


def evaluate(bench: str, seed: int, run_dir: Path, serial: bool, command_s: float | None) -> dict:
    config, _ = BENCHES[bench]
    # the benchmark's held-out tasks (its config's eval settings), whatever the run was started with
    wanted = yaml.safe_load((ROOT / config).read_text()).get("eval", {})
    sets = [arg for key, value in wanted.items() for arg in ("--set", f"eval.{key}={value}")]
    ev = metaray("eval", str(run_dir), "--json", *sets)
    if ev.returncode != 0:
        raise SystemExit(f"{bench} seed {seed}: eval failed: {ev.stderr.strip()[-500:]}")
    result = json.loads(ev.stdout.strip().splitlines()[-1])
    progress = [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines()]
    return {
        "bench": bench, "seed": seed, "config": config, "mode": "serial" if serial else "local Ray, 2 workers",
        "iterations": result["iteration"], "train_wall_s": round(progress[-1]["wall_time_s"], 1),
        "command_wall_s": command_s, "env_steps": progress[-1]["env_steps_total"],
        "test_tasks": result["num_tasks"], "test_mean_return": round(result["mean_return"], 3),
        "train_return_last": round(progress[-1]["trial_return"], 3),
        "date": time.strftime("%Y-%m-%d"), "machine": machine(),
    }


def classical_results() -> dict[str, dict]:
    """config path -> measured classical baselines (benchmarks/rl2_classical.py), if run."""
    return {r["config"]: r["results"] for r in merged_rows("rl2_classical", "rl2_classical.json", lambda r: r["config"])}


def write_table(rows: list[dict]) -> str:
    classical = classical_results()
    lines = ["| benchmark | seeds | RL² held-out mean return (per seed) | mean | train time / seed | env steps / seed "
             "| code (date) | classical, same held-out tasks (`rl2_classical.py`) | Duan et al. 2016 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for bench, (config, ref) in BENCHES.items():
        got = [r for r in rows if r["bench"] == bench]
        base = classical.get(config, {})
        if not got and not base:
            continue
        cells = ", ".join(f"{name} {v['mean_return']:.2f}" for name, v in
                          sorted(base.items(), key=lambda kv: -kv[1]["mean_return"])) or "—"
        duan = ", ".join(f"{k} {v}" for k, v in ref.items()) or "—"
        if not got:
            lines.append(f"| {bench} | 0 | not run | — | — | — | — | {cells} | {duan} |")
            continue
        vals = [r["test_mean_return"] for r in got]
        mean = sum(vals) / len(vals)
        lines.append(
            f"| {bench} | {len(got)} | {', '.join(f'{v:.2f}' for v in vals)} | **{mean:.2f}** | "
            f"{sum(r['train_wall_s'] for r in got) / len(got) / 60:.1f} min | "
            f"{sum(r['env_steps'] for r in got) / len(got) / 1e6:.1f}M | "
            f"{', '.join(sorted({r.get('commit', 'before issue 26') + ' (' + r['date'] + ')' for r in got}))} | {cells} | {duan} |"
        )
    machines = sorted({r["machine"] for r in rows})
    lines.append("")
    lines.append(f"Machine: {'; '.join(machines)}. Dates: {', '.join(sorted({r['date'] for r in rows}))}.")
    text = "\n".join(lines) + "\n"
    script_output(__file__, "rl2_duan.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", choices=sorted(BENCHES), action="append", default=[])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, help="override the config's iterations")
    parser.add_argument("--serial", action="store_true", help="train without Ray (one process)")
    parser.add_argument("--table", action="store_true", help="only rebuild the table from the JSON")
    parser.add_argument("--eval-only", action="store_true", help="re-evaluate existing runs, no training")
    parser.add_argument("--runs-dir", type=Path, default=RUNS, help="where the run directories live (resumable)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every run (as `metaray train --set`)")
    args = parser.parse_args()
    def bench_seed(r: dict) -> tuple:
        return r["bench"], r["seed"]

    store = None  # this commit's rows: benchmarks/results/rl2_duan/<date>-<commit>/rl2_duan.json
    if not args.table:
        for bench in args.bench or list(BENCHES):
            for seed in args.seeds:
                row = run_one(bench, seed, args.iterations, args.serial, args.eval_only,
                              args.runs_dir.expanduser(), tuple(args.overrides))
                store = store or script_output(__file__, "rl2_duan.json")
                rows = json.loads(store.read_text()) if store.exists() else []  # other runs may have written
                if args.eval_only:
                    earlier = {bench_seed(r): r for r in merged_rows(__file__, "rl2_duan.json", bench_seed)}
                    old = earlier.get((bench, seed), {})
                    # the run's own facts (how and on what it trained) stay; the evaluation is new
                    row = {**old, **{k: v for k, v in row.items() if v is not None and not (old and k == "mode")}}
                print(json.dumps(row), flush=True)
                rows = [r for r in rows if (r["bench"], r["seed"]) != (bench, seed)] + [row]
                store.write_text(json.dumps(rows, indent=1) + "\n")
    print(write_table(merged_rows(__file__, "rl2_duan.json", bench_seed)))


if __name__ == "__main__":
    main()
