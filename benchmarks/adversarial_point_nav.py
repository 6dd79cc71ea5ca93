"""Meta adversarial imitation on point-nav (or halfcheetah-vel) against its baselines, K expert demos per task.

One command trains and evaluates every method on the same held-out test tasks (the test split
drawn with eval seed 12345: the same goals, the same K support demos per goal, the same
per-task R_expert and R_random) and reports the normalised score (R − R_random)/(R_expert −
R_random), mean over tasks, then mean ± std over seeds:

- ours (meta adversarial imitation): `metaray train configs/adversarial-point-nav.yaml --set adversarial.num_demos=K`
  (local Ray), then `metaray eval`: return_post after adaptation from the K support demos and
  episodes_per_task reward-free episodes per inner step;
- meta-init: the same evaluation's return_pre (meta-parameters, zero inner steps);
- wrong demos (control): the same checkpoint, evaluated with adversarial.wrong_demos=true (each
  test task adapts on another test task's demos); the score must fall;
- adapt-only-G / adapt-only-D (K = --ablation-k only): trained with adapt_discriminator=false /
  adapt_generator=false, evaluated as ours (the run's own config);
- meta-sgd (K = --ablation-k only): ours with inner_optimizer=meta-sgd (Meta-SGD: the generator's
  inner step size learned per parameter entry), evaluated as ours;
- query-demos (K = --ablation-k only): ours with query_demo_advantage=1 (the query demos join
  the outer objective as advantage-1 episodes, a Meta-BC term), evaluated as ours;
- adversarial imitation ("airl-scratch") from scratch: the untrained agent (torch.manual_seed(seed), the learner's initialisation)
  through the same adaptation (same demos, episodes and inner steps);
- BC from scratch: per test task a fresh 64x64 tanh Gaussian MLP fitted by maximum likelihood on
  the K support demos (full-batch Adam), rolled out for episodes_per_task episodes;
- Meta-BC: MAML on the BC loss (inner: SGD on the support demos' negative log-likelihood, outer:
  Adam on the query demos' NLL at the adapted parameters, second order, train tasks), then
  adapted on the K support demos of each test task and rolled out;
- MAML-RL (upper bound: the true reward): configs/maml-trpo-point-nav.yaml for the same
  iterations, its return_post on the same test tasks (independent of K).

Writes adversarial_<family>.json and .png under benchmarks/results/adversarial_point_nav/<date>-<commit>/
(--quick: under benchmarks/results/tmp/), prints a table.

    python benchmarks/adversarial_point_nav.py                      # 3 seeds, K 1 4 8, 200 iterations, 40 tasks
    python benchmarks/adversarial_point_nav.py --iterations 300 --seeds 0 1 2 3 --skip maml-rl
    python benchmarks/adversarial_point_nav.py --quick              # validation, about 2 minutes
    python benchmarks/adversarial_point_nav.py --family halfcheetah-vel --ks 4 --seeds 0 --iterations 100
    python benchmarks/adversarial_point_nav.py --family halfcheetah-vel --merge s0.json s1.json s2.json  # one table
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))
from rl2_duan import machine, metaray  # noqa: E402

from metaray.bench.provenance import script_output  # noqa: E402
from metaray.cluster.checkpoint import latest_checkpoint, load_checkpoint, read_progress  # noqa: E402
from metaray.cluster.config import load_config  # noqa: E402
from metaray.learner import adversarial as adv  # noqa: E402
from metaray.learner.adversarial import baselines as adv_baselines  # noqa: E402
from metaray.tasks import make_family, make_vector_env  # noqa: E402

EVAL_SEED = 12345  # eval.seed of both configs: which test tasks, their demos and rollout noise
TARGET_K, TARGET_SCORE = 4, 0.8

METHODS = {  # name -> (label, what it is)
    "ours": ("meta adversarial imitation (ours)", "meta adversarial imitation, return after adaptation (K demos + reward-free episodes)"),
    "meta-init": ("meta-init, 0 steps", "the same run's meta-parameters without adaptation (return_pre)"),
    "wrong-demos": ("wrong demos", "the same checkpoint adapted on another test task's demos (control)"),
    "adapt-only-g": ("adapt only G", "trained and evaluated with adapt_discriminator=false"),
    "adapt-only-d": ("adapt only D", "trained and evaluated with adapt_generator=false"),
    "meta-sgd": ("ours + Meta-SGD step sizes", "trained and evaluated with inner_optimizer=meta-sgd (one learned α per generator parameter entry)"),
    "query-demos": ("ours + query-demo BC term", "trained and evaluated with query_demo_advantage=1 (the query demos join the outer objective)"),
    "airl-scratch": ("adversarial imitation from scratch", "the untrained agent through the same adaptation (same demos, episodes, steps)"),
    "bc": ("BC from scratch", "per task a fresh Gaussian MLP fitted by max. likelihood on the K demos"),
    "meta-bc": ("Meta-BC", "MAML on the BC negative log-likelihood, adapted on the K demos"),
    "maml-rl": ("MAML-RL (true reward)", "MAML-TRPO with the task reward, same iterations (upper bound, K-independent)"),
    "maml-rl-sigma": ("MAML-RL (true reward), ours' init", "as maml-rl with the adversarial config's init_log_std and init_output_scale (and post_std / init_post_log_std)"),
}
ADV_RUN_METHODS = ("ours", "meta-init", "wrong-demos")  # share one training run per (K, seed)
# --family -> (adversarial config, MAML-RL config, --set for MAML-RL, run-dir prefix, output stem)
SETUPS = {
    "point-nav": ("configs/adversarial-point-nav.yaml", "configs/maml-trpo-point-nav.yaml", [], "apn",
                  "adversarial_point_nav"),
    # MAML-RL sized like the adversarial config (20 tasks x 10 episodes, 64x64 tanh), not Finn et al.'s
    "halfcheetah-vel": ("configs/adversarial-halfcheetah-vel.yaml", "configs/maml-trpo-halfcheetah-vel.yaml",
                        ["maml.meta_batch_size=20", "maml.episodes_per_task=10", "maml.hidden_sizes=[64,64]",
                         "maml.activation=tanh"], "ahc", "adversarial_halfcheetah_vel"),
}


def select(family: str) -> None:
    """Point the module at one task family's configs (the functions below read these globals)."""
    global ADV_CONFIG, MAML_CONFIG, MAML_SETS, PREFIX, STEM, BASE, FAMILY, SPACES
    ADV_CONFIG, MAML_CONFIG, MAML_SETS, PREFIX, STEM = SETUPS[family]
    BASE = load_config(ROOT / ADV_CONFIG)
    FAMILY = make_family(BASE.task.family, BASE.task.kwargs)
    probe = make_vector_env(FAMILY, FAMILY.sample(1, np.random.default_rng(0)), seed=0)
    SPACES = (probe.single_observation_space, probe.single_action_space)
    probe.close()


