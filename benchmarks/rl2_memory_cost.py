"""Cost of each RL² memory on tabular MDPs n=10: one learner update of 256 trials (25,600 env
steps; policy and value networks each with the memory) and the sampling rate of one worker's
256 slots, in one process with one torch thread. Also the update time against the number of
minibatches, and float32 against bfloat16 (`rl2.precision`) for each memory, side by side on the
same batch. Prints Markdown tables (docs/benchmarks-history.md, "RL² after issue 26").

    python benchmarks/rl2_memory_cost.py
    python benchmarks/rl2_memory_cost.py --precision   # only the float32 / bfloat16 table
"""

from __future__ import annotations

import argparse
import time

import torch

from metaray.learner import rl2
from metaray.tasks import make_family

torch.set_num_threads(1)
FAMILY = make_family("tabular-mdp", {"num_states": 10, "num_actions": 5, "episode_length": 10})


def measure(memory: str, hidden: int, minibatches: int = 4) -> tuple[float, float]:
    cfg = rl2.RL2Config(episodes_per_trial=10, hidden_size=hidden, memory=memory, context_length=100,
                        slots_per_worker=256, epochs=4, minibatches=minibatches)
    sampler = rl2.RL2Sampler(FAMILY, cfg, 256, 0)
    start = time.perf_counter()
    batch, _ = sampler.sample(256)
    sample_s = time.perf_counter() - start
    learner = rl2.RL2Learner(rl2.RL2Policy(sampler.spec, cfg), cfg, torch.device("cpu"), 0)
    start = time.perf_counter()
    learner.update([batch])
    return time.perf_counter() - start, 256 * 100 / sample_s


def precision_ratios(repeats: int = 2) -> None:
    """Update time in float32 and in bfloat16 (autocast), alternating on the same batch; the
    best of `repeats` each, so a busy machine slows both alike."""
    print("| memory (width) | update float32 | update bf16 | speed-up |\n|---|---|---|---|")
    for memory, hidden in [("gru", 128), ("gru", 256), ("lstm", 128), ("transformer", 128), ("snail", 64),
                           ("mann", 128)]:
        best = {}
        for _ in range(repeats):
            for precision in ("fp32", "bf16"):
                cfg = rl2.RL2Config(episodes_per_trial=10, hidden_size=hidden, memory=memory, context_length=100,
                                    slots_per_worker=256, epochs=4, minibatches=4, precision=precision)
                sampler = rl2.RL2Sampler(FAMILY, cfg, 256, 0)
                batch, _ = sampler.sample(256)
                learner = rl2.RL2Learner(rl2.RL2Policy(sampler.spec, cfg), cfg, torch.device("cpu"), 0)
                start = time.perf_counter()
                learner.update([batch])
                best[precision] = min(best.get(precision, float("inf")), time.perf_counter() - start)
        print(f"| {memory} ({hidden}) | {best['fp32']:.2f} s | {best['bf16']:.2f} s | "
              f"{best['fp32'] / best['bf16']:.2f}x |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", action="store_true", help="only the float32 / bfloat16 table")
    if parser.parse_args().precision:
        precision_ratios()
        return
    print("| memory (width) | update | sampling (env steps/s) |\n|---|---|---|")
    for memory, hidden in [("gru", 128), ("gru", 256), ("lstm", 128), ("transformer", 128), ("snail", 64),
                           ("mann", 128)]:
        update_s, rate = measure(memory, hidden)
        print(f"| {memory} ({hidden}) | {update_s:.1f} s | {rate / 1000:.0f}k |", flush=True)
    print("\n| minibatches per epoch (gru 128) | update |\n|---|---|")
    for mb in (1, 2, 4, 8):
        print(f"| {mb} | {measure('gru', 128, mb)[0]:.2f} s |", flush=True)
    print()
    precision_ratios()


if __name__ == "__main__":
    main()
