"""The task scheduler's checkpointed state and bookkeeping time over a long run of a continuous
family (every draw a new task), this commit against an earlier one side by side in one process:
its size after 100 ... N meta-iterations and the time its next_batch/balance/observe took.

    python benchmarks/scheduler_state.py --old a377f8d --iterations 1000
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import tempfile
import time
from pathlib import Path

from metaray.bench.provenance import script_output
from metaray.cluster import scheduler as current
from metaray.tasks import make_family


def scheduler_module_at(commit: str):
    """metaray/cluster/scheduler.py as it was at `commit`, imported under another name."""
    source = subprocess.run(["git", "show", f"{commit}:metaray/cluster/scheduler.py"], capture_output=True, text=True,
                            check=True, cwd=Path(__file__).resolve().parents[1]).stdout
    path = Path(tempfile.mkdtemp()) / f"scheduler_{commit}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure(module, family, iterations: int, meta_batch: int, workers: int) -> dict:
    """A uniform scheduler through `iterations` meta-iterations as the runner drives it."""
    scheduler = module.TaskScheduler(family, seed=0)
    sizes, spent = {}, 0.0
    for it in range(1, iterations + 1):
        start = time.perf_counter()
        batch = scheduler.next_batch(meta_batch)
        scheduler.balance(batch, workers)
        for task in batch:
            scheduler.observe(task.task_id, return_pre=-200.0, return_post=-190.0, env_steps=8000)
        spent += time.perf_counter() - start
        if it % 100 == 0 or it == iterations:
            # as the checkpoint writes it (state.json, indent=1)
            sizes[it] = len(json.dumps({"scheduler": scheduler.get_state()}, indent=1))
    return {"state_bytes": sizes, "entries": len(scheduler.stats), "seconds": spent}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", default="a377f8d", help="the commit to compare with")
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--family", default="halfcheetah-vel")
    parser.add_argument("--meta-batch", type=int, default=40)
    args = parser.parse_args()
    family = make_family(args.family, {})
    result = {"family": args.family, "meta_batch": args.meta_batch, "iterations": args.iterations,
              args.old: measure(scheduler_module_at(args.old), family, args.iterations, args.meta_batch, 2),
              "now": measure(current, family, args.iterations, args.meta_batch, 2)}
    for name in (args.old, "now"):
        r = result[name]
        print(f"{name}: state {r['state_bytes'][args.iterations] / 1e6:.2f} MB after {args.iterations} iterations "
              f"({r['entries']} tasks' statistics), scheduler time {r['seconds']:.1f} s")
    output = script_output(__file__, f"scheduler_state_{args.family}.json")
    output.write_text(json.dumps(result, indent=1))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