select("point-nav")


def log(msg: str, start: float = time.perf_counter()) -> None:
    print(f"[{time.perf_counter() - start:7.1f}s] {msg}", flush=True)


# --------------------------------------------------------------------------------------------
# Training and the CLI evaluation


def train(config: str, run_dir: Path, iterations: int, seed: int, sets: list[str], serial: bool, reuse: bool) -> dict:
    """`metaray train` (local Ray unless serial); with `reuse`, a finished run of the same length is kept."""
    rows = read_progress(run_dir)
    if reuse and rows and rows[-1]["iteration"] == iterations and latest_checkpoint(run_dir) is not None:
        log(f"reusing {run_dir.name}")
        wall, command = None, None
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
        args = ["train", config, "--run-dir", str(run_dir), "--iterations", str(iterations), "--set", f"seed={seed}",
                "--set", "metrics.tensorboard=false", *[a for s in sets for a in ("--set", s)]]
        if serial:
            args.append("--serial")
        command = "metaray " + " ".join(str(a) for a in args)
        start = time.perf_counter()
        out = metaray(*args)
        wall = round(time.perf_counter() - start, 1)
        if out.returncode != 0:
            raise SystemExit(f"metaray {' '.join(args)} failed:\n{out.stderr.strip()[-2000:]}")
        rows = read_progress(run_dir)
        log(f"trained {run_dir.name}: {wall} s")
    times = np.diff([r["wall_time_s"] for r in rows])
    return {
        "run_dir": str(run_dir.relative_to(ROOT)) if run_dir.is_relative_to(ROOT) else str(run_dir),
        "config": config, "seed": seed, "sets": sets, "command": command, "iterations": len(rows), "train_command_s": wall,
        "iteration_s_median": round(float(np.median(times)), 3) if len(times) else None,
        "learner_step_s_median": round(float(np.median([r["learner_step_s"] for r in rows])), 3),
        "sampling_s_median": round(float(np.median([r["sampling_s"] for r in rows])), 3),
        "train_return_pre_last": rows[-1]["return_pre"], "train_return_post_last": rows[-1]["return_post"],
    }


def cli_eval(run_dir: Path, num_tasks: int) -> dict:
    """`metaray eval` on the test split with the fixed eval seed; the whole result (per task)."""
    output = run_dir / f"eval-test{num_tasks}.json"
    out = metaray("eval", str(run_dir), "--json", "--num-tasks", str(num_tasks), "--seed", str(EVAL_SEED),
                  "--output", str(output))
    if out.returncode != 0:
        raise SystemExit(f"metaray eval {run_dir} failed:\n{out.stderr.strip()[-2000:]}")
    return json.loads(output.read_text())


