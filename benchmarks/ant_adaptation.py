"""Does a MAML ant-dir policy walk the task's way after adaptation? Per held-out task direction, the
episodes before adaptation (the meta-policy) and after the inner step(s): episode length, the
torso's mean velocity along x, the distance it covers along the task's direction, and the return.

Why: ant-dir's return is the survive bonus, the control and contact costs and the velocity along
the task's direction; a return can rise after adaptation because the adapted policy stands
steadier or costs less, not because it walks the right way. The distance along the direction,
before and after, says which. (`ant_gait.py` probes only the meta-policy before adaptation.)

    python benchmarks/ant_adaptation.py RUN_OR_CHECKPOINT [...] [--num-tasks 40] [--name ant_adaptation.json]

A run directory takes its newest checkpoint; a checkpoint directory (`RUN/checkpoints/iter-…`)
that one. The tasks are the ones `metaray eval` draws (the run's eval.seed), sampled as trained.
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
from metaray.learner.maml.sampler import MAMLSampler
from metaray.tasks import make_family

X_VELOCITY = 13  # Ant-v5's observation without x, y: qpos[2:] (13 entries), then qvel, whose first is the torso's x velocity


def stage_stats(episodes, direction: float, dt: float) -> dict[str, float]:
    """Mean over one task's episodes of one stage."""
    mask = np.asarray(episodes.mask, bool)  # [E, T]
    vx = np.where(mask, np.asarray(episodes.obs)[..., X_VELOCITY], 0.0)
    length = mask.sum(axis=1)
    distance = vx.sum(axis=1) * dt  # the velocity observed at each step, over the steps taken
    return {"length": float(length.mean()), "velocity_x": float((vx.sum(axis=1) / np.maximum(length, 1)).mean()),
            "distance_along": float((direction * distance).mean()),
            "return": float(np.where(mask, np.asarray(episodes.rewards), 0.0).sum(axis=1).mean())}


def probe(target: Path, num_tasks: int | None) -> dict:
    if (target / "state.json").is_file():
        tensors, state = load_checkpoint(target)
        run, name = target.parent.parent, target.name
    else:
        found = load_newest_checkpoint(target)
        if found.path is None:
            raise SystemExit(f"{target}: no checkpoint loads")
        tensors, state, run, name = found.tensors, found.state, target, found.path.name
    config = load_config(run / "config.yaml")
    if config.algo != "maml" or config.task.family != "ant-dir":
        raise SystemExit(f"{run}: not a MAML ant-dir run ({config.algo}, {config.task.family})")
    algo_config = config.algo_config()
    family = make_family(config.task.family, config.task.kwargs)
    tasks = family.sample(num_tasks or config.eval.num_tasks, np.random.default_rng(config.eval.seed), "test")
    sampler = MAMLSampler(family, algo_config, algo_config.episodes_per_task, config.eval.seed)
    sampler.set_weights(0, {k.split("/", 1)[1]: np.array(v) for k, v in tensors.items() if k.startswith("policy/")})
    dt = float(getattr(sampler.env, "dt", 0.05))  # the batched MuJoCo env's frame_skip x timestep
    rows = []
    for start in range(0, len(tasks), algo_config.meta_batch_size):
        batch = tasks[start : start + algo_config.meta_batch_size]
        for task, result in zip(batch, sampler.collect(batch, 0), strict=True):
            direction = float(task.params[0])
            first = next(iter(result.stages.values()))  # inner_0: the meta-policy's episodes
            rows.append({"task_id": task.task_id, "direction": direction,
                         "pre": stage_stats(first, direction, dt), "post": stage_stats(result.stages["post"], direction, dt)})
    out = {"run": str(run), "checkpoint": name, "iteration": state["iteration"], "dt": dt, "tasks": rows, "by_direction": {}}
    for direction in sorted({r["direction"] for r in rows}):
        chosen = [r for r in rows if r["direction"] == direction]
        summary = {stage: {key: float(np.mean([r[stage][key] for r in chosen])) for key in chosen[0][stage]}
                   for stage in ("pre", "post")}
        gain = np.array([r["post"]["distance_along"] - r["pre"]["distance_along"] for r in chosen])
        summary["distance_gain"] = float(gain.mean())
        summary["distance_gain_se"] = float(gain.std(ddof=1) / np.sqrt(len(gain))) if len(gain) > 1 else float("nan")
        summary["tasks"] = len(chosen)
        out["by_direction"][str(direction)] = summary
        pre, post = summary["pre"], summary["post"]
        print(f"{run.name} {name} direction {direction:+g} ({len(chosen)} tasks): length {pre['length']:.0f} -> {post['length']:.0f}, "
              f"distance along {pre['distance_along']:+.2f} -> {post['distance_along']:+.2f} m "
              f"(gain {summary['distance_gain']:+.2f} ± {summary['distance_gain_se']:.2f}), "
              f"return {pre['return']:.1f} -> {post['return']:.1f}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", type=Path, nargs="+", help="run directories or checkpoint directories")
    parser.add_argument("--num-tasks", type=int, default=None, help="default: the run's eval.num_tasks")
    parser.add_argument("--name", default="ant_adaptation.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = [probe(target, args.num_tasks) for target in args.targets]
    path = script_output(__file__, args.name)
    path.write_text(json.dumps(results, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
