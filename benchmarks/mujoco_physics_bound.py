"""How close each batched MuJoCo family steps to its physics alone, side by side in one process.

Per family: its natively batched vector env (`make_vector_env`, `--slots` slots, pre-drawn
uniform actions, resets included) against `mujoco.mj_step` x frame_skip on one env of the same
model with the same actions (the physics floor: what no Python can go below on one core). The
ratio says what share of a batched step is physics; an Ant step costs ~5x a HalfCheetah one in
`mj_step`, so an ant-dir meta-iteration is slow however the Python is written.

    python benchmarks/mujoco_physics_bound.py [--families halfcheetah-vel ant-dir] [--slots 64] [--steps 400]

Writes benchmarks/results/mujoco_physics_bound/<date>-<commit>/mujoco_physics_bound.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import mujoco
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from rl2_duan import machine  # noqa: E402

from metaray.bench.provenance import git_commit, script_output  # noqa: E402
from metaray.tasks import make_family, make_vector_env  # noqa: E402


def measure(name: str, slots: int, steps: int, repeats: int) -> dict:
    family = make_family(name, {})
    tasks = family.sample(slots, np.random.default_rng(0))
    env = make_vector_env(family, tasks, 1, seed=0)
    shape = env.single_action_space.shape
    actions = np.random.default_rng(1).uniform(-1, 1, (steps, slots, *shape)).astype(np.float32)
    batched = float("inf")
    for _ in range(repeats):  # the best of `repeats`: one run is ~1 s, at the mercy of the machine
        env.reset()
        start = time.perf_counter()
        for action in actions:
            env.step(action)
        batched = min(batched, (time.perf_counter() - start) / (steps * slots))
    env.close()
    single = family.make_env(tasks[0]).unwrapped
    single.reset(seed=0)
    model, data, frame_skip = single.model, single.data, single.frame_skip
    physics = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(steps * 4):
            data.ctrl[:] = actions[i % steps, i % slots]
            mujoco.mj_step(model, data, nstep=frame_skip)
        physics = min(physics, (time.perf_counter() - start) / (steps * 4))
    row = {"family": name, "slots": slots, "frame_skip": frame_skip, "batched_env_step_ms": round(batched * 1e3, 4),
           "mj_step_ms": round(physics * 1e3, 4), "batched_steps_per_s": round(1 / batched),
           "physics_steps_per_s": round(1 / physics), "physics_share": round(physics / batched, 3)}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["halfcheetah-vel", "ant-dir"])
    parser.add_argument("--slots", type=int, default=64)
    parser.add_argument("--steps", type=int, default=400, help="batched steps per run (each of --slots slots)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = [measure(name, args.slots, args.steps, args.repeats) for name in args.families]
    out = {"date": time.strftime("%Y-%m-%d"), "commit": git_commit(), "machine": machine(), "rows": rows}
    path = script_output(__file__, "mujoco_physics_bound.json")
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