def load_agent(run_dir: Path) -> tuple[adv.AdversarialConfig, adv.AdversarialAgent]:
    """The run's config and newest weights, loaded as metaray.cluster.evaluation.evaluate_run does."""
    config = load_config(run_dir / "config.yaml")
    tensors, _ = load_checkpoint(latest_checkpoint(run_dir))
    algo_config = config.algo_config()
    agent = adv.make_policy(*SPACES, algo_config)
    agent.load_state_dict({k.split("/", 1)[1]: torch.from_numpy(np.array(v)) for k, v in tensors.items()
                           if k.startswith("policy/")})
    return algo_config, agent


def fresh_agent(config: adv.AdversarialConfig, seed: int) -> adv.AdversarialAgent:
    """The agent a run with this seed starts from (the learner seeds torch, then builds it)."""
    torch.manual_seed(seed)
    return adv.make_policy(*SPACES, config)


def test_tasks(num_tasks: int) -> list:
    return FAMILY.sample(num_tasks, np.random.default_rng(EVAL_SEED), "test")


def inprocess_eval(agent: adv.AdversarialAgent, config: adv.AdversarialConfig, num_tasks: int) -> list[dict]:
    """adversarial.evaluate on the same test tasks with the same seed as `metaray eval`."""
    torch.set_num_threads(1)  # as evaluate_run
    return adv.evaluate(agent, FAMILY, test_tasks(num_tasks), config, EVAL_SEED)


# --------------------------------------------------------------------------------------------
# Behaviour cloning and Meta-BC: the library's baselines (metaray/learner/adversarial/baselines.py,
# also `metaray baseline CONFIG bc|meta-bc`) on this script's test tasks and K


def bc_from_scratch(config: adv.AdversarialConfig, k: int, seed: int, num_tasks: int, steps: int, lr: float) -> dict:
    """Per test task a fresh policy fitted to the task's K support demos, then rolled out."""
    torch.set_num_threads(2)
    tasks = test_tasks(num_tasks)
    torch.manual_seed(seed)
    rows = adv_baselines.bc_from_scratch(FAMILY, tasks, config.model_copy(update={"num_demos": k}), EVAL_SEED, steps, lr)
    return {"returns": [r["return_post"] for r in rows], "task_ids": [r["task_id"] for r in rows]}


def meta_bc(config: adv.AdversarialConfig, k: int, seed: int, num_tasks: int, iterations: int, lr: float,
            inner_lr: float, inner_steps: int) -> dict:
    """MAML on the BC loss over train tasks, then adaptation on each test task's K support demos."""
    torch.set_num_threads(2)
    torch.manual_seed(seed)
    start = time.perf_counter()
    rows = adv_baselines.meta_bc(FAMILY, test_tasks(num_tasks), config.model_copy(update={"num_demos": k}), EVAL_SEED,
                                 train_seed=seed, iterations=iterations, lr=lr, inner_lr=inner_lr, inner_steps=inner_steps)
    return {"returns": [r["return_post"] for r in rows], "task_ids": [r["task_id"] for r in rows],
            "train_s": round(time.perf_counter() - start, 1)}


# --------------------------------------------------------------------------------------------
# Scoring


def score(returns: list[float], task_ids: list[int], ref: dict[int, tuple[float, float]]) -> float:
    """Mean over tasks of (R − R_random)/(R_expert − R_random) with the reference's per-task values."""
    scores = []
    for r, tid in zip(returns, task_ids, strict=True):
        expert, rand = ref[tid]
        scores.append((r - rand) / (expert - rand))
    return float(np.mean(scores))


def summarise(per_seed: dict[int, dict]) -> dict:
    """Mean and std over seeds (ddof 1) of the per-seed task means: normalised score and return."""
    def stats(key: str) -> tuple[float, float]:
        values = [v[key] for v in per_seed.values()]
        return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    (mean, std), (ret, ret_std) = stats("normalised_score"), stats("mean_return")
    return {"mean": mean, "std": std, "return_mean": ret, "return_std": ret_std, "n_seeds": len(per_seed),
            "seeds": per_seed}


def table(methods: dict, ks: list[int], key: str = "mean", digits: int = 3) -> str:
    """Rows: methods; columns: K; cells: mean ± std over seeds (number of seeds)."""
    width = max(len(m["label"]) for m in methods.values()) + 2
    head = f"{'method':<{width}}" + "".join(f"{'K=' + str(k):>22}" for k in ks)
    lines = [head, "-" * len(head)]
    std = {"mean": "std", "return_mean": "return_std"}[key]
    for m in methods.values():
        cells = []
        for k in ks:
            cell = m["ks"].get(str(k)) or m["ks"].get("any")
            cells.append(f"{cell[key]:.{digits}f} ± {cell[std]:.{digits}f} ({cell['n_seeds']})" if cell else "—")
        lines.append(f"{m['label']:<{width}}" + "".join(f"{c:>22}" for c in cells))
    return "\n".join(lines)


