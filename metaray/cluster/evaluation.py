"""`metaray eval`: the trained policy on held-out tasks, in this process (no Ray needed)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metaray.cluster.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_newest_checkpoint,
    write_text_atomic,
)
from metaray.cluster.config import ConfigError, RunConfig, load_config
from metaray.core import AlgorithmError
from metaray.networks import weights_mismatch
from metaray.tasks import make_family, make_vector_env
from metaray.tasks.reference import has_expert, normalised_score, reference_returns

EVAL_OVERRIDABLE = re.compile(r"(task\.kwargs\.|eval\.|[a-z0-9_]+\.eval_)")  # which tasks and how they are acted on, not the model


def load_run(run_dir: Path, overrides: list[str] | None = None) -> tuple[RunConfig, Path]:
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"{run_dir} is not a metaray run directory (no config.yaml)")
    for text in overrides or []:
        if not EVAL_OVERRIDABLE.match(text):
            raise ConfigError(f"eval --set {text!r}: only task.kwargs.*, eval.* and an algorithm's eval_* "
                              "(e.g. rl2.eval_temperature) can change at evaluation")
    try:
        config = load_config(run_dir / "config.yaml")
    except ConfigError as err:
        raise CheckpointError(f"{run_dir}/config.yaml: {err}") from None
    if overrides:
        config = load_config(run_dir / "config.yaml", overrides)
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise CheckpointError(f"{run_dir} has no checkpoint yet")
    return config, ckpt


def cvar(values: list[float], share: float = 0.1) -> float:
    """Mean of the worst `share` of the values (at least one): CVaR at that level."""
    worst = np.sort(np.asarray(values, dtype=np.float64))
    return float(worst[: max(1, int(np.ceil(share * len(worst))))].mean())


NUMERIC_ROW_KEYS = ("return_post", "trial_return", "return_pre", "success_rate", "success_rate_pre", "success_last",
                    "normalised_score", "expert_return", "random_return")


def check_rows(rows: Any, tasks: list[Any], who: str) -> list[dict[str, Any]]:
    """An algorithm's (or baseline's) per-task evaluation rows, checked against the contract: one
    dict per task with its `task_id`, every row with the same headline return (`return_post` or
    `trial_return`), the summarised fields numbers. AlgorithmError (one line) naming the gap."""
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise AlgorithmError(f"{who} returned a {type(rows).__name__}, not a list with one dict per task")
    if len(rows) != len(tasks):
        raise AlgorithmError(f"{who} returned {len(rows)} rows for {len(tasks)} tasks (one per task)")
    if {r.get("task_id") for r in rows} != {t.task_id for t in tasks}:
        without = sum("task_id" not in r for r in rows)
        raise AlgorithmError(f"{who} returned rows whose task_id are not the tasks' ({without} of {len(rows)} have none): "
                             "each row carries its task's task_id")
    key = "return_post" if "return_post" in rows[0] else "trial_return"
    for row in rows:
        if key not in row:
            raise AlgorithmError(f"{who}: the row of task {row['task_id']} has no {key} (every row needs the same "
                                 "headline return: return_post, or trial_return)")
        for name in NUMERIC_ROW_KEYS:
            value = row.get(name, 0.0)
            if not isinstance(value, int | float | np.number | np.bool_):  # bools: success flags
                raise AlgorithmError(f"{who}: the row of task {row['task_id']} has {name} {value!r:.40}, not a number")
    return rows


def summarise(per_task: list[dict[str, Any]]) -> dict[str, Any]:
    """The result fields computed from per-task rows (the rows themselves last, as "tasks")."""
    # The headline return: post-adaptation where the algorithm adapts from episodes, else the whole trial.
    key = "return_post" if "return_post" in per_task[0] else "trial_return"
    returns = [r[key] for r in per_task]
    return {
        "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns)),
        "cvar10_return": cvar(returns, 0.1),  # mean over the worst 10% of tasks
        **({"return_post": float(np.mean(returns))} if key == "return_post" else {}),
        **({"return_pre": float(np.mean([r["return_pre"] for r in per_task]))} if "return_pre" in per_task[0] else {}),
        # Families that report info["success"] (Meta-World): share of episodes with a successful
        # step (post-adaptation episodes, or the trial's episodes), mean over tasks.
        **{key: float(np.nanmean([r[key] for r in per_task]))
           for key in ("success_rate", "success_rate_pre", "success_last") if key in per_task[0]},
        # Imitation algorithms: the expert's and a random policy's true returns on the same tasks,
        # and normalised_score = (R − R_random) / (R_expert − R_random), mean over tasks.
        **{key: float(np.nanmean([r[key] for r in per_task]))
           for key in ("normalised_score", "expert_return", "random_return") if key in per_task[0]},
        # Algorithms that run trials of several episodes (RL²): the mean return of each episode
        # of the trial, first to last, the within-trial learning curve.
        **({"episode_return_means": np.round(np.mean([r["episode_returns"] for r in per_task], axis=0), 4).tolist()}
           if "episode_returns" in per_task[0] else {}),
        "tasks": per_task,
    }


def evaluate_baseline(config_path: Path, name: str, overrides: list[str] | None = None, num_tasks: int | None = None,
                      seed: int | None = None, baseline_seed: int = 0, split: str = "test") -> dict[str, Any]:
    """`metaray baseline`: one of the algorithm's baselines (Algorithm.baselines: classical
    bandit/MDP algorithms for RL², BC and Meta-BC for adversarial imitation) on exactly the
    held-out tasks `metaray eval` draws for this config (family, eval.num_tasks, eval.seed);
    `baseline_seed` seeds the baseline's own randomness."""
    config = load_config(config_path, overrides)  # any key may change: there is no trained model to fit
    family = make_family(config.task.family, config.task.kwargs)
    algo_config = config.algo_config()
    available = config.algorithm().baselines(family, algo_config)
    if not available:
        raise ConfigError(f"algo {config.algo} has no baselines on family {config.task.family} "
                          "(classical ones for rl2 on bandit and tabular-mdp; bc and meta-bc for adversarial)")
    if name not in available:
        raise ConfigError(f"baseline {name!r} is not one of algo {config.algo} on {config.task.family} "
                          f"(available: {', '.join(available)})")
    num_tasks = num_tasks or config.eval.num_tasks
    seed = config.eval.seed if seed is None else seed
    tasks = family.sample(num_tasks, np.random.default_rng(seed), split)
    torch.set_num_threads(1)
    per_task = check_rows(available[name](family, tasks, algo_config, seed, baseline_seed), tasks,
                          f"baseline {name!r} of algo {config.algo}")
    return {"algo": f"baseline:{name}", "family": config.task.family, "split": split, "num_tasks": num_tasks,
            "seed": seed, "baseline_seed": baseline_seed, "iteration": 0, "task_kwargs": config.task.kwargs,
            **summarise(per_task)}


