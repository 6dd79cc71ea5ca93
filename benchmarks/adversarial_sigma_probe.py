"""How much of the adapted policy's score its noise costs: a trained meta adversarial imitation
checkpoint evaluated as `metaray eval` does (K support demos, reward-free adaptation, true return
on the held-out goals of eval seed 12345), with the adapted policies' log σ set to each given
value (post_std: learned with post_log_std fixed there) instead of the run's own.

    python benchmarks/adversarial_sigma_probe.py RUN_DIR [RUN_DIR ...] --log-stds -2 -3 -4 -20
    python benchmarks/adversarial_sigma_probe.py --family halfcheetah-vel --eval-tasks 20 RUN_DIR

Prints one line per run and log σ ("own": the run as trained) and writes
benchmarks/results/adversarial_sigma_probe/<date>-<commit>/adversarial_sigma_probe.json (or --output).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import adversarial_point_nav as apn  # noqa: E402
from rl2_duan import machine  # noqa: E402

from metaray.bench.provenance import script_output  # noqa: E402
from metaray.learner import adversarial as adv  # noqa: E402


def score(agent: adv.AdversarialAgent, config: adv.AdversarialConfig, num_tasks: int) -> dict[str, float]:
    rows = adv.evaluate(agent, apn.FAMILY, apn.test_tasks(num_tasks), config, apn.EVAL_SEED)
    return {"normalised_score": float(np.mean([r["normalised_score"] for r in rows])),
            "mean_return": float(np.mean([r["return_post"] for r in rows]))}


def with_post_log_std(agent: adv.AdversarialAgent, config: adv.AdversarialConfig,
                      value: float) -> tuple[adv.AdversarialAgent, adv.AdversarialConfig]:
    """The same weights, the adapted policies acting with log σ = value."""
    probe_config = config.model_copy(update={"post_std": "learned", "init_post_log_std": value})
    probe = adv.make_policy(*apn.SPACES, probe_config)
    weights = {k: v for k, v in agent.state_dict().items() if k != "generator.post_log_std"}
    missing, unexpected = probe.load_state_dict(weights, strict=False)
    assert missing == ["generator.post_log_std"] and not unexpected, (missing, unexpected)
    return probe, probe_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--family", choices=sorted(apn.SETUPS), default="point-nav")
    parser.add_argument("--log-stds", type=float, nargs="+", default=[-2.0, -3.0, -4.0, -20.0])
    parser.add_argument("--eval-tasks", type=int, default=40)
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON path (default benchmarks/results/adversarial_sigma_probe/<date>-<commit>/adversarial_sigma_probe.json)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    apn.select(args.family)
    out = {"benchmark": "adapted policy's score with its log sigma replaced", "machine": machine(),
           "command": "python benchmarks/adversarial_sigma_probe.py " + " ".join(sys.argv[1:]),
           "family": args.family, "eval_tasks": args.eval_tasks, "eval_seed": apn.EVAL_SEED, "runs": {}}
    for run in args.runs:
        config, agent = apn.load_agent(run)
        rows = {"own": score(agent, config, args.eval_tasks)}
        own_sigma = agent.generator.post_log_std if config.post_std == "learned" else agent.generator.log_std
        rows["own"]["log_std"] = own_sigma.detach().numpy().round(3).tolist()
        print(f"{run.name}: own log σ {rows['own']['log_std']}: score {rows['own']['normalised_score']:.3f}", flush=True)
        for value in args.log_stds:
            rows[str(value)] = score(*with_post_log_std(agent, config, value), args.eval_tasks)
            print(f"{run.name}: log σ {value}: score {rows[str(value)]['normalised_score']:.3f}", flush=True)
        out["runs"][run.name] = rows
    args.output = args.output or script_output(__file__, "adversarial_sigma_probe.json")
    args.output.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
