"""MAML-TRPO learner step on halfcheetah-vel with the KL Hessian on a subsample of tasks
(`maml.cg_subsample`), side by side in one process on the same meta-batches.

For each meta-batch (real episodes of configs/maml-trpo-halfcheetah-vel.yaml's policy, sampled
here; `--batches` of them, the policy moved by one full update between batches so they are
not all at initialisation) and each subsample fraction: the learner step's wall time (median of
`--repeats`), and what the step does: the cosine between its θ change and the full-batch step's,
the surrogate improvement and KL it reaches, the line-search steps. The line search runs on every
task for all fractions, so a poor direction shows as a smaller improvement, never as a KL breach.
Writes benchmarks/results/maml_cg_subsample/<date>-<commit>/maml_cg_subsample.json.

    python benchmarks/maml_cg_subsample.py --batches 3 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.numpy import load_file

from metaray.bench.provenance import script_output

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from rl2_duan import commit, machine  # noqa: E402

from metaray.learner import maml  # noqa: E402
from metaray.tasks import make_family  # noqa: E402

FRACTIONS = (1.0, 0.5, 0.25, 0.1)


def step(policy: torch.nn.Module, config: maml.MAMLConfig, results: list, seed: int) -> tuple[float, dict, torch.Tensor]:
    learner = maml.MAMLLearner(copy.deepcopy(policy), config, torch.device("cpu"), seed)
    start = time.perf_counter()
    stats = learner.update(results)
    elapsed = time.perf_counter() - start
    delta = maml.flat(p.detach() for p in learner.policy.parameters()) - maml.flat(p.detach() for p in policy.parameters())
    return elapsed, stats, delta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--config", default="configs/maml-trpo-halfcheetah-vel.yaml")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="start from this checkpoint's policy (a run's checkpoints/iter-NNNNNN) instead of initialisation")
    parser.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS), help="subsample fractions; 1.0 first")
    args = parser.parse_args()
    if args.fractions[0] != 1.0:
        parser.error("--fractions: the first must be 1.0 (the full step the others are compared with)")
    torch.set_num_threads(args.threads)
    raw = yaml.safe_load((ROOT / args.config).read_text())
    config = maml.MAMLConfig(**raw["maml"])
    family = make_family(raw["task"]["family"], raw["task"].get("kwargs", {}))
    sampler = maml.MAMLSampler(family, config, 1, seed=0)
    policy = maml.make_policy(sampler.env.single_observation_space, sampler.env.single_action_space, config)
    if args.checkpoint is not None:
        tensors = load_file(str(args.checkpoint / "learner.safetensors"))
        policy.load_state_dict({k.split("/", 1)[1]: torch.from_numpy(v) for k, v in tensors.items() if k.startswith("policy/")})
    rows = []
    for batch in range(args.batches):
        sampler.set_weights(batch, maml.get_weights(policy))
        t0 = time.perf_counter()
        results = sampler.collect(family.sample(config.meta_batch_size, np.random.default_rng(100 + batch)), batch)
        print(f"batch {batch}: sampled {sum(r.env_steps for r in results):,} env steps in {time.perf_counter() - t0:.0f} s",
              flush=True)
        full_delta = None
        for fraction in args.fractions:
            cfg = config.model_copy(update={"cg_subsample": fraction})
            times, out = [], None
            for _ in range(args.repeats):
                elapsed, stats, delta = step(policy, cfg, results, seed=batch)
                times.append(elapsed)
                out = (stats, delta)
            stats, delta = out
            if fraction == 1.0:
                full_delta = delta
            cosine = float(delta @ full_delta / (delta.norm() * full_delta.norm()).clamp_min(1e-30))
            row = {"batch": batch, "cg_subsample": fraction, "update_s": round(statistics.median(times), 3),
                   "update_s_all": [round(t, 3) for t in times], "cosine_to_full_step": round(cosine, 4),
                   "surrogate_improvement": stats["meta_loss_before"] - stats["meta_loss"], "kl": stats["kl"],
                   "ls_steps": stats["ls_steps"], "step_accepted": stats["step_accepted"]}
            rows.append(row)
            print(json.dumps(row), flush=True)
        # the next batch from the policy one full update further
        mover = maml.MAMLLearner(copy.deepcopy(policy), config, torch.device("cpu"), batch)
        mover.update(results)
        policy = mover.policy
    summary = {}
    for fraction in args.fractions:
        sel = [r for r in rows if r["cg_subsample"] == fraction]
        base = [r for r in rows if r["cg_subsample"] == 1.0]
        summary[str(fraction)] = {
            "speedup_vs_full": round(statistics.mean(b["update_s"] / r["update_s"] for r, b in zip(sel, base, strict=True)), 2),
            "mean_cosine_to_full_step": round(statistics.mean(r["cosine_to_full_step"] for r in sel), 4),
            "mean_improvement_ratio": round(statistics.mean(r["surrogate_improvement"] / b["surrogate_improvement"]
                                                            for r, b in zip(sel, base, strict=True)), 3),
        }
    out = {"date": time.strftime("%Y-%m-%d"), "commit": commit(), "machine": machine(), "threads": args.threads,
           "config": args.config, "checkpoint": str(args.checkpoint) if args.checkpoint else None, "batches": args.batches, "rows": rows, "summary": summary}
    name = f"maml_cg_subsample_{args.checkpoint.parent.parent.name}_{args.checkpoint.name}.json" if args.checkpoint else "maml_cg_subsample.json"
    path = script_output(__file__, name)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