def plot(methods: dict, ks: list[int], path: Path, title: str) -> None:
    if len(ks) == 1:
        plot_bars(methods, ks[0], path, title)
        return
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    n = len(methods)
    line_styles = iter(["--", "-.", (0, (5, 1, 1, 1, 1, 1))])
    for i, (name, m) in enumerate(methods.items()):
        if "any" in m["ks"]:
            cell = m["ks"]["any"]
            ax.axhline(cell["mean"], color="k", ls=next(line_styles), lw=1, label=f"{m['label']}")
            ax.axhspan(cell["mean"] - cell["std"], cell["mean"] + cell["std"], color="k", alpha=0.08)
            continue
        xs = [k for k in ks if str(k) in m["ks"]]
        offset = (i - n / 2) * 0.012  # spread the error bars a little
        xpos = [x * (1 + offset) for x in xs]
        ax.errorbar(xpos, [m["ks"][str(k)]["mean"] for k in xs], yerr=[m["ks"][str(k)]["std"] for k in xs],
                    marker="o", capsize=3, lw=2.2 if name == "ours" else 1.2, ls="-" if len(xs) > 1 else "none",
                    label=m["label"])
    ax.axhline(TARGET_SCORE, color="tab:red", ls=":", lw=1, label=f"target {TARGET_SCORE} at K={TARGET_K}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("K (expert demos per test task)")
    ax.set_ylabel("normalised score (R − R_rand)/(R_exp − R_rand)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_bars(methods: dict, k: int, path: Path, title: str) -> None:
    """One K: a bar per method (mean over seeds, std as the error bar, seeds as dots)."""
    rows = [(m["label"], m["ks"].get(str(k)) or m["ks"].get("any")) for m in methods.values()]
    rows = [(label, cell) for label, cell in rows if cell]
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(rows) + 1.4))
    y = np.arange(len(rows))[::-1]
    ax.barh(y, [c["mean"] for _, c in rows], xerr=[c["std"] for _, c in rows], capsize=3,
            color=["tab:blue" if i == 0 else "tab:gray" for i in range(len(rows))], alpha=0.8)
    for yi, (_, cell) in zip(y, rows, strict=True):
        ax.plot([v["normalised_score"] for v in cell["seeds"].values()], [yi] * cell["n_seeds"], "k.", ms=4)
        right = max([cell["mean"] + cell["std"], 0, *(v["normalised_score"] for v in cell["seeds"].values())])
        ax.text(right + 0.02, yi, f"{cell['mean']:.3f}", va="center", fontsize=8)
    ax.axvline(TARGET_SCORE, color="tab:red", ls=":", lw=1, label=f"target {TARGET_SCORE}")
    ax.axvline(0, color="k", lw=0.5)
    ax.set_xlim(right=max(ax.get_xlim()[1], 1.0) + 0.08)
    ax.set_yticks(y, [label for label, _ in rows], fontsize=8)
    ax.set_xlabel(f"normalised score at K={k} (R − R_rand)/(R_exp − R_rand)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_curves(runs: list[dict], path: Path, title: str) -> bool:
    """Training curves: the true return after adaptation (recorded by the workers, never seen by the
    adversarial learner) per iteration, 10-iteration running mean, mean over seeds with the
    seeds' range shaded. False when no run has its progress.jsonl here."""
    groups: dict[str, list[np.ndarray]] = {}
    for run in runs:
        rows = read_progress(ROOT / run["run_dir"])
        if rows and "return_post" in rows[0]:
            label = METHODS[run["method"]][0] + (f", K={run['K']}" if "K" in run else "")
            groups.setdefault(label, []).append(np.array([r["return_post"] for r in rows], dtype=float))
    if not groups:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for label, curves in groups.items():
        n = min(len(c) for c in curves)
        window = min(10, n)
        smooth = np.stack([np.convolve(c[:n], np.ones(window) / window, mode="valid") for c in curves])
        x = np.arange(window, n + 1)
        ax.plot(x, smooth.mean(0), label=f"{label} ({len(curves)} seeds)")
        ax.fill_between(x, smooth.min(0), smooth.max(0), alpha=0.15)
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("true return after adaptation (train tasks)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


# --------------------------------------------------------------------------------------------


def load_merge(args: argparse.Namespace) -> dict:
    """Per-seed cells, runs and per-task references of earlier outputs, for one combined report.

    Sets args' ks, seeds, iterations, eval_tasks and skip from the files; a (method, K, seed) cell
    in two files, or files of different iterations, test tasks or family, is an error."""
    raw: dict[str, dict[str, dict[int, dict]]] = {}
    runs, adv_evals, sources = [], [], []
    settings: dict[str, Any] = {}
    # bc / meta_bc settings count only in the files that ran those methods
    own = {"bc": "bc", "meta_bc": "meta-bc"}
    for path in args.merge:
        try:
            data = json.loads(path.read_text())
            these = {key: data["settings"][key] for key in ("iterations", "eval_tasks", "eval_seed", "adversarial_config",
                                                            "adversarial")}
            these |= {key: data["settings"][key] for key, method in own.items() if method in data["methods"]}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"--merge {path}: not a benchmark output ({e.__class__.__name__}: {e})") from None
        if these["adversarial_config"] != ADV_CONFIG:
            raise SystemExit(f"--merge {path}: {these['adversarial_config']} is not --family {args.family}'s {ADV_CONFIG}")
        differ = sorted(key for key in these.keys() & settings.keys() if these[key] != settings[key])
        if differ:
            raise SystemExit(f"--merge {path}: its settings {differ} differ from the files before it")
        settings |= these
        for method, m in data["methods"].items():
            for k, cell in m["ks"].items():
                for seed, v in cell["seeds"].items():
                    if int(seed) in raw.setdefault(method, {}).setdefault(k, {}):
                        raise SystemExit(f"--merge: {method} K={k} seed {seed} is in more than one file")
                    raw[method][k][int(seed)] = {key: value for key, value in v.items()
                                                 if key not in ("normalised_score", "mean_return")}
        runs += data["runs"]
        ref = re.search(r"K=(\d+), seed (\S+)", data["checks"]["reference"])
        adv_evals.append({"K": int(ref[1]) if ref else TARGET_K, "seed": f"{ref[2] if ref else '?'} of {path.name}", "tasks": [
            {"task_id": t["task_id"], "expert_return": t["expert_return"], "random_return": t["random_return"]}
            for t in data["test_tasks"]]})
        sources.append({"path": str(path), "command": data["command"], "date": data["date"], "wall_s": data["wall_s"]})
    args.iterations, args.eval_tasks = settings["iterations"], settings["eval_tasks"]
    # Fields added since a file was made count as their default (the behaviour before they existed).
    now = json.loads(json.dumps(BASE.algo_config().model_dump(exclude={"num_demos"})))
    defaults = json.loads(json.dumps(adv.AdversarialConfig().model_dump()))
    differ = sorted(key for key, value in now.items() if settings["adversarial"].get(key, defaults[key]) != value)
    if differ:
        raise SystemExit(f"--merge: the files were made with another {ADV_CONFIG} than the one here (differ: {differ})")
    if "bc" in settings:
        args.bc_steps, args.bc_lr = settings["bc"]["steps"], settings["bc"]["lr"]
    if "meta_bc" in settings:
        meta_bc = settings["meta_bc"]
        args.metabc_iterations, args.metabc_lr = meta_bc["iterations"], meta_bc["lr"]
        args.metabc_inner_lr, args.metabc_inner_steps = meta_bc["inner_lr"], meta_bc["inner_steps"]
    args.ks = sorted({int(k) for per_k in raw.values() for k in per_k if k != "any"}) or [TARGET_K]
    args.seeds = sorted({s for per_k in raw.values() for per_s in per_k.values() for s in per_s})
    args.skip = [m for m in METHODS if m not in raw]
    return {"raw": raw, "runs": runs, "adv_evals": adv_evals, "sources": sources}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--family", choices=sorted(SETUPS), default="point-nav",
                        help="task family: its adversarial and MAML-RL configs (default point-nav)")
    parser.add_argument("--ks", type=int, nargs="+", help="K values (default 1 4 8)")
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (default 0 1 2)")
    parser.add_argument("--iterations", type=int, help="meta-iterations of every training run (default 200: about 75 min in all on 2 cores)")
    parser.add_argument("--eval-tasks", type=int, help="held-out test tasks (default 40)")
    parser.add_argument("--skip", nargs="+", default=[], choices=list(METHODS), help="methods to leave out")
    parser.add_argument("--ablation-k", type=int, default=TARGET_K, help="K of the adapt-only-G/D ablations (default 4)")
    parser.add_argument("--bc-steps", type=int, help="BC from scratch: Adam steps (default 2000)")
    parser.add_argument("--bc-lr", type=float, default=3e-3, help="BC from scratch: Adam learning rate")
    parser.add_argument("--metabc-iterations", type=int, help="Meta-BC: outer Adam steps (default 2000)")
    parser.add_argument("--metabc-lr", type=float, default=3e-3, help="Meta-BC: outer Adam learning rate")
    parser.add_argument("--metabc-inner-lr", type=float, default=1e-3, help="Meta-BC: inner SGD step size")
    parser.add_argument("--metabc-inner-steps", type=int, default=1, help="Meta-BC: inner SGD steps")
    parser.add_argument("--serial", action="store_true", help="train without Ray (metaray train --serial)")
    parser.add_argument("--reuse", action="store_true", help="keep finished training runs of the same length")
    parser.add_argument("--quick", action="store_true", help="validation: 2 iterations, seed 0, K 1 4, 5 tasks, outputs in results/tmp")
    parser.add_argument("--output", type=Path, help="JSON path (default results/adversarial_point_nav/<date>-<commit>/adversarial_<family>.json; --quick: results/tmp/...)")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                        help="train and evaluate nothing: combine these outputs of the same family, iterations and test "
                             "tasks (e.g. one per seed, run side by side) into one table, JSON and plot")
    args = parser.parse_args()
    select(args.family)
    merged = load_merge(args) if args.merge else None
    quick = {"ks": [1, 4], "seeds": [0], "iterations": 2, "eval_tasks": 5, "bc_steps": 50, "metabc_iterations": 10}
    full = {"ks": [1, 4, 8], "seeds": [0, 1, 2], "iterations": 200, "eval_tasks": 40, "bc_steps": 2000,
            "metabc_iterations": 2000}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    run_root = RESULTS / ("tmp" if args.quick else "runs")
    output = args.output or (RESULTS / "tmp" / f"{STEM}_quick.json" if args.quick else None)  # None: the dated folder
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
    todo = [m for m in METHODS if m not in args.skip] if merged is None else [m for m in METHODS if m in merged["raw"]]
    base = BASE.algo_config()
    maml_run = load_config(ROOT / MAML_CONFIG, MAML_SETS)
    if (maml_run.task, maml_run.eval.seed, BASE.eval.seed) != (BASE.task, EVAL_SEED, EVAL_SEED):
        raise SystemExit(f"{MAML_CONFIG} and {ADV_CONFIG} must share the task and eval.seed {EVAL_SEED}")
    tag = f"it{args.iterations}"
    log(f"methods {todo}, K {args.ks}, seeds {args.seeds}, {args.iterations} iterations, {args.eval_tasks} test tasks")
    wall_start = time.perf_counter()

    runs: list[dict] = []
    raw: dict[str, dict[str, dict[int, dict]]] = {m: {} for m in todo}  # method -> K -> seed -> returns, task_ids
    adv_evals: list[dict] = []  # (K, seed, per-task) of every adversarial evaluation: the reference's source

    def keep(method: str, k: str, seed: int, returns: list[float], task_ids: list[int], **extra: Any) -> None:
        raw[method].setdefault(k, {})[seed] = {"returns": [float(r) for r in returns], "task_ids": list(task_ids), **extra}

    if merged is not None:
        raw, runs, adv_evals = merged["raw"], merged["runs"], merged["adv_evals"]
    for seed in args.seeds if merged is None else []:
        for k in args.ks:
            kk = str(k)
            if any(m in todo for m in ADV_RUN_METHODS):
                run_dir = run_root / f"{PREFIX}-adv-K{k}-s{seed}-{tag}"
                runs.append({"method": "ours", "K": k, **train(ADV_CONFIG, run_dir, args.iterations, seed,
                                                                [f"adversarial.num_demos={k}"], args.serial, args.reuse)})
                ev = cli_eval(run_dir, args.eval_tasks)
                per_task = ev["tasks"]
                adv_evals.append({"K": k, "seed": seed, "tasks": per_task})
                ids = [t["task_id"] for t in per_task]
                if "ours" in todo:
                    keep("ours", kk, seed, [t["return_post"] for t in per_task], ids, cli_normalised_score=ev["normalised_score"])
                if "meta-init" in todo:
                    keep("meta-init", kk, seed, [t["return_pre"] for t in per_task], ids)
                if "wrong-demos" in todo:
                    config, agent = load_agent(run_dir)
                    wrong = inprocess_eval(agent, config.model_copy(update={"wrong_demos": True}), args.eval_tasks)
                    # evaluate() rotates demos within each meta-batch: a batch of one keeps its own
                    mb = config.meta_batch_size
                    own = sum(1 for i in range(len(wrong)) if min(mb, len(wrong) - (i // mb) * mb) == 1)
                    pre_diff = max(abs(a["return_pre"] - b["return_pre"]) for a, b in zip(wrong, per_task, strict=True))
                    keep("wrong-demos", kk, seed, [t["return_post"] for t in wrong], [t["task_id"] for t in wrong],
                         tasks_with_own_demos=own, return_pre_max_abs_diff_vs_cli_eval=pre_diff)
                log(f"K={k} seed {seed}: ours {ev['normalised_score']:.3f} (metaray eval), pre {ev['return_pre']:.2f}, "
                    f"post {ev['return_post']:.2f}")
            if "airl-scratch" in todo:
                config = base.model_copy(update={"num_demos": k})
                res = inprocess_eval(fresh_agent(config, seed), config, args.eval_tasks)
                keep("airl-scratch", kk, seed, [t["return_post"] for t in res], [t["task_id"] for t in res],
                     return_pre=[t["return_pre"] for t in res])
                adv_evals.append({"K": k, "seed": seed, "tasks": res})
            if "bc" in todo:
                res = bc_from_scratch(base, k, seed, args.eval_tasks, args.bc_steps, args.bc_lr)
                keep("bc", kk, seed, res.pop("returns"), res.pop("task_ids"), **res)
                log(f"K={k} seed {seed}: BC done")
            if "meta-bc" in todo:
                res = meta_bc(base, k, seed, args.eval_tasks, args.metabc_iterations, args.metabc_lr,
                              args.metabc_inner_lr, args.metabc_inner_steps)
                keep("meta-bc", kk, seed, res.pop("returns"), res.pop("task_ids"), **res)
                log(f"K={k} seed {seed}: Meta-BC {res['train_s']} s")
        for method, flag in (("adapt-only-g", "adversarial.adapt_discriminator=false"),
                             ("adapt-only-d", "adversarial.adapt_generator=false"),
                             ("meta-sgd", "adversarial.inner_optimizer=meta-sgd"),
                             ("query-demos", "adversarial.query_demo_advantage=1")):
            if method in todo:
                run_dir = run_root / f"{PREFIX}-{method}-K{args.ablation_k}-s{seed}-{tag}"
                runs.append({"method": method, "K": args.ablation_k, **train(
                    ADV_CONFIG, run_dir, args.iterations, seed, [f"adversarial.num_demos={args.ablation_k}", flag],
                    args.serial, args.reuse)})
                ev = cli_eval(run_dir, args.eval_tasks)
                keep(method, str(args.ablation_k), seed, [t["return_post"] for t in ev["tasks"]],
                     [t["task_id"] for t in ev["tasks"]], return_pre=[t["return_pre"] for t in ev["tasks"]])
                adv_evals.append({"K": args.ablation_k, "seed": seed, "tasks": ev["tasks"]})
        same_sigma = [f"maml.init_log_std={base.init_log_std}", f"maml.init_output_scale={base.init_output_scale}"]
        if base.post_std == "learned":
            same_sigma += ["maml.post_std=learned", f"maml.init_post_log_std={base.init_post_log_std}"]
        for method, sets in (("maml-rl", MAML_SETS), ("maml-rl-sigma", [*MAML_SETS, *same_sigma])):
            if method in todo:
                run_dir = run_root / f"{PREFIX}-{method}-s{seed}-{tag}"
                runs.append({"method": method, **train(MAML_CONFIG, run_dir, args.iterations, seed, sets, args.serial, args.reuse)})
                ev = cli_eval(run_dir, args.eval_tasks)
                keep(method, "any", seed, [t["return_post"] for t in ev["tasks"]], [t["task_id"] for t in ev["tasks"]],
                     return_pre=[t["return_pre"] for t in ev["tasks"]])

    # The reference: per test task R_expert and R_random from the adversarial evaluation at K =
    # TARGET_K (else the first K), first seed; every method and K is scored against it.
    tasks = test_tasks(args.eval_tasks)
    ids = [t.task_id for t in tasks]
    if not adv_evals:  # every adversarial method skipped: compute the same fields directly
        config = base.model_copy(update={"num_demos": TARGET_K})
        _, true_rewards = adv.expert_demos(FAMILY, tasks, config.num_demos + config.num_query_demos, config.demo_noise,
                                           EVAL_SEED)
        rand = adv.random_policy_returns(FAMILY, tasks, config.episodes_per_task, EVAL_SEED)
        adv_evals.append({"K": TARGET_K, "seed": None, "tasks": [
            {"task_id": t.task_id, "expert_return": float(e), "random_return": rand[t.task_id]}
            for t, e in zip(tasks, true_rewards.sum(-1).mean(1), strict=True)]})
    ref_eval = next((e for e in adv_evals if e["K"] == TARGET_K), adv_evals[0])
    ref = {t["task_id"]: (t["expert_return"], t["random_return"]) for t in ref_eval["tasks"]}
    checks: dict[str, Any] = {"reference": f"adversarial evaluation at K={ref_eval['K']}, seed {ref_eval['seed']}"}
    mismatched = [(m, k, s) for m, per_k in raw.items() for k, per_s in per_k.items() for s, v in per_s.items()
                  if v["task_ids"] != ids]
    if mismatched:
        raise SystemExit(f"test tasks differ from the reference's for {mismatched}")
    checks["same_test_task_ids"] = True
    diffs = {"expert_return": 0.0, "random_return": 0.0}
    for e in adv_evals:
        for t in e["tasks"]:
            for key in diffs:
                diffs[key] = max(diffs[key], abs(t[key] - ref[t["task_id"]][0 if key == "expert_return" else 1]))
    checks["max_abs_diff_vs_reference_over_adversarial_evals"] = diffs  # K changes the demo count: small
    if "wrong-demos" in raw:  # the in-process evaluation reproduces `metaray eval` (same pre-update episodes)
        checks["wrong_demos_return_pre_max_abs_diff_vs_metaray_eval"] = max(
            v["return_pre_max_abs_diff_vs_cli_eval"] for per_s in raw["wrong-demos"].values() for v in per_s.values())
    checks["expert_return_mean"] = float(np.mean([v[0] for v in ref.values()]))
    checks["random_return_mean"] = float(np.mean([v[1] for v in ref.values()]))

    methods: dict[str, dict] = {}
    for m in todo:
        per_k = {}
        for k, per_seed in raw[m].items():
            cells = {}
            for s, v in per_seed.items():
                cells[s] = {"normalised_score": score(v["returns"], v["task_ids"], ref),
                            "mean_return": float(np.mean(v["returns"])), **v}
            per_k[k] = summarise(cells)
        methods[m] = {"label": METHODS[m][0], "description": METHODS[m][1], "ks": per_k}

    target = None
    if "ours" in methods and str(TARGET_K) in methods["ours"]["ks"]:
        ours = methods["ours"]["ks"][str(TARGET_K)]["mean"]
        target = {"K": TARGET_K, "ours": ours, "score_at_least": TARGET_SCORE, "met_score": ours >= TARGET_SCORE}
        for m in ("bc", "meta-bc"):
            if m in methods and str(TARGET_K) in methods[m]["ks"]:
                target[f"above_{m}"] = ours > methods[m]["ks"][str(TARGET_K)]["mean"]
        if "wrong-demos" in methods:
            target["wrong_demos_falls"] = methods["wrong-demos"]["ks"][str(TARGET_K)]["mean"] < ours

    result = {
        "benchmark": f"meta adversarial imitation on {FAMILY.name} vs baselines (normalised score, held-out test tasks)",
        "date": time.strftime("%Y-%m-%d"), "machine": machine(), "command": " ".join(["python", *sys.argv]),
        "settings": {"ks": args.ks, "seeds": args.seeds, "iterations": args.iterations, "eval_tasks": args.eval_tasks,
                     "eval_seed": EVAL_SEED, "ablation_k": args.ablation_k, "skip": args.skip, "quick": args.quick,
                     "merged_from": merged and merged["sources"],
                     "training": "metaray train --serial" if args.serial else "metaray train (local Ray, 2 workers)",
                     "adversarial_config": ADV_CONFIG, "maml_config": MAML_CONFIG, "maml_sets": MAML_SETS,
                     "eval_command": f"metaray eval RUN_DIR --json --num-tasks {args.eval_tasks} --seed {EVAL_SEED} "
                                     f"--output RUN_DIR/eval-test{args.eval_tasks}.json",
                     "in_process_eval": f"metaray.learner.adversarial.evaluate(agent, family, test tasks, config, {EVAL_SEED}): "
                                        "wrong-demos (checkpoint, run config + wrong_demos=true), airl-scratch "
                                        "(torch.manual_seed(seed) init, base config + num_demos=K)",
                     "reference": "R_expert, R_random per test task from the adversarial evaluation at K=4 (else the "
                                  "first K), first seed; every method and K is normalised with them",
                     "adversarial": base.model_dump(exclude={"num_demos"}),
                     "bc": {"steps": args.bc_steps, "lr": args.bc_lr, "optimiser": "Adam, full batch",
                            "policy": f"GaussianMLPPolicy {base.hidden_sizes} {base.activation}",
                            "rollout_episodes": base.episodes_per_task},
                     "meta_bc": {"iterations": args.metabc_iterations, "lr": args.metabc_lr, "inner_lr": args.metabc_inner_lr,
                                 "inner_steps": args.metabc_inner_steps, "meta_batch_size": base.meta_batch_size,
                                 "query_demos": base.num_query_demos, "second_order": True}},
        "test_tasks": [{"task_id": t.task_id, "goal": list(t.params), "expert_return": ref[t.task_id][0],
                        "random_return": ref[t.task_id][1]} for t in tasks],
        "checks": checks, "target": target, "methods": methods, "runs": runs,
        "wall_s": round(time.perf_counter() - wall_start, 1),
    }
    output = output or script_output(__file__, f"{STEM}.json")
    output.write_text(json.dumps(result, indent=1) + "\n")
    title = (f"{FAMILY.name}, {args.eval_tasks} test tasks, {len(args.seeds)} seed(s), {args.iterations} iterations"
             f"{' (quick)' if args.quick else ''}")
    plot(methods, args.ks, output.with_suffix(".png"), title)
    curves = output.with_name(output.stem + "_curves.png")
    if not plot_curves(runs, curves, title):
        curves = None
    print(f"normalised score (mean over {args.eval_tasks} test tasks; mean ± std over seeds):")
    print(table(methods, args.ks))
    print(f"\nmean true return (expert {checks['expert_return_mean']:.2f}, random {checks['random_return_mean']:.2f}):")
    print(table(methods, args.ks, "return_mean", 2))
    print(json.dumps({"target": target, "checks": checks, "wall_s": result["wall_s"]}))
    log(f"wrote {output} and {output.with_suffix('.png').name}" + (f" and {curves.name}" if curves else ""))


if __name__ == "__main__":
    main()
