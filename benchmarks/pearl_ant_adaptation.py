"""Does a PEARL ant-dir agent walk the task's way once its posterior has seen the task? Per held-out
direction, `metaray eval`'s protocol replayed on gymnasium's own Ant-v5 (the reference env): the
first episode with z from the prior, then z from the posterior over every transition seen so far,
updated after each episode; per episode the length, the torso's displacement along the task's
direction and the return split into Ant-v5's terms.

Why: ant-dir's return is the survive bonus, the control and contact costs and the velocity along
the task's direction; a return near +199 (200 steps standing still) can be an ant that stands, or
one that walks a little and pays for it. The displacement after adaptation against the prior's
says whether the posterior turned the ant the task's way. (`ant_adaptation.py` is the MAML probe.)

    python benchmarks/pearl_ant_adaptation.py RUN_OR_CHECKPOINT [...] [--num-tasks 20] [--episodes 4]

A run directory takes its newest checkpoint; a checkpoint directory (`RUN/checkpoints/iter-…`)
that one. The tasks are the ones `metaray eval` draws (the run's eval.seed); actions are the
actor's mean when `pearl.eval_deterministic` (as `metaray eval`), sampled otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ant_gait import TERMS, load_target  # noqa: E402

from metaray.bench.provenance import script_output  # noqa: E402
from metaray.cluster.config import load_config  # noqa: E402
from metaray.learner.pearl.networks import PEARLAgent, context_rows, pearl_spec  # noqa: E402
from metaray.networks import load_weights  # noqa: E402
from metaray.tasks import make_family  # noqa: E402


def play(env, agent: PEARLAgent, z: np.ndarray, seed: int, horizon: int, deterministic: bool,
         gen: torch.Generator) -> tuple[dict[str, float], np.ndarray]:
    """One episode acting with z: its summary and its transitions as context rows."""
    obs, _ = env.reset(seed=seed)
    data = env.unwrapped.data
    x0, total, terms, length = float(data.qpos[0]), 0.0, dict.fromkeys(TERMS, 0.0), 0
    rows: list[tuple[np.ndarray, np.ndarray, float, np.ndarray]] = []
    zt = torch.as_tensor(z, dtype=torch.float32)[None]
    for _ in range(horizon):
        o = np.asarray(obs, np.float32)
        with torch.no_grad():
            noise = torch.randn((1, agent.spec.act_dim), generator=gen)
            u, _, _, _ = agent.actor(torch.from_numpy(o)[None], zt, noise, deterministic=deterministic)
            action = agent.actor.to_env(u)[0].numpy()
        obs, reward, terminated, truncated, info = env.step(action)
        rows.append((o, u[0].numpy(), float(reward), np.asarray(obs, np.float32)))
        length += 1
        total += float(reward)
        for key in TERMS:
            terms[key] += float(info.get(key, 0.0))
        if terminated or truncated:
            break
    summary = {"length": length, "x_moved": float(data.qpos[0]) - x0, "return": total,
               "terminated": bool(terminated), **terms}
    obs_, act_, rew_, next_ = (np.stack([r[k] for r in rows]) for k in range(4))
    return summary, context_rows(obs_, act_, np.asarray(rew_, np.float32), next_, agent_uses_next_obs(agent))


def agent_uses_next_obs(agent: PEARLAgent) -> bool:
    return agent.spec.context_dim > agent.spec.obs_dim + agent.spec.act_dim + 1


def probe(target: Path, num_tasks: int | None, n_episodes: int, sampled: bool | None) -> dict:
    tensors, state, run, name = load_target(target)
    config = load_config(run / "config.yaml")
    if config.algo != "pearl" or config.task.family != "ant-dir":
        raise SystemExit(f"{run}: not a PEARL ant-dir run ({config.algo}, {config.task.family})")
    pearl = config.algo_config()
    family = make_family(config.task.family, config.task.kwargs)
    tasks = family.sample(num_tasks or config.eval.num_tasks, np.random.default_rng(config.eval.seed), "test")
    env = family.make_env(tasks[0])
    agent = PEARLAgent(pearl_spec(env.observation_space, env.action_space, pearl), pearl)
    env.close()
    load_weights(agent, {k.split("/", 1)[1]: np.array(v) for k, v in tensors.items() if k.startswith("policy/")})
    agent.requires_grad_(False)
    deterministic = pearl.eval_deterministic if sampled is None else not sampled
    gen = torch.Generator().manual_seed(config.eval.seed)
    latent = pearl.latent_size
    rows = []
    for task in tasks:
        env = family.make_env(task)
        seed = config.eval.seed + task.task_id
        context = np.zeros((0, agent.spec.context_dim), np.float32)
        episodes = []
        for ep in range(n_episodes):
            if ep == 0:
                mean, var = torch.zeros(latent), torch.ones(latent)
            else:
                mean, var = agent.encoder.posterior(torch.from_numpy(context))
            z = (mean + var.sqrt() * torch.randn(latent, generator=gen)).numpy()
            summary, rows_ = play(env, agent, z, seed + 1000 * ep, family.max_episode_steps, deterministic, gen)
            summary["along"] = float(task.params[0]) * summary["x_moved"]
            summary["posterior_std"] = float(var.sqrt().mean())
            episodes.append(summary)
            context = np.concatenate([context, rows_])
        env.close()
        rows.append({"task_id": task.task_id, "direction": float(task.params[0]), "episodes": episodes})
    out = {"run": str(run), "checkpoint": name, "iteration": state["iteration"], "deterministic": deterministic,
           "episodes_per_task": n_episodes, "tasks": rows, "by_direction": {}}
    for direction in sorted({r["direction"] for r in rows}):
        chosen = [r for r in rows if r["direction"] == direction]
        per_episode = [{key: float(np.mean([r["episodes"][ep][key] for r in chosen])) for key in chosen[0]["episodes"][ep]}
                       for ep in range(n_episodes)]
        gain = np.array([np.mean([e["along"] for e in r["episodes"][1:]]) - r["episodes"][0]["along"] for r in chosen])
        summary = {"tasks": len(chosen), "per_episode": per_episode, "along_gain": float(gain.mean()),
                   "along_gain_se": float(gain.std(ddof=1) / np.sqrt(len(gain))) if len(gain) > 1 else float("nan")}
        out["by_direction"][str(direction)] = summary
        first, last = per_episode[0], per_episode[-1]
        print(f"{run.name} {name} direction {direction:+g} ({len(chosen)} tasks): along "
              + " -> ".join(f"{e['along']:+.2f}" for e in per_episode)
              + f" m (gain after the prior {summary['along_gain']:+.2f} ± {summary['along_gain_se']:.2f}); length "
              + " -> ".join(f"{e['length']:.0f}" for e in per_episode)
              + f"; return {first['return']:.1f} -> {last['return']:.1f} (velocity term {first['reward_task']:+.1f} -> "
              f"{last['reward_task']:+.1f}, control {first['reward_ctrl']:.1f} -> {last['reward_ctrl']:.1f})", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", type=Path, nargs="+", help="run directories or checkpoint directories")
    parser.add_argument("--num-tasks", type=int, default=None, help="default: the run's eval.num_tasks")
    parser.add_argument("--episodes", type=int, default=4, help="episodes per task: the prior's, then the posterior's")
    parser.add_argument("--sampled", action="store_true", default=None,
                        help="sample actions (default: as the run's pearl.eval_deterministic says)")
    parser.add_argument("--name", default="pearl_ant_adaptation.json")
    args = parser.parse_args()
    if args.episodes < 2:
        parser.error("--episodes: at least 2 (the prior's, then one with the posterior)")
    torch.set_num_threads(1)
    results = [probe(target, args.num_tasks, args.episodes, args.sampled) for target in args.targets]
    path = script_output(__file__, args.name)
    path.write_text(json.dumps(results, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
