"""Does a MAML ant-dir policy walk the task's way after adaptation? Per held-out task direction, the
meta-policy (before adaptation) and the adapted policy (after the inner step(s)): episode length,
the torso's displacement along the task's direction, and the return split into Ant-v5's terms.

Why: ant-dir's return is the survive bonus, the control and contact costs and the velocity along
the task's direction; a return can rise after adaptation because the adapted policy stands
steadier or costs less, not because it walks the right way. The displacement, before and after,
says which. (`ant_gait.py` probes only the meta-policy before adaptation.)

    python benchmarks/ant_adaptation.py RUN_OR_CHECKPOINT [...] [--num-tasks 40] [--episodes 2]

A run directory takes its newest checkpoint; a checkpoint directory (`RUN/checkpoints/iter-…`)
that one. The tasks are the ones `metaray eval` draws (the run's eval.seed). The inner step adapts
from the sampler's own episodes (as `metaray eval`, whose returns are reported too); then θ and
each task's θ' act for `--episodes` more episodes on gymnasium's own Ant-v5 (the reference env,
sampled as trained), where the torso's x position and each reward term are read directly.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ant_gait import episodes as play  # noqa: E402
from ant_gait import load_target  # noqa: E402

from metaray.bench.provenance import script_output  # noqa: E402
from metaray.cluster.config import load_config  # noqa: E402
from metaray.core import mean_episode_return  # noqa: E402
from metaray.learner.maml.sampler import MAMLSampler  # noqa: E402
from metaray.networks import Params, policy_forward  # noqa: E402
from metaray.tasks import make_family  # noqa: E402


def episodes(env, policy: torch.nn.Module, params: Params, n: int, seed: int, horizon: int) -> dict[str, float]:
    """n episodes of the policy with `params`, sampled (ant_gait's loop: actions clipped to the box
    as the samplers do): mean length, x displacement signed by the task's direction ("along"),
    return and its terms."""

    def act(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        with torch.no_grad():
            mean, log_std = policy_forward(policy, params, torch.as_tensor(obs, dtype=torch.float32)[None])
        return (mean + log_std.exp() * torch.from_numpy(rng.standard_normal(mean.shape).astype(np.float32)))[0].numpy()

    out = play(env, act, n, seed, horizon)
    out["along"] = float(env.task.params[0]) * out["x_moved"]
    return out


def probe(target: Path, num_tasks: int | None, n_episodes: int) -> dict:
    tensors, state, run, name = load_target(target)
    config = load_config(run / "config.yaml")
    if config.algo != "maml" or config.task.family != "ant-dir":
        raise SystemExit(f"{run}: not a MAML ant-dir run ({config.algo}, {config.task.family})")
    algo_config = config.algo_config()
    family = make_family(config.task.family, config.task.kwargs)
    tasks = family.sample(num_tasks or config.eval.num_tasks, np.random.default_rng(config.eval.seed), "test")
    sampler = MAMLSampler(family, algo_config, algo_config.episodes_per_task, config.eval.seed)
    sampler.set_weights(0, {k.split("/", 1)[1]: np.array(v) for k, v in tensors.items() if k.startswith("policy/")})
    theta = sampler.policy.theta()
    rows = []
    for start in range(0, len(tasks), algo_config.meta_batch_size):
        batch = tasks[start : start + algo_config.meta_batch_size]
        results = sampler.collect(batch, 0)
        adapted = sampler.adapted_params  # stacked [task, ...]
        for i, (task, result) in enumerate(zip(batch, results, strict=True)):
            env = family.make_env(task)
            own = {key: value[i] for key, value in adapted.items()}
            seed = config.eval.seed + task.task_id
            rows.append({"task_id": task.task_id, "direction": float(task.params[0]),
                         "eval_return_pre": mean_episode_return(next(iter(result.stages.values()))),
                         "eval_return_post": mean_episode_return(result.stages["post"]),
                         "pre": episodes(env, sampler.policy, theta, n_episodes, seed, family.max_episode_steps),
                         "post": episodes(env, sampler.policy, own, n_episodes, seed, family.max_episode_steps)})
            env.close()
    out = {"run": str(run), "checkpoint": name, "iteration": state["iteration"], "episodes_per_task": n_episodes,
           "tasks": rows, "by_direction": {}}
    for direction in sorted({r["direction"] for r in rows}):
        chosen = [r for r in rows if r["direction"] == direction]
        summary = {stage: {key: float(np.mean([r[stage][key] for r in chosen])) for key in chosen[0][stage]}
                   for stage in ("pre", "post")}
        for key in ("eval_return_pre", "eval_return_post"):
            summary[key] = float(np.mean([r[key] for r in chosen]))
        gain = np.array([r["post"]["along"] - r["pre"]["along"] for r in chosen])
        summary["along_gain"] = float(gain.mean())
        summary["along_gain_se"] = float(gain.std(ddof=1) / np.sqrt(len(gain))) if len(gain) > 1 else float("nan")
        summary["tasks"] = len(chosen)
        out["by_direction"][str(direction)] = summary
        pre, post = summary["pre"], summary["post"]
        print(f"{run.name} {name} direction {direction:+g} ({len(chosen)} tasks): length {pre['length']:.0f} -> "
              f"{post['length']:.0f}, along {pre['along']:+.2f} -> {post['along']:+.2f} m (gain {summary['along_gain']:+.2f}"
              f" ± {summary['along_gain_se']:.2f}), return {pre['return']:.1f} -> {post['return']:.1f} (velocity term "
              f"{pre['reward_task']:+.1f} -> {post['reward_task']:+.1f}, control {pre['reward_ctrl']:.1f} -> "
              f"{post['reward_ctrl']:.1f}); metaray eval's {summary['eval_return_pre']:.1f} -> {summary['eval_return_post']:.1f}",
              flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", type=Path, nargs="+", help="run directories or checkpoint directories")
    parser.add_argument("--num-tasks", type=int, default=None, help="default: the run's eval.num_tasks")
    parser.add_argument("--episodes", type=int, default=2, help="episodes per task of θ and of θ' on the reference env")
    parser.add_argument("--name", default="ant_adaptation.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = [probe(target, args.num_tasks, args.episodes) for target in args.targets]
    path = script_output(__file__, args.name)
    path.write_text(json.dumps(results, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