def evaluate_weights(config: RunConfig, tensors: dict[str, Any], split: str = "test", num_tasks: int | None = None,
                     seed: int | None = None, where: str = "the checkpoint") -> dict[str, Any]:
    """The policy with these weights (a state's `policy/…` tensors) on the held-out tasks
    `metaray eval` draws (family, eval.num_tasks, eval.seed): the result fields without the
    run's own (checkpoint, iteration). One torch thread while it runs, the caller's after."""
    algorithm = config.algorithm()
    algo_config = config.algo_config()
    family = make_family(config.task.family, config.task.kwargs)
    num_tasks = num_tasks or config.eval.num_tasks
    seed = config.eval.seed if seed is None else seed
    tasks = family.sample(num_tasks, np.random.default_rng(seed), split)
    probe = make_vector_env(family, tasks[:1], seed=seed)
    policy = algorithm.make_policy(probe.single_observation_space, probe.single_action_space, algo_config)
    probe.close()
    weights = {k.split("/", 1)[1]: np.array(v) for k, v in tensors.items() if k.startswith("policy/")}
    mismatch = weights_mismatch(policy, weights)
    if mismatch is not None:
        raise CheckpointError(f"{where}: weights do not fit the run's policy ({mismatch})")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        per_task = check_rows(algorithm.evaluate(policy, family, tasks, algo_config, seed), tasks,
                              f"algorithm {config.algo!r}: evaluate()")
    finally:
        torch.set_num_threads(threads)
    if config.eval.normalise and "normalised_score" not in per_task[0]:  # imitation scores its own
        per_task = normalised(per_task, family, tasks, seed)
    settings = {k: v for k, v in algo_config.model_dump().items() if k.startswith("eval_")}  # how it acted
    return {"algo": config.algo, "family": config.task.family, "split": split, "num_tasks": num_tasks, "seed": seed,
            "task_kwargs": config.task.kwargs, **({"eval_settings": settings} if settings else {}), **summarise(per_task)}


