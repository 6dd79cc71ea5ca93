"""The wrong-demo control for any trained meta adversarial imitation run: its checkpoint evaluated
as `metaray eval` does (K support demos, reward-free adaptation, true return on the held-out
tasks of eval seed 12345), once with each task's own demos and once with another task's
(`wrong_demos: true`: task i adapts to task i+1's demos of the same meta-batch). If adaptation
uses the demos, the score must fall. `adversarial_point_nav.py` runs this control for its own
"ours" runs; this script covers the others (e.g. its meta-sgd runs).

    python benchmarks/adversarial_wrong_demos.py --family halfcheetah-vel --eval-tasks 20 RUN_DIR [RUN_DIR ...]

Prints one line per run and writes benchmarks/results/adversarial_wrong_demos/<date>-<commit>/adversarial_wrong_demos.json (or --output).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from metaray.bench.provenance import script_output

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import adversarial_point_nav as apn  # noqa: E402
from rl2_duan import machine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--family", choices=sorted(apn.SETUPS), default="point-nav")
    parser.add_argument("--eval-tasks", type=int, default=40)
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON path (default benchmarks/results/adversarial_wrong_demos/<date>-<commit>/adversarial_wrong_demos.json)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    apn.select(args.family)
    out = {"benchmark": "wrong-demo control: normalised score with each task's own demos vs another task's",
           "machine": machine(), "command": "python benchmarks/adversarial_wrong_demos.py " + " ".join(sys.argv[1:]),
           "family": args.family, "eval_tasks": args.eval_tasks, "eval_seed": apn.EVAL_SEED, "runs": {}}
    for run_dir in args.runs:
        if not (run_dir / "config.yaml").is_file():
            raise SystemExit(f"{run_dir}: not a run directory (no config.yaml)")
        config, agent = apn.load_agent(run_dir)
        row = {}
        for name, cfg in (("own", config), ("wrong", config.model_copy(update={"wrong_demos": True}))):
            rows = apn.inprocess_eval(agent, cfg, args.eval_tasks)
            row[name] = {"normalised_score": float(np.mean([r["normalised_score"] for r in rows])),
                         "mean_return": float(np.mean([r["return_post"] for r in rows])),
                         "return_pre": float(np.mean([r["return_pre"] for r in rows]))}
        out["runs"][str(run_dir)] = row
        print(f"{run_dir.name}: own demos {row['own']['normalised_score']:.3f} ({row['own']['mean_return']:.1f}), "
              f"wrong demos {row['wrong']['normalised_score']:.3f} ({row['wrong']['mean_return']:.1f})", flush=True)
    args.output = args.output or script_output(__file__, "adversarial_wrong_demos.json")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
