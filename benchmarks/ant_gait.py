"""What an Ant policy does with its episodes: length, distance along x, and the return split into
Ant-v5's terms (the task's velocity term, survive bonus, control and contact costs), per task
direction, for a MAML run's meta-policy (before adaptation; sampled as trained, and with less or no
action noise) and for Gaussian random actions of given σ (no policy).

Why: a return can rise because the ant walks, or because it ends its episodes sooner when every
step costs more than the survive bonus; the return alone does not say which.

    python benchmarks/ant_gait.py [RUN_DIR ...] [--sigmas 1 0.6 0.37 0.22] [--noise 1 0.3 0] [--episodes 10]
                                  [--fresh=0,1 --fresh=-1,1 --fresh=-1,0.01]

`--fresh LOG_STD,OUTPUT_SCALE`: untrained 64x64 tanh Gaussian policies (torch seeds 0 and 1) with
that initial log σ (`maml.init_log_std`) and mean-layer scale (`maml.init_output_scale`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from metaray.bench.provenance import script_output
from metaray.cluster.checkpoint import load_checkpoint, load_newest_checkpoint
from metaray.cluster.config import load_config
from metaray.networks import GaussianMLPPolicy
from metaray.tasks import make_family
from metaray.tasks.base import Task

TERMS = ("reward_task", "reward_survive", "reward_ctrl", "reward_contact")


def episodes(env, act, n: int, seed: int, horizon: int) -> dict[str, float]:
    """n episodes with `act(obs, rng) -> action` (clipped to the action box, as the samplers do)."""
    rng = np.random.default_rng(seed)
    low, high = env.action_space.low, env.action_space.high
    rows = []
    for ep in range(n):
        obs, _ = env.reset(seed=seed + ep)
        data = env.unwrapped.data
        x0, total, terms, length = float(data.qpos[0]), 0.0, dict.fromkeys(TERMS, 0.0), 0
        for _ in range(horizon):
            obs, reward, terminated, truncated, info = env.step(np.clip(act(obs, rng), low, high))
            length += 1
            total += reward
            for key in TERMS:
                terms[key] += float(info.get(key, 0.0))
            if terminated or truncated:
                break
        rows.append({"length": length, "x_moved": float(data.qpos[0]) - x0, "return": total, "terminated": bool(terminated),
                     "final_z": float(data.qpos[2]), **terms})
    out = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
    out["min_length"] = int(min(r["length"] for r in rows))
    out["ended_above_z_1"] = int(sum(r["terminated"] and r["final_z"] > 1.0 for r in rows))
    return out


def load_target(target: Path) -> tuple[dict, dict, Path, str]:
    """A run directory's newest checkpoint or a checkpoint directory: (tensors, state, run, name)."""
    if (target / "state.json").is_file():
        tensors, state = load_checkpoint(target)
        return tensors, state, target.parent.parent, target.name
    found = load_newest_checkpoint(target)
    if found.path is None:
        raise SystemExit(f"{target}: no checkpoint loads")
    return found.tensors, found.state, target, found.path.name


def sample(policy: torch.nn.Module, obs: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """The policy's action: its mean plus `noise` x σ x N(0, 1)."""
    with torch.no_grad():
        mean, log_std = policy(torch.as_tensor(obs, dtype=torch.float32))
    return (mean + noise * log_std.exp() * torch.from_numpy(rng.standard_normal(mean.shape).astype(np.float32))).numpy()


def show(label: str, s: dict[str, float]) -> None:
    print(f"{label}: length {s['length']:.0f} (min {s['min_length']}), x {s['x_moved']:+.2f} m, return {s['return']:.1f} "
          f"= task {s['reward_task']:+.1f} survive {s['reward_survive']:.1f} ctrl {s['reward_ctrl']:.1f} "
          f"contact {s['reward_contact']:.1f}; ended above z 1.0: {s['ended_above_z_1']}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="*")
    parser.add_argument("--family", default="ant-dir", help="without runs: the family of the random-action probe")
    parser.add_argument("--sigmas", type=float, nargs="*", default=[1.0, 0.6, 0.37, 0.22])
    parser.add_argument("--noise", type=float, nargs="*", default=[1.0, 0.3, 0.0],
                        help="the policy's action noise as a multiple of its σ (1: sampled as trained, 0: the mean)")
    parser.add_argument("--fresh", action="append", default=[], metavar="LOG_STD,OUTPUT_SCALE",
                        help="untrained policies with this initial log σ and mean-layer scale (repeatable; "
                             "--fresh=-1,0.01 for a negative log σ)")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="ant_gait.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    result: dict = {"episodes": args.episodes, "seed": args.seed, "random": {}, "runs": {}}
    family = make_family(args.family, {"horizon": 200})
    tasks = [Task(family.name, "test", 0, (1.0,)), Task(family.name, "test", 1, (-1.0,))] if family.name == "ant-dir" \
        else family.sample(2, np.random.default_rng(args.seed), "test")
    env = family.make_env(tasks[0])
    for sigma in [*args.sigmas, 0.0]:
        s = episodes(env, lambda obs, rng, sigma=sigma: sigma * rng.standard_normal(env.action_space.shape), args.episodes,
                     args.seed, family.max_episode_steps)
        result["random"][str(sigma)] = s
        show(f"random N(0, {sigma:g}) on task {tasks[0].params}", s)
    result["fresh"] = {}
    for spec in args.fresh:
        log_std, scale = (float(v) for v in spec.split(","))
        for torch_seed in (0, 1):
            torch.manual_seed(torch_seed)
            policy = GaussianMLPPolicy(env.observation_space.shape[0], env.action_space.shape[0], [64, 64], "tanh",
                                       init_log_std=log_std, init_output_scale=scale)
            s = episodes(env, lambda obs, rng, policy=policy: sample(policy, obs, rng, 1.0), args.episodes, args.seed,
                         family.max_episode_steps)
            result["fresh"][f"{spec} torch seed {torch_seed}"] = s
            show(f"untrained, init_log_std {log_std:g}, init_output_scale {scale:g}, torch seed {torch_seed}", s)
    for run in args.runs:
        config = load_config(run / "config.yaml")
        found = load_newest_checkpoint(run)
        if found.path is None:
            raise SystemExit(f"{run}: no checkpoint loads")
        family = make_family(config.task.family, config.task.kwargs)
        policy = config.algorithm().make_policy(env.observation_space, env.action_space, config.algo_config())
        policy.load_state_dict({k.split("/", 1)[1]: torch.from_numpy(np.array(v)) for k, v in found.tensors.items()
                                if k.startswith("policy/")})
        sigma = policy.log_std.detach().exp().numpy()
        rows = {}
        for task in tasks:
            task_env = family.make_env(task)
            for noise in args.noise:
                s = episodes(task_env, lambda obs, rng, noise=noise, policy=policy: sample(policy, obs, rng, noise),
                             args.episodes, args.seed, family.max_episode_steps)
                rows[f"task {task.params} noise {noise:g}"] = s
                show(f"{run.name} {found.path.name} task {task.params}, noise {noise:g} x σ", s)
        result["runs"][str(run)] = {"checkpoint": found.path.name, "iteration": found.state["iteration"],
                                    "policy_sigma": sigma.round(4).tolist(), "episodes": rows}
    path = script_output(__file__, args.name)
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
