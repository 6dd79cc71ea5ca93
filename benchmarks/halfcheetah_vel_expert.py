"""Train, evaluate and export the halfcheetah-vel expert that adversarial imitation imitates.

    python benchmarks/halfcheetah_vel_expert.py                  # train (600 iterations), export
    python benchmarks/halfcheetah_vel_expert.py --export-only    # export the run's newest checkpoint

Training is a real `metaray train configs/expert-halfcheetah-vel.yaml` run (local Ray): TRPO on
the true reward with the target velocity observed. The newest checkpoint's policy is written to
metaray/tasks/experts/halfcheetah-vel.safetensors with the training config and measured returns
in its metadata. The evaluation runs the exported file the way adversarial imitation does
(`HalfCheetahVelFamily.expert`, on envs that hide the target) on held-out test tasks, beside a
zero-action and a uniform-random policy. Results: benchmarks/results/halfcheetah_vel_expert/<date>-<commit>/halfcheetah_vel_expert.json
and .png (learning curve and velocity tracking).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from metaray.bench.provenance import script_output
from metaray.cluster.checkpoint import load_checkpoint
from metaray.cluster.evaluation import load_run
from metaray.tasks import make_family
from metaray.tasks.experts import expert_path, load_expert, save_expert

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "expert-halfcheetah-vel.yaml"
RUN = ROOT / "benchmarks" / "results" / "runs" / "expert-halfcheetah-vel"


def train(iterations: int | None) -> None:
    exe = Path(sys.executable).with_name("metaray")
    args = [str(exe), "train", str(CONFIG), "--run-dir", str(RUN)]
    if iterations:
        args += ["--iterations", str(iterations)]
    if (RUN / "config.yaml").exists():
        args.append("--resume")
    subprocess.run(args, cwd=ROOT, check=True)


def export() -> dict:
    config, ckpt = load_run(RUN)
    tensors, state = load_checkpoint(ckpt)
    weights = {k.split("/", 1)[1]: torch.from_numpy(np.array(v)) for k, v in tensors.items() if k.startswith("policy/")}
    algo = config.algo_config()
    family = make_family(config.task.family, config.task.kwargs)
    env = family.make_env()
    progress = [json.loads(line) for line in (RUN / "progress.jsonl").read_text().splitlines()]
    metadata = {
        "family": "halfcheetah-vel",
        "obs_dim": int(env.observation_space.shape[0]), "act_dim": int(env.action_space.shape[0]),
        "hidden_sizes": list(algo.hidden_sizes), "activation": algo.activation,
        "action_low": env.action_space.low.tolist(), "action_high": env.action_space.high.tolist(),
        "observation": "HalfCheetah-v5 observation followed by the target velocity",
        "trained_with": CONFIG.relative_to(ROOT).as_posix(), "config": CONFIG.read_text(),
        "iteration": state["iteration"], "env_steps": progress[-1]["env_steps_total"],
        "date": time.strftime("%Y-%m-%d"),
    }
    env.close()
    save_expert(expert_path("halfcheetah-vel"), weights, metadata)
    load_expert.cache_clear()
    return metadata


def rollout(family, task, act, seed: int) -> tuple[float, np.ndarray]:
    env = family.make_env(task)
    obs, _ = env.reset(seed=seed)
    total, velocities, done = 0.0, [], False
    while not done:
        obs, reward, terminated, truncated, info = env.step(act(obs))
        total += reward
        velocities.append(info["x_velocity"])
        done = terminated or truncated
    env.close()
    return total, np.asarray(velocities)


def evaluate(num_tasks: int) -> dict:
    family = make_family("halfcheetah-vel", {"horizon": 200})  # the target hidden, as in imitation
    tasks = family.sample(num_tasks, np.random.default_rng(0), "test")
    rng = np.random.default_rng(0)
    policies = {
        "expert": None,
        "zero action": lambda obs: np.zeros(6, np.float32),
        "uniform random": lambda obs: rng.uniform(-1, 1, 6).astype(np.float32),
    }
    rows = []
    for i, task in enumerate(tasks):
        row = {"target_velocity": float(task.params[0])}
        for name, act in policies.items():
            ret, vel = rollout(family, task, act or family.expert(task), seed=i)
            row[name] = ret
            if name == "expert":
                row["expert_velocity_last100"] = float(vel[-100:].mean())
        rows.append(row)
    summary = {name: float(np.mean([r[name] for r in rows])) for name in policies}
    err = [abs(r["expert_velocity_last100"] - r["target_velocity"]) for r in rows]
    summary["expert_velocity_error_last100"] = float(np.mean(err))
    return {"summary": summary, "tasks": rows}


def plot(result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    progress = [json.loads(line) for line in (RUN / "progress.jsonl").read_text().splitlines()]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot([p["iteration"] for p in progress], [p["return_post"] for p in progress])
    a.set_xlabel("TRPO iteration")
    a.set_ylabel("training return (200 steps)")
    a.set_title("halfcheetah-vel expert training")
    rows = result["tasks"]
    t = [r["target_velocity"] for r in rows]
    b.scatter(t, [r["expert_velocity_last100"] for r in rows], s=12, label="expert, mean of last 100 steps")
    b.plot([0, 2], [0, 2], "k--", lw=1, label="target")
    b.set_xlabel("target velocity")
    b.set_ylabel("achieved x velocity")
    b.legend()
    b.set_title(f"held-out targets (mean return {result['summary']['expert']:.1f})")
    fig.tight_layout()
    fig.savefig(script_output(__file__, "halfcheetah_vel_expert.png"), dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, help="override the config's iterations")
    parser.add_argument("--export-only", action="store_true", help="export and evaluate the run as it is")
    parser.add_argument("--tasks", type=int, default=20, help="held-out tasks for the evaluation")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not args.export_only:
        train(args.iterations)
    metadata = export()
    result = evaluate(args.tasks)
    metadata = {k: v for k, v in metadata.items() if k != "config"}
    out = {"machine_date": time.strftime("%Y-%m-%d"), "expert": metadata, **result}
    script_output(__file__, "halfcheetah_vel_expert.json").write_text(json.dumps(out, indent=1) + "\n")
    plot(out)
    print(json.dumps(out["summary"], indent=1))


if __name__ == "__main__":
    main()
