"""PEARL's learner on CPU: seconds per gradient step at a config's sizes, float32 against
`pearl.precision: bf16`, measured side by side in one process (alternating blocks), on replay
filled by the config's own sampler.

    python benchmarks/pearl_learner_cost.py configs/pearl-halfcheetah-vel.yaml --steps 50 --repeats 3

With `--checkpoint RUN_DIR` (a run saved with `checkpoint.replay_buffer: true`): does a trained
learner step slower than a fresh one? Both on the newest checkpoint's replay, the run's own
config; "trained" also takes its weights and Adam states (denormals, dead units); alternating
blocks, flush-to-zero off and on.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file

from metaray.bench.provenance import script_output
from metaray.cluster.config import load_config
from metaray.learner import pearl
from metaray.tasks import make_family


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--steps", type=int, default=50, help="gradient steps per timed block")
    parser.add_argument("--repeats", type=int, default=3, help="blocks per precision, alternating")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON path (default benchmarks/results/pearl_learner_cost/<date>-<commit>/pearl_learner_cost_<config>.json)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a run directory: time a learner with its newest checkpoint's state against a fresh one")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.checkpoint is not None:
        trained_against_fresh(args)
        return
    config = load_config(args.config)
    algo = config.algo_config()
    family = make_family(config.task.family, config.task.kwargs)
    sampler = pearl.PEARLSampler(family, algo, algo.rounds_per_update, seed=0)
    batch, _ = sampler.sample(algo.rounds_per_update)
    learners = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        cfg = algo.model_copy(update={"precision": precision, "warmup_steps": 0, "updates_per_step": 1e-9})
        learner = pearl.PEARLLearner(pearl.PEARLAgent(sampler.spec, cfg), cfg, torch.device("cpu"), seed=0)
        learner.update([batch])  # fills the replay; no gradient step yet
        learner._step()  # warm-up
        learners[precision] = learner
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(args.repeats):
        for precision, learner in learners.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                learner._step()
            times[precision].append((time.perf_counter() - start) / args.steps)
    best = {p: min(t) for p, t in times.items()}
    result = {
        "config": args.config, "meta_batch": algo.meta_batch, "batch_size": algo.batch_size,
        "hidden_size": algo.hidden_size, "s_per_step": times, "best_s_per_step": best,
        "bf16_speedup": best["fp32"] / best["bf16"],
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "machine": f"{platform.processor() or platform.machine()}, torch threads 1",
    }
    print(f"{args.config}: fp32 {best['fp32'] * 1e3:.1f} ms / step, bf16 {best['bf16'] * 1e3:.1f} ms / step "
          f"({result['bf16_speedup']:.2f}x)")
    output = args.output or script_output(__file__, f"pearl_learner_cost_{Path(args.config).stem}.json")
    output.write_text(json.dumps(result, indent=1))


def trained_against_fresh(args: argparse.Namespace) -> None:
    from metaray.cluster.checkpoint import latest_checkpoint

    run = args.checkpoint
    config = load_config(run / "config.yaml")
    algo = config.algo_config()
    ckpt = latest_checkpoint(run)
    if ckpt is None:
        raise SystemExit(f"{run}: no checkpoint")
    tensors = load_file(str(ckpt / "learner.safetensors"))
    state = json.loads((ckpt / "state.json").read_text())
    if "replay" not in state:
        raise SystemExit(f"{ckpt}: no replay buffer in it (checkpoint.replay_buffer: false)")
    spec = pearl.PEARLSampler(make_family(config.task.family, config.task.kwargs), algo, 1, seed=0).spec
    replay = {k[len("replay/"):]: v for k, v in tensors.items() if k.startswith("replay/")}

    def build(trained: bool) -> pearl.PEARLLearner:
        torch.manual_seed(0)
        learner = pearl.PEARLLearner(pearl.PEARLAgent(spec, algo), algo, torch.device("cpu"), seed=0)
        learner.load_replay_state(state["replay"], replay)
        if trained:
            learner.policy.load_state_dict({k.split("/", 1)[1]: torch.from_numpy(np.array(v))
                                            for k, v in tensors.items() if k.startswith("policy/")})
            learner.load_optimizer_state({k.split("/", 1)[1]: torch.from_numpy(np.array(v))
                                          for k, v in tensors.items() if k.startswith("optimizer/")},
                                         state["learner"]["optimizer"])
        for _ in range(3):
            learner._step()
        return learner

    learners = {"fresh": build(False), "trained": build(True)}
    denormal = {name: int(sum(((v != 0) & (np.abs(v) < np.finfo(np.float32).tiny)).sum()
                              for k, v in tensors.items() if k.startswith(name) and v.dtype == np.float32))
                for name in ("policy/", "optimizer/")}
    times: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for flush in (False, True):
            torch.set_flush_denormal(flush)
            for name, learner in learners.items():
                start = time.perf_counter()
                for _ in range(args.steps):
                    learner._step()
                times.setdefault(f"{name}, flush_denormal={flush}", []).append((time.perf_counter() - start) / args.steps)
    torch.set_flush_denormal(False)
    best = {k: min(v) for k, v in times.items()}
    result = {"run": str(run), "checkpoint": ckpt.name, "replay_transitions": int(learners["fresh"].replay.num_transitions),
              "denormal_floats_in_checkpoint": denormal, "s_per_step": times, "best_s_per_step": best,
              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
              "machine": f"{platform.processor() or platform.machine()}, torch threads 1"}
    for k, v in best.items():
        print(f"{k}: {v * 1e3:.1f} ms / step")
    output = args.output or script_output(__file__, f"pearl_learner_trained_vs_fresh_{run.name}.json")
    output.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
