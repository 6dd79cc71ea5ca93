"""Private memory of the RL² learner's update phase, without Ray (is the soak's learner growth a
leak in `RL2Learner.update`?).

Builds the soak's config (configs/quickstart.yaml: bandit, 5 arms, 10 pulls, hidden 128, 1024
trials per update as 4 batches of 256) with torch.set_num_threads(1), samples a pool of real
trial batches once, then runs `--updates` RL2Learner.update() calls in one process and records
its private memory (/proc/self/smaps_rollup Private_Clean + Private_Dirty) after every
`--every`-th update. Each variant runs in a fresh subprocess:

- before: RL2Learner.update() alone;
- gc: before + gc.collect() after every update (Python reference cycles?);
- fixed: as shipped: the learner actor (metaray.learner.learner.Learner) calls glibc's
  malloc_trim(0) after every update (memory freed but kept by the allocator?);
- mmap_threshold: before + MALLOC_MMAP_THRESHOLD_=131072 (fixed threshold: large temporaries
  are mmapped and given back on free instead of staying in the heap).

Writes benchmarks/results/rl2_learner_memory/<date>-<commit>/rl2_learner_memory.json (start / end / min / max / slope per variant).

    python benchmarks/rl2_learner_memory.py --updates 300
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from metaray.bench.provenance import script_output

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
VARIANTS = {
    "before": {},
    "gc": {},
    "fixed": {},
    "mmap_threshold": {"MALLOC_MMAP_THRESHOLD_": "131072"},
}


def private_mib() -> float:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:])
    return (int(fields["Private_Clean"].split()[0]) + int(fields["Private_Dirty"].split()[0])) / 1024


def run_variant(variant: str, updates: int, every: int) -> dict:
    """One variant in this process; returns its series."""
    import torch

    sys.path.insert(0, str(ROOT))
    from metaray.learner import rl2
    from metaray.learner.learner import release_freed_memory
    from metaray.tasks import make_family

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = rl2.RL2Config(episodes_per_trial=10, hidden_size=128, slots_per_worker=256, trials_per_update=1024,
                           lr=1e-3, gamma=0.99, gae_lambda=0.3, entropy_coef=0.01)
    sampler = rl2.RL2Sampler(make_family("bandit", {"num_arms": 5}), config, config.slots_per_worker, seed=0)
    with torch.no_grad():
        pool = [sampler.sample(config.slots_per_worker)[0] for _ in range(16)]
    learner = rl2.RL2Learner(rl2.RL2Policy(sampler.spec, config), config, torch.device("cpu"), seed=0)
    del sampler
    gc.collect()
    series: list[tuple[int, float, float]] = []
    start = time.perf_counter()
    for i in range(updates):
        learner.update([pool[(4 * i + j) % len(pool)] for j in range(4)])
        if variant == "gc":
            gc.collect()
        elif variant == "fixed":
            release_freed_memory()
        if i % every == 0 or i == updates - 1:
            series.append((i + 1, round(time.perf_counter() - start, 1), round(private_mib(), 1)))
            print(variant, *series[-1], flush=True)
    return {"series": series}


def summarize(series: list[list[float]]) -> dict:
    n, t, y = (np.array(c, float) for c in zip(*series, strict=True))
    half = len(y) // 2
    return {
        "updates": int(n[-1]), "wall_s": float(t[-1]),
        "private_start_mib": float(y[0]), "private_end_mib": float(y[-1]),
        "private_min_mib": float(y.min()), "private_max_mib": float(y.max()),
        "private_min_after_warmup_mib": float(y[half:].min()), "private_max_after_warmup_mib": float(y[half:].max()),
        "slope_second_half_mib_per_1000_updates": round(float(np.polyfit(n[half:], y[half:], 1)[0]) * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=300)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_variant(args.child, args.updates, args.every)))
        return
    report: dict = {"config": "configs/quickstart.yaml (bandit, 5 arms, 10 pulls, hidden 128, 4x256 trials/update)",
                    "torch_threads": 1, "measured": "private memory after update(), no Ray", "variants": {}}
    for variant in args.variants:
        env = {**os.environ, **VARIANTS[variant]}
        cmd = [sys.executable, __file__, "--child", variant, "--updates", str(args.updates), "--every", str(args.every)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        series = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])["series"]
        report["variants"][variant] = {"env": VARIANTS[variant], **summarize(series), "series": series}
        print(variant, {k: v for k, v in report["variants"][variant].items() if k != "series"}, flush=True)
    report["date"] = time.strftime("%Y-%m-%d")
    script_output(__file__, "rl2_learner_memory.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
