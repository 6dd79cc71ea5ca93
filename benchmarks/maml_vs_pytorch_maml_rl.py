"""MAML-TRPO on 2D navigation: metaray beside pytorch-maml-rl, same config, same machine, one run.

Both run the same meta-iterations of the same config (inner lr 0.1, 20 episodes per task, 20
tasks per meta-batch, 64x64 tanh, max_kl 0.01, cg 10 iterations with damping 1e-5, line search
15 x 0.8, horizon 100, gamma 0.99, GAE lambda 1, linear feature baseline) with 2 sampling
workers and one torch thread per process (pytorch-maml-rl's best setting, OMP_NUM_THREADS=1),
one after the other so neither competes with the other for the 2 cores:

- metaray: `metaray train configs/maml-trpo-point-nav.yaml` (local Ray, 2 rollout workers);
- pytorch-maml-rl: its own train.py loop (benchmarks/peer/run_pytorch_maml_rl.py imports its
  modules; set it up with benchmarks/peer/setup_pytorch_maml_rl.sh).

Reports seconds per meta-iteration (median), the ratio, and the mean pre/post-adaptation return
over the meta-batch's tasks (both measure it on the training tasks of each iteration) at the end;
writes benchmarks/results/maml_vs_pytorch_maml_rl/<date>-<commit>/maml_vs_pytorch_maml_rl_it<N>_seed<S>[_threads<A>-peer<B>].json
and .png (A, B: the learner threads of metaray and of pytorch-maml-rl, when not 1 and 1).

    python benchmarks/maml_vs_pytorch_maml_rl.py --iterations 100 --peer-dir benchmarks/peer/build
"""

from __future__ import annotations

import argparse
import json
import os
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


