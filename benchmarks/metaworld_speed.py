"""Meta-World sampling with and without `speedups` (metaray.tasks.metaworld_speedups), side by
side in one process, one torch thread.

1. Every v3 env (ML45's 45 train + 5 test classes): `env.step` on the same random actions from
   the same reset, speedups off then on, `--steps` each (the best of `--repeats` alternating runs);
   the time per step, the time `mj_step`
   alone takes for the same frames (the physics floor), and whether observations, rewards and
   infos are the same bits.
2. Building each v3 env (what an ML10/ML45 slot does when its next task is of another class):
   speedups off (gymnasium compiles the XML every time), on the first time in a process (the
   compile, kept), and on later (a copy of the kept model); the median of `--builds` each.
3. A MAML rollout worker's sampler on ML10 (configs/maml-trpo-ml10.yaml's policy and meta-batch:
   `--tasks` 20 tasks x `--episodes` 10 episodes, before and after the inner step, 500-step
   episodes), each of `--rounds` rounds on a new meta-batch, off then on: env steps per second,
   the env builds of slots that change class, the policy and the worker's bookkeeping included.
Writes benchmarks/results/metaworld_speed/<date>-<commit>/metaworld_speed.json.

    python benchmarks/metaworld_speed.py [--steps 500] [--builds 5] [--tasks 20] [--episodes 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import mujoco
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from rl2_duan import machine  # noqa: E402

from metaray.bench.provenance import git_commit, script_output  # noqa: E402
from metaray.cluster.config import load_config  # noqa: E402
from metaray.learner import maml  # noqa: E402
from metaray.tasks import make_family  # noqa: E402
from metaray.tasks import metaworld_speedups as speedups  # noqa: E402
from metaray.tasks.metaworld import benchmark  # noqa: E402


def env_steps(env_class: type, task, steps: int, on: bool) -> tuple[float, tuple]:
    speedups.set_speedups(on)
    env = env_class()
    env.set_task(task)
    env.seed(0)
    obs, _ = env.reset()
    actions = np.random.default_rng(0).uniform(-1, 1, (steps, 4))
    out = [obs]
    start = time.perf_counter()
    for action in actions:
        out.append(env.step(action))
    elapsed = time.perf_counter() - start
    env.close()
    return elapsed / steps, out


def physics_floor(env_class: type, task, steps: int) -> float:
    env = env_class()
    env.set_task(task)
    env.reset()
    start = time.perf_counter()
    for _ in range(steps):
        mujoco.mj_step(env.model, env.data, nstep=env.frame_skip)
    elapsed = time.perf_counter() - start
    env.close()
    return elapsed / steps


def same(a: list, b: list) -> bool:
    if not np.array_equal(a[0], b[0]):
        return False
    return all(np.array_equal(x[0], y[0]) and x[1:] == y[1:] for x, y in zip(a[1:], b[1:], strict=True))


def per_env(steps: int, repeats: int) -> list[dict]:
    bench = benchmark("ML45", None, 0)
    tasks = {t.env_name: t for t in bench.train_tasks + bench.test_tasks}
    rows = []
    for name, env_class in {**bench.train_classes, **bench.test_classes}.items():
        # the best of `repeats` alternating runs per setting: one run is ~0.1 s, at the mercy of the machine
        off, on = float("inf"), float("inf")
        for _ in range(repeats):
            t_off, reference = env_steps(env_class, tasks[name], steps, on=False)
            t_on, fast = env_steps(env_class, tasks[name], steps, on=True)
            off, on = min(off, t_off), min(on, t_on)
        row = {"env": name, "step_ms_off": round(off * 1e3, 4), "step_ms_on": round(on * 1e3, 4),
               "speedup": round(off / on, 3), "mj_step_ms": round(physics_floor(env_class, tasks[name], steps) * 1e3, 4),
               "same_bits": same(reference, fast)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def build_ms(env_class: type, on: bool) -> float:
    speedups.set_speedups(on)
    start = time.perf_counter()
    env = env_class()
    elapsed = time.perf_counter() - start
    env.close()
    return elapsed * 1e3


def env_builds(builds: int) -> list[dict]:
    """Per class: the median build off, the first build on (it compiles and keeps the model) and
    the median later build on. The kept models are dropped first, so that the first build on
    compiles as a process's first does."""
    bench = benchmark("ML45", None, 0)
    rows = []
    for name, env_class in {**bench.train_classes, **bench.test_classes}.items():
        off = statistics.median(build_ms(env_class, on=False) for _ in range(builds))
        speedups._COMPILED.clear()
        first = build_ms(env_class, on=True)
        later = statistics.median(build_ms(env_class, on=True) for _ in range(builds))
        row = {"env": name, "build_ms_off": round(off, 2), "build_ms_on_first": round(first, 2),
               "build_ms_on_later": round(later, 2), "speedup_later": round(off / later, 2)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def worker(tasks: int, episodes: int, rounds: int) -> dict:
    """Each round a new meta-batch of ML10 train tasks (the same ones for both settings), as in
    training: a slot whose new task is of another class builds a new env."""
    config = load_config(ROOT / "configs/maml-trpo-ml10.yaml")
    algo = config.algo_config().model_copy(update={"episodes_per_task": episodes, "meta_batch_size": tasks})
    samplers, family = {}, None
    for label in ("off", "on"):
        family = make_family(config.task.family, {**config.task.kwargs, "speedups": label == "on"})
        speedups.set_speedups(label == "on")
        sampler = maml.MAMLSampler(family, algo, tasks * episodes, seed=0)
        torch.manual_seed(0)
        policy = maml.make_policy(sampler.env.single_observation_space, sampler.env.single_action_space, algo)
        sampler.set_weights(0, maml.get_weights(policy))
        samplers[label] = sampler
    rates: dict[str, list[float]] = {"off": [], "on": []}
    for round_ in range(rounds):
        draws = family.sample(tasks, np.random.default_rng(100 + round_))
        for label, sampler in samplers.items():
            speedups.set_speedups(label == "on")
            start = time.perf_counter()
            results = sampler.collect(draws, 0)
            elapsed = time.perf_counter() - start
            rates[label].append(sum(r.env_steps for r in results) / elapsed)
            print(f"round {round_} speedups {label}: {rates[label][-1]:,.0f} env steps/s", flush=True)
    mean = {k: statistics.mean(v) for k, v in rates.items()}
    return {"tasks": tasks, "episodes_per_task": episodes, "new_tasks_each_round": True, "env_steps_per_s": rates,
            "mean": mean, "speedup": round(mean["on"] / mean["off"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500, help="env steps per env and setting")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per env and setting (the best counts)")
    parser.add_argument("--skip-envs", action="store_true", help="only the worker measurement")
    parser.add_argument("--builds", type=int, default=5, help="env builds per class and setting (the median counts); 0 skips them")
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="worker rounds, each on a new meta-batch; 0 skips the worker")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [] if args.skip_envs else per_env(args.steps, args.repeats)
    total_off = sum(r["step_ms_off"] for r in rows)
    total_on = sum(r["step_ms_on"] for r in rows)
    summary = {"envs": len(rows), "all_same_bits": all(r["same_bits"] for r in rows),
               "mean_step_ms_off": round(total_off / len(rows), 4), "mean_step_ms_on": round(total_on / len(rows), 4),
               "mean_mj_step_ms": round(statistics.mean(r["mj_step_ms"] for r in rows), 4),
               "speedup_all_envs": round(total_off / total_on, 3)} if rows else {}
    print(json.dumps(summary), flush=True)
    builds = env_builds(args.builds) if args.builds > 0 else []
    if builds:
        summary["mean_build_ms_off"] = round(statistics.mean(r["build_ms_off"] for r in builds), 2)
        summary["mean_build_ms_on_first"] = round(statistics.mean(r["build_ms_on_first"] for r in builds), 2)
        summary["mean_build_ms_on_later"] = round(statistics.mean(r["build_ms_on_later"] for r in builds), 2)
        print(json.dumps({k: v for k, v in summary.items() if "build" in k}), flush=True)
    sampling = worker(args.tasks, args.episodes, args.rounds) if args.rounds > 0 else {}
    print(json.dumps(sampling), flush=True)
    out = {"date": time.strftime("%Y-%m-%d"), "commit": git_commit(), "machine": machine(), "torch_threads": 1,
           "steps_per_env": args.steps, "summary": summary, "ml10_maml_worker": sampling, "per_env": rows, "env_builds": builds}
    path = script_output(__file__, "metaworld_speed.json")
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
