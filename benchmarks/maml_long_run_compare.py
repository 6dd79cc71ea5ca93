"""Post-adaptation return over a long run: metaray's 500-iteration MAML-TRPO point-nav run beside
pytorch-maml-rl's, same config and seed, run on the same machine (not in one command: the peer
alone takes about 50 minutes for 500 iterations).

Inputs: metaray's curve from the newest benchmarks/results/maml_run/*/maml_runs.json holding it (`python benchmarks/maml_run.py
--iterations 500`), the peer's per-iteration JSON lines from benchmarks/peer/run_pytorch_maml_rl.py
(`--iterations 500 --seed 0 --num-workers 2`, OMP_NUM_THREADS=1). Writes
benchmarks/results/maml_long_run_compare/<date>-<commit>/maml_vs_pytorch_maml_rl_it500_seed0.json and .png with window means.

    python benchmarks/maml_long_run_compare.py --peer benchmarks/results/tmp/pytorch-maml-rl-it500-seed0.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from metaray.bench.provenance import script_output

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WINDOWS = ((16, 20), (51, 100), (96, 100), (201, 300), (401, 500), (496, 500))


def window_means(pre: list[float], post: list[float]) -> dict[str, dict[str, float]]:
    out = {}
    for a, b in WINDOWS:
        if len(post) >= b:
            out[f"{a}-{b}"] = {"pre": round(statistics.mean(pre[a - 1 : b]), 2), "post": round(statistics.mean(post[a - 1 : b]), 2)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    stores = sorted(RESULTS.glob("maml_run/*/maml_runs.json"), key=lambda p: p.parent.name[:10], reverse=True)
    ours = next((r for store in stores for r in json.loads(store.read_text())
                 if r["config"] == "configs/maml-trpo-point-nav.yaml" and r["iterations"] == 500 and r["seed"] == args.seed),
                None)
    if ours is None:
        raise SystemExit(f"no 500-iteration point-nav run of seed {args.seed} in {RESULTS}/maml_run/*/maml_runs.json: "
                         f"run python benchmarks/maml_run.py --iterations 500 --seed {args.seed} first")
    curve = {"metaray": ([c["return_pre"] for c in ours["curve"]], [c["return_post"] for c in ours["curve"]])}
    rows = [json.loads(line) for line in args.peer.read_text().splitlines()]
    rows = [r for r in rows if "iteration" in r and "return_after" in r]
    curve["pytorch-maml-rl"] = ([r["return_before"] for r in rows], [r["return_after"] for r in rows])
    report = {
        "seed": args.seed, "iterations": {k: len(v[1]) for k, v in curve.items()},
        "windows": {k: window_means(*v) for k, v in curve.items()},
        "metaray_run": {"date": ours["date"], "meta_iteration_s_median": ours["meta_iteration_s_median"]},
        "pytorch_maml_rl_iteration_s_median": round(statistics.median(r["wall_s"] for r in rows), 3),
        "curves": {k: {"pre": v[0], "post": v[1]} for k, v in curve.items()},
        "date": time.strftime("%Y-%m-%d"),
    }
    name = f"maml_vs_pytorch_maml_rl_it500_seed{args.seed}"
    output = script_output(__file__, f"{name}.json")
    output.write_text(json.dumps(report, indent=1) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2), constrained_layout=True)
    for (label, (pre, post)), color in zip(curve.items(), ("tab:blue", "tab:orange"), strict=True):
        ax.plot(range(1, len(post) + 1), post, color=color, label=f"{label} post-adaptation")
        ax.plot(range(1, len(pre) + 1), pre, color=color, alpha=0.35, label=f"{label} pre-adaptation")
    ax.set(xlabel="meta-iteration", ylabel="mean return (meta-batch tasks)", ylim=(-80, 0),
           title=f"MAML-TRPO 2D navigation, seed {args.seed}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(output.with_suffix(".png"), dpi=100)
    print(json.dumps({k: v for k, v in report.items() if k != "curves"}, indent=1))


if __name__ == "__main__":
    main()