def run_metaray(iterations: int, seed: int, learner_threads: int = 1) -> dict:
    run_dir = RESULTS / "runs" / f"sbs-metaray-point-nav-it{iterations}-seed{seed}-lt{learner_threads}"
    if run_dir.exists():
        subprocess.run(["rm", "-rf", str(run_dir)], check=True)
    exe = str(Path(sys.executable).with_name("metaray"))
    start = time.time()
    subprocess.run([exe, "train", "configs/maml-trpo-point-nav.yaml", "--run-dir", str(run_dir), "--iterations",
                    str(iterations), "--set", f"seed={seed}", "--set", "metrics.tensorboard=false",
                    "--set", f"learner.torch_threads={learner_threads}"],
                   check=True, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    command_s = time.time() - start
    rows = [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines()]
    walls = [r["wall_time_s"] for r in rows]
    return {
        "command_wall_s": round(command_s, 1),
        "iteration_s": [round(b - a, 3) for a, b in zip([0.0, *walls[:-1]], walls, strict=True)],
        "sampling_s": [round(r["sampling_s"], 3) for r in rows],
        "learner_s": [round(r["learner_step_s"], 3) for r in rows],
        "return_pre": [round(r["return_pre"], 3) for r in rows],
        "return_post": [round(r["return_post"], 3) for r in rows],
        "env_steps": [r["env_steps_total"] - p for r, p in zip(rows, [0] + [x["env_steps_total"] for x in rows[:-1]], strict=True)],
    }


def run_peer(iterations: int, seed: int, peer_dir: Path, learner_threads: int = 1) -> dict:
    out = RESULTS / "tmp" / f"pytorch-maml-rl-it{iterations}-seed{seed}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    start = time.time()
    subprocess.run([str(peer_dir / "venv" / "bin" / "python"), str(ROOT / "benchmarks" / "peer" / "run_pytorch_maml_rl.py"),
                    "--iterations", str(iterations), "--seed", str(seed), "--num-workers", "2", "--out", str(out),
                    "--learner-threads", str(learner_threads),
                    "--repo", str(peer_dir / "pytorch-maml-rl")],
                   check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    command_s = time.time() - start
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return {
        "command_wall_s": round(command_s, 1),
        "iteration_s": [round(r["wall_s"], 3) for r in rows],
        "sampling_s": [round(r["sampling_s"], 3) for r in rows],
        "learner_s": [round(r["learner_after_sampling_s"], 3) for r in rows],
        "return_pre": [round(r["return_before"], 3) for r in rows],
        "return_post": [round(r["return_after"], 3) for r in rows],
        "env_steps": [r["env_steps"] for r in rows],
    }


def summary(result: dict, window: int) -> dict:
    tail = slice(-window, None)
    return {
        "iteration_s_median": round(statistics.median(result["iteration_s"][1:] or result["iteration_s"]), 3),
        "sampling_s_median": round(statistics.median(result["sampling_s"]), 3),
        "learner_s_median": round(statistics.median(result["learner_s"]), 3),
        "env_steps_per_iteration": round(statistics.mean(result["env_steps"])),
        f"return_pre_last{window}": round(statistics.mean(result["return_pre"][tail]), 2),
        f"return_post_last{window}": round(statistics.mean(result["return_post"][tail]), 2),
        "command_wall_s": result["command_wall_s"],
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_ret, ax_time) = plt.subplots(1, 2, figsize=(12, 4.2), constrained_layout=True)
    colors = {"metaray": "tab:blue", "pytorch-maml-rl": "tab:red"}
    for name, res in results.items():
        its = range(1, len(res["return_post"]) + 1)
        ax_ret.plot(its, res["return_post"], color=colors[name], label=f"{name} post-adaptation")
        ax_ret.plot(its, res["return_pre"], color=colors[name], ls="--", alpha=0.7, label=f"{name} pre-adaptation")
        ax_time.plot(its, res["iteration_s"], color=colors[name], label=name)
    ax_ret.set(xlabel="meta-iteration", ylabel="mean return (meta-batch tasks)", title="2D navigation, MAML-TRPO")
    ax_time.set(xlabel="meta-iteration", ylabel="seconds", title="seconds per meta-iteration (2 workers, 2 cores)")
    for ax in (ax_ret, ax_time):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peer-dir", type=Path, default=ROOT / "benchmarks" / "peer" / "build",
                        help="where setup_pytorch_maml_rl.sh put the checkout and venv")
    parser.add_argument("--window", type=int, default=5, help="returns are averaged over the last WINDOW iterations")
    parser.add_argument("--learner-threads", type=int, default=1,
                        help="torch threads of metaray's learner (its sampling workers keep 1 and wait while "
                             "it updates, so 2 uses both cores)")
    parser.add_argument("--peer-learner-threads", type=int, default=None,
                        help="torch threads of pytorch-maml-rl's learner process (default: --learner-threads; "
                             "1 is its best: its workers sample while its learner runs)")
    args = parser.parse_args()
    if not (args.peer_dir / "venv" / "bin" / "python").exists():
        sys.exit(f"no pytorch-maml-rl set-up in {args.peer_dir}: run benchmarks/peer/setup_pytorch_maml_rl.sh first")
    peer_threads = args.learner_threads if args.peer_learner_threads is None else args.peer_learner_threads
    results = {"metaray": run_metaray(args.iterations, args.seed, args.learner_threads),
               "pytorch-maml-rl": run_peer(args.iterations, args.seed, args.peer_dir, peer_threads)}
    summaries = {name: summary(res, args.window) for name, res in results.items()}
    ours, peer = summaries["metaray"], summaries["pytorch-maml-rl"]
    report = {
        "iterations": args.iterations, "seed": args.seed,
        "learner_threads": {"metaray": args.learner_threads, "pytorch-maml-rl": peer_threads},
        "summary": summaries,
        "speedup_iteration": round(peer["iteration_s_median"] / ours["iteration_s_median"], 2),
        "speedup_learner": round(peer["learner_s_median"] / ours["learner_s_median"], 2),
        "speedup_sampling": round(peer["sampling_s_median"] / ours["sampling_s_median"], 2),
        "notes": "pytorch-maml-rl overlaps its learner with sampling inside metalearner.step; its learner_s is the "
                 "part after the last episode batch arrived. metaray: sampling then learner, synchronous.",
        "per_iteration": results, "date": time.strftime("%Y-%m-%d"), "machine": machine(),
    }
    name = f"maml_vs_pytorch_maml_rl_it{args.iterations}_seed{args.seed}"
    if (args.learner_threads, peer_threads) != (1, 1):
        name += f"_threads{args.learner_threads}-peer{peer_threads}"
    output = script_output(__file__, f"{name}.json")
    output.write_text(json.dumps(report, indent=1) + "\n")
    plot(results, output.with_suffix(".png"))
    print(json.dumps({k: v for k, v in report.items() if k != "per_iteration"}, indent=1))


if __name__ == "__main__":
    main()
