"""Design variants of meta adversarial imitation, trained in one process (no Ray): quick
side-by-side runs of settings before a full `adversarial_point_nav.py` run.

    python benchmarks/adversarial_variants.py NAME [--iterations 60] [--config C] [key=value ...]

key=value pairs override the config's `adversarial` section (default
`configs/adversarial-point-nav.yaml`; the task family comes from the config; values
parsed as JSON where they parse). Every 30 iterations the agent is evaluated as `metaray eval`
does (adversarial.evaluate: K support demos, reward-free adaptation, true return) on 20 (--eval-tasks)
test tasks of eval seed 12345; prints one line per 5 iterations and writes
benchmarks/results/tmp/adversarial_variant_NAME.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from metaray.cluster.config import load_config
from metaray.learner import adversarial as adv
from metaray.tasks import make_family

ROOT = Path(__file__).resolve().parents[1]


def parse(value: str):
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("overrides", nargs="*", help="adversarial config key=value")
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--eval-every", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "adversarial-point-nav.yaml")
    parser.add_argument("--eval-tasks", type=int, default=20)
    parser.add_argument("--final-eval-inner-steps", type=int, nargs="*", default=[],
                        help="after training, also evaluate with these numbers of inner steps (test-time steps beyond training's)")
    args = parser.parse_intermixed_args()
    torch.set_num_threads(1)
    base = load_config(args.config)
    changes = dict(kv.split("=", 1) for kv in args.overrides)
    config = adv.AdversarialConfig(**{**base.adversarial.model_dump(), **{k: parse(v) for k, v in changes.items()}})
    family = make_family(base.task.family, base.task.kwargs)
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    sampler = adv.AdversarialSampler(family, config, config.meta_batch_size * config.episodes_per_task, args.seed)
    agent = adv.make_policy(sampler.env.single_observation_space, sampler.env.single_action_space, config)
    learner = adv.AdversarialLearner(agent, config, torch.device("cpu"), args.seed)
    test_tasks = family.sample(args.eval_tasks, np.random.default_rng(12345), split="test")
    log: list[dict] = []
    start = time.perf_counter()
    for it in range(args.iterations):
        sampler.set_weights(it, {k: v.detach().numpy().copy() for k, v in agent.state_dict().items()})
        results = sampler.collect(family.sample(config.meta_batch_size, rng), it)
        pre, post = (float(np.mean([r.metrics[k] for r in results])) for k in ("return_pre", "return_post"))
        stats = learner.update([r.for_learner() for r in results])  # the true reward's metrics removed, as the runtime does
        row = {"iteration": it + 1, "return_pre": pre, "return_post": post, "disc_loss": stats["disc_loss"],
               "log_std": agent.generator.log_std.detach().mean().item(), "wall_s": time.perf_counter() - start}
        row.update({k: v for k, v in stats.items() if k.startswith("inner_lr_") or k == "post_log_std"})  # Meta-SGD's α, the adapted σ
        if (it + 1) % args.eval_every == 0:
            rows = adv.evaluate(agent, family, test_tasks, config, 12345)
            row.update({f"eval_{k}": float(np.mean([r[k] for r in rows])) for k in ("return_pre", "return_post", "normalised_score")})
        log.append(row)
        if it % 5 == 4 or "eval_normalised_score" in row:
            print(f"[{args.name}] " + " ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
    final = {}
    for k in args.final_eval_inner_steps:  # the trained agent adapted with k inner steps at test time
        rows = adv.evaluate(agent, family, test_tasks, config.model_copy(update={"num_inner_steps": k}), 12345)
        final[k] = {key: float(np.mean([r[key] for r in rows])) for key in ("return_post", "normalised_score")}
        print(f"[{args.name}] test-time inner steps {k}: score {final[k]['normalised_score']:.3f} return {final[k]['return_post']:.2f}", flush=True)
    out = ROOT / "benchmarks" / "results" / "tmp" / f"adversarial_variant_{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"name": args.name, "config": str(args.config.relative_to(ROOT)) if args.config.is_relative_to(ROOT) else str(args.config),
              "overrides": changes, "seed": args.seed, "log": log, "test_time_inner_steps": final}
    learned = getattr(agent.generator, "inner_optimizer", None)
    sizes = None if learned is None else learned.step_sizes()
    if sizes is not None:  # Meta-SGD: where the learned step sizes ended, per parameter
        record["inner_lr"] = {k: {"mean": a.mean().item(), "min": a.min().item(), "max": a.max().item()}
                              for k, a in sizes.items()}
        print(f"[{args.name}] α: " + json.dumps({k: round(v["mean"], 4) for k, v in record["inner_lr"].items()}))
    out.write_text(json.dumps(record, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
