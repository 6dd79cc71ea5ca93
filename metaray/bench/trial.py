"""One bench trial: a normal `metaray train --serial` run in its own run directory, then
`metaray eval` on the suite's held-out tasks, then one result file in the bench schema.

Runs as a Ray Tune function trainable. Training and evaluation are subprocesses running the same
commands a user would type (their own one-line errors, one torch thread each, nothing of Tune's
worker process leaking into them). A trial is idempotent: a finished one (its result file
exists) reports its result again; an interrupted one continues its run with `--resume`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from metaray.bench.provenance import SOURCE, config_hash, git_commit, machine, packages
from metaray.bench.suite import Suite, bench_overrides
from metaray.cluster.checkpoint import latest_checkpoint, read_progress
from metaray.cluster.run_lock import busy_message, wait_unlocked

SCHEMA_VERSION = 1
_POLL_S = 5.0
_STOP_WAIT_S = 300.0  # a checkpoint of a large replay buffer takes a while


class TrialFailed(RuntimeError):
    """Training or evaluation of a trial exited non-zero; the message is its last error line."""


def trial_paths(bench_dir: Path, results_dir: Path, run: str, seed: int) -> dict[str, Path]:
    key = f"{run}-seed{seed}"
    return {"run_dir": bench_dir / key, "log": bench_dir / f"{key}.log", "commits": bench_dir / f"{key}.commits.json",
            "result": results_dir / f"{key}.json"}


def per_task_key(metric: str, task: dict[str, Any]) -> str:
    """The per-task field behind an eval metric (mean_return: post-adaptation where the algorithm
    adapts, else the trial's return; the others have the same name per task)."""
    if metric == "mean_return":
        return "return_post" if "return_post" in task else "trial_return"
    return metric


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def benchmark_of(config: dict[str, Any]) -> str:
    """What makes two results comparable: the family, its kwargs and the trial length (bandits
    n=10 and n=100 share the family and its tasks, not the benchmark)."""
    task = config.get("task", {})
    kwargs = ",".join(f"{k}={v}" for k, v in sorted((task.get("kwargs") or {}).items()))
    episodes = (config.get(config.get("algo", ""), {}) or {}).get("episodes_per_trial")
    return f"{task.get('family')}({kwargs})" + (f" x{episodes} episodes" if episodes else "")


def task_params(config: dict[str, Any]) -> dict[str, Any] | None:
    """Every parameter of the config's task family, its defaults included (a Meta-World
    result records its reward version, which moves its numbers, even when the config left it
    out); None where the family cannot be built here or is not a dataclass."""
    import dataclasses

    from metaray.tasks import TaskFamilyError, make_family

    task = config.get("task", {})
    try:
        family = make_family(task.get("family"), task.get("kwargs") or {})
    except (TaskFamilyError, ImportError):  # e.g. its optional package missing here: the kwargs are in `config`
        return None
    if not dataclasses.is_dataclass(family):
        return None
    return {f.name: getattr(family, f.name) for f in dataclasses.fields(family)
            if f.init and isinstance(getattr(family, f.name), (bool, int, float, str, type(None)))}


def _headline(row: dict[str, Any]) -> float | None:
    for key in ("return_post", "trial_return", "mean_return"):
        if isinstance(row.get(key), (int, float)):
            return float(row[key])
    return None


def _metaray(*args: str) -> list[str]:
    return [sys.executable, "-m", "metaray.cli", *args]


class MachineLoad:
    """The machine's 1-minute load average, sampled while a trial trains: what else had the cores.
    A wall time means little without it (three trials on two cores, a test run beside them)."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.sample()

    def sample(self) -> None:
        with contextlib.suppress(OSError):  # not available on this platform
            self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict[str, Any]:
        if not self.samples:
            return {}
        return {"load_1m": {"mean": round(sum(self.samples) / len(self.samples), 2), "max": round(max(self.samples), 2),
                            "samples": len(self.samples), "cores": os.cpu_count()}}


def _wait_reporting(proc: subprocess.Popen, run_dir: Path, report: Callable[[dict[str, Any]], None],
                    load: MachineLoad | None = None) -> int:
    """Wait for the training to end, reporting each new progress row (and the latest held-out
    return of a run with `eval.every`, which the progress view keeps showing), sampling the
    machine's load into `load`; its exit code."""
    load = load if load is not None else MachineLoad()
    seen, heldout = 0, None
    while True:
        try:
            return proc.wait(timeout=_POLL_S)
        except subprocess.TimeoutExpired:
            load.sample()
        rows = read_progress(run_dir)
        if len(rows) > seen:
            heldout = next((r["heldout_mean_return"] for r in reversed(rows[seen:]) if "heldout_mean_return" in r),
                           heldout)
            seen = len(rows)
            last = rows[-1]
            report({"iteration": last.get("iteration"), "env_steps": last.get("env_steps_total"),
                    "train_return": _headline(last), **({"heldout_return": heldout} if heldout is not None else {})})


def _stop_child(proc: subprocess.Popen) -> None:
    """A still-running training gets SIGTERM (`metaray train` stops at a clean point and writes a
    checkpoint) and is waited for while this process is alive: once the trial's actor is gone,
    Ray kills its orphaned children outright, which used to cut the checkpoint off and lose
    the iterations since the last periodic one."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=_STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


_AUTOGROUP = Path("/proc/self/autogroup")


def autogroup_nice() -> int | None:
    """This process's scheduling-group niceness (Linux with autogroup scheduling: the kernel shares
    the cores between sessions first, so `nice` inside a session does not make it yield to other
    sessions, the group's own niceness does); None where there is none."""
    try:
        return int(_AUTOGROUP.read_text().split("nice")[-1])
    except (OSError, ValueError):
        return None


def start_detached(cmd: list[str], **popen: Any) -> subprocess.Popen:
    """Start `cmd` in its own session (out of the reach of Ray's clean-up of a dead worker's
    process group; the bench's local Ray instance does not kill a worker's children on exit
    either, runner.py), with SIGTERM when this process dies (Tune kills a stopped trial's actor
    outright; `metaray train` takes SIGTERM as Ctrl-C and stops at a clean point, writing a
    checkpoint), and at this session's scheduling niceness: a new session is a new scheduling group
    at niceness 0, so without it `nice metaray bench` (or `echo 19 > /proc/self/autogroup`) let
    every training take the machine's cores from everything else."""
    nice = autogroup_nice()

    def in_child() -> None:
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # not Linux: the child outlives a killed trial
            pass
        for _ in range(10 if nice else 0):  # (raising a group's priority needs privileges: then it stays at 0)
            try:
                _AUTOGROUP.write_text(str(nice))
                break
            except OSError as err:  # unprivileged writes are rate-limited to one per 100 ms, machine-wide
                if err.errno != errno.EAGAIN:
                    break
                time.sleep(0.05)

    return subprocess.Popen(cmd, start_new_session=True, preexec_fn=in_child if sys.platform == "linux" else None,
                            **popen)


def _shown(path: str) -> str:
    """A config path as results record it: relative to the checkout when it lies inside it."""
    try:
        return str(Path(path).resolve().relative_to(SOURCE))
    except ValueError:
        return path


def _thin(rows: list[dict[str, Any]], points: int = 200) -> list[list[float]]:
    """The learning curve as [env steps, wall seconds, headline return], at most `points` rows."""
    step = max(1, len(rows) // points)
    keep = rows[::step] + ([rows[-1]] if rows and (len(rows) - 1) % step else [])
    return [[r.get("env_steps_total", 0), round(r.get("wall_time_s", 0.0), 1), _headline(r)] for r in keep]


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_trial(suite: Suite, run_name: str, seed: int, bench_dir: Path, results_dir: Path,
              report: Any = None) -> dict[str, Any]:
    """Train (or continue), evaluate, write the result; `report(metrics)` gets progress."""
    report = report or (lambda metrics: None)
    paths = trial_paths(bench_dir, results_dir, run_name, seed)
    if paths["result"].is_file():
        result = json.loads(paths["result"].read_text())
        report({"score": result["score"], "env_steps": result["env_steps"], "done_before": True})
        return result
    run = suite.run(run_name)
    overrides = bench_overrides(suite, run, seed)
    run_dir = paths["run_dir"]
    # a training stopped a moment ago (the bench's Ctrl-C, then --resume at once) may still be
    # writing its checkpoint: wait for it rather than fail this trial as a second trainer
    if run_dir.is_dir() and not wait_unlocked(run_dir, _STOP_WAIT_S):
        raise TrialFailed(f"{run_name} seed {seed}: {busy_message(run_dir)}")
    resuming = (run_dir / "config.yaml").is_file()
    if resuming and latest_checkpoint(run_dir) is None:
        # interrupted before its first checkpoint: nothing to continue from, start it again
        shutil.rmtree(run_dir)
        resuming = False
    code = git_commit()
    # the code of every start that trained part of this run (a fresh start forgets discarded ones)
    commits = json.loads(paths["commits"].read_text()) if resuming and paths["commits"].is_file() else []
    commits.append({**code, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    _write_atomic(paths["commits"], json.dumps(commits, indent=1))

    if run.baseline is not None:
        return _baseline_trial(suite, run, seed, overrides, paths, commits, report)
    args = ["train", run.config, *(["--serial"] if run.serial else []), "--run-dir", str(run_dir)]
    for override in overrides:
        args += ["--set", override]
    if resuming:
        args.append("--resume")
    # RAY_ADDRESS (set in Tune's workers) would make a non-serial run join the bench's cluster,
    # whose CPUs the trial already holds: it starts its own local instance instead
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "OMP_NUM_THREADS": "1"}
    with paths["log"].open("a") as log:
        log.write(f"$ metaray {' '.join(args)}\n")
        log.flush()
        proc = start_detached(_metaray(*args), stdout=log, stderr=subprocess.STDOUT, env=env)
        load = MachineLoad()
        try:
            code_ = _wait_reporting(proc, run_dir, report, load)
        finally:  # the trial stopped (Ctrl-C of the bench, Tune's stop): let the run checkpoint first
            _stop_child(proc)
            load.sample()
            commits[-1].update(load.summary())  # this start's share of the machine, kept with its commit
            _write_atomic(paths["commits"], json.dumps(commits, indent=1))
    if code_ != 0:
        raise TrialFailed(f"{run_name} seed {seed}: train failed: {_last_line(paths['log'].read_text()[-4000:])}")

    eval_out = bench_dir / f"{run_name}-seed{seed}.eval.json"
    ev_args = ["eval", str(run_dir), "--split", suite.eval.split, "--output", str(eval_out)]
    for key, value in (("num_tasks", suite.eval.num_tasks), ("seed", suite.eval.seed)):
        if value is not None:
            ev_args += [f"--{key.replace('_', '-')}", str(value)]
    done = subprocess.run(_metaray(*ev_args), capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise TrialFailed(f"{run_name} seed {seed}: eval failed: {_last_line(done.stderr or done.stdout)}")
    evaluation = json.loads(eval_out.read_text())
    metric = run.metric or suite.eval.metric
    if metric not in evaluation:
        raise TrialFailed(f"{run_name} seed {seed}: the eval result has no {metric!r} "
                          f"(this algorithm/family reports: {', '.join(k for k in evaluation if isinstance(evaluation[k], float))})")
    tasks = evaluation.get("tasks", [])
    per_task = [float(t[per_task_key(metric, t)]) for t in tasks if per_task_key(metric, t) in t]
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    rows = read_progress(run_dir)
    result = {
        "schema_version": SCHEMA_VERSION,
        "suite": suite.name,
        "run": run_name,
        "seed": seed,
        "config_file": _shown(run.config),
        "overrides": overrides,
        "config_hash": config_hash({k: v for k, v in resolved.items() if k != "seed"}),
        "config": resolved,
        "algo": resolved.get("algo"),
        "family": resolved.get("task", {}).get("family"),
        "benchmark": benchmark_of(resolved),
        "task_params": task_params(resolved),
        "commit": commits[0]["commit"],
        "dirty": any(c["dirty"] for c in commits),
        "commits": commits,
        "machine": machine(),
        "packages": packages(),
        "date": time.strftime("%Y-%m-%d"),
        "iterations": rows[-1]["iteration"] if rows else None,
        "env_steps": rows[-1].get("env_steps_total") if rows else None,
        "wall_time_s": round(rows[-1].get("wall_time_s", 0.0), 1) if rows else None,
        "metric": metric,
        "score": float(evaluation[metric]),
        "eval": {k: v for k, v in evaluation.items() if k != "tasks"},
        "per_task": per_task,
        "curve": _thin(rows),
        # eval.every: the same metric on the held-out tasks while training, [env steps, wall s, value]
        "heldout_curve": [[r.get("env_steps_total", 0), round(r.get("wall_time_s", 0.0), 1), r[f"heldout_{metric}"]]
                          for r in rows if f"heldout_{metric}" in r],
    }
    _write_atomic(paths["result"], json.dumps(result, indent=1))
    report({"score": result["score"], "env_steps": result["env_steps"], "done_before": False})
    return result


def _baseline_trial(suite: Suite, run: Any, seed: int, overrides: list[str], paths: dict[str, Path],
                    commits: list[dict[str, Any]], report: Any) -> dict[str, Any]:
    """A classical baseline on the suite's held-out tasks: `metaray baseline`, no training."""
    out = paths["run_dir"].with_name(paths["run_dir"].name + ".eval.json")
    sets = [x for o in overrides if not o.startswith(("seed=", "iterations=")) for x in ("--set", o)]
    args = ["baseline", run.config, run.baseline, "--split", suite.eval.split, "--baseline-seed", str(seed),
            "--output", str(out), *sets]
    start = time.time()
    done = subprocess.run(_metaray(*args), capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          check=False)
    if done.returncode != 0:
        raise TrialFailed(f"{run.name} seed {seed}: baseline failed: {_last_line(done.stderr or done.stdout)}")
    evaluation = json.loads(out.read_text())
    metric = run.metric or suite.eval.metric
    if metric not in evaluation:
        raise TrialFailed(f"{run.name} seed {seed}: the baseline's result has no {metric!r}")
    from metaray.cluster.config import apply_overrides, load_yaml

    resolved = apply_overrides(load_yaml(run.config), overrides)
    result = {
        "schema_version": SCHEMA_VERSION, "suite": suite.name, "run": run.name, "seed": seed,
        "config_file": _shown(run.config), "overrides": overrides, "baseline": run.baseline,
        "config_hash": config_hash({k: v for k, v in resolved.items() if k != "seed"}), "config": resolved,
        "algo": f"baseline:{run.baseline}", "family": evaluation["family"], "benchmark": benchmark_of(resolved),
        "task_params": task_params(resolved), "commit": commits[0]["commit"], "dirty": any(c["dirty"] for c in commits), "commits": commits,
        "machine": machine(), "packages": packages(), "date": time.strftime("%Y-%m-%d"),
        "iterations": 0, "env_steps": 0, "wall_time_s": round(time.time() - start, 1),
        "metric": metric, "score": float(evaluation[metric]),
        "eval": {k: v for k, v in evaluation.items() if k != "tasks"},
        "per_task": [float(t[per_task_key(metric, t)]) for t in evaluation["tasks"]],
        "curve": [],
    }
    _write_atomic(paths["result"], json.dumps(result, indent=1))
    report({"score": result["score"], "env_steps": 0, "done_before": False})
    return result


def tune_trainable(config: dict[str, Any]) -> None:
    """The Ray Tune entry point: config = {"run", "seed", "suite", "bench_dir", "results_dir"}."""
    from ray import tune

    suite = Suite.model_validate(config["suite"])
    run_trial(suite, config["run"], int(config["seed"]), Path(config["bench_dir"]),
              Path(config["results_dir"]), report=tune.report)