REFERENCE_EPISODES = 10  # per task, for each end of the normalised score
_references: dict[tuple[str, tuple[int, ...], int], dict[int, dict[str, float]]] = {}  # the same tasks every periodic eval


def normalised(rows: list[dict[str, Any]], family: Any, tasks: list[Any], seed: int) -> list[dict[str, Any]]:
    """`rows` with each task's expert and random returns and normalised score (eval.normalise),
    the two ends measured once per process for a given family, task set and seed."""
    key = (repr(family), tuple(t.task_id for t in tasks), seed)
    if key not in _references:
        if not has_expert(family):
            raise ConfigError(f"eval.normalise needs the family's expert: task family {family.name!r} has no expert(task)")
        _references[key] = reference_returns(family, tasks, REFERENCE_EPISODES, seed)
    out = []
    for row in rows:
        ends = _references[key][row["task_id"]]
        value = row["return_post" if "return_post" in row else "trial_return"]
        out.append({**row, **ends, "normalised_score": normalised_score(value, ends["expert_return"], ends["random_return"])})
    return out


def evaluate_run(run_dir: Path, split: str = "test", num_tasks: int | None = None, seed: int | None = None,
                 overrides: list[str] | None = None, output: Path | None = None) -> dict[str, Any]:
    """Evaluate the newest checkpoint; writes RUN_DIR/eval.json (or `output`). `overrides` may
    change task.kwargs.* and eval.* (e.g. evaluate on an out-of-distribution task range)."""
    config, _ = load_run(run_dir, overrides)
    found = load_newest_checkpoint(run_dir)  # a damaged newest one is skipped (and named), not fatal
    if found.path is None:
        raise CheckpointError(f"{run_dir}: no checkpoint loads ({found.skipped[0]})")
    ckpt, tensors, state = found.path, found.tensors, found.state
    evaluated = evaluate_weights(config, tensors, split, num_tasks, seed, where=str(ckpt))
    tasks = evaluated.pop("tasks")
    result = {
        **evaluated,
        "checkpoint": ckpt.name,
        "iteration": state["iteration"],
        **({"skipped_checkpoints": found.skipped} if found.skipped else {}),
        "tasks": tasks,
    }
    write_text_atomic(Path(output) if output is not None else Path(run_dir) / "eval.json", json.dumps(result, indent=1))
    return result


HELD_OUT_FIELDS = ("mean_return", "return_pre", "success_rate", "success_last", "normalised_score")  # progress: heldout_<name>


class PeriodicEvaluation:
    """Observer: every `eval.every` iterations (and at the last) the learner's current weights
    on the held-out tasks, as `metaray eval` would score that iteration's checkpoint. Writes
    RUN_DIR/evals/iter-NNNNNN.json and adds `heldout_<field>` and `heldout_eval_s` to the
    iteration's record, before the progress file, metrics and TensorBoard see it (so it runs
    first). The evaluation draws from its own seeds; the training's random state is put back
    as it was, so a run with it takes the same steps as one without."""

    def __init__(self, config: RunConfig, run_dir: Path, get_weights: Any, every: int, last: int):
        self.config, self.dir = config, Path(run_dir) / "evals"
        self.get_weights, self.every, self.last = get_weights, every, last

    def observe(self, record: dict[str, Any]) -> None:
        iteration = record["iteration"]
        if not (iteration % self.every == 0 or iteration >= self.last):
            return
        start = time.perf_counter()
        state = np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            result = evaluate_weights(self.config, self.get_weights(), where=f"iteration {iteration}")
        np.random.set_state(state)
        result = {**result, "iteration": iteration, "env_steps_total": record.get("env_steps_total"),
                  "wall_time_s": record.get("wall_time_s")}
        write_text_atomic(self.dir / f"iter-{iteration:06d}.json", json.dumps(result, indent=1))
        record.update({f"heldout_{k}": result[k] for k in HELD_OUT_FIELDS if k in result})
        record["heldout_eval_s"] = round(time.perf_counter() - start, 3)

    def close(self) -> None:
        pass
