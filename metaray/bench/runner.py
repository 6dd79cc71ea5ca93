"""`metaray bench SUITE.yaml`: every (run, seed) of a suite as a Ray Tune trial, on the local
machine or the Ray cluster given, resumable after an interruption, then the report.

Layout (results small and committed, training runs large and outside the tree):

    benchmarks/results/<suite>/<date>-<commit>/<run>-seed<k>.json, report.md, report.png
    runs/bench/<suite>/<date>-<commit>/<run>-seed<k>/            (metaray run directories)
    runs/bench/<suite>/<date>-<commit>/tune/                     (Tune's experiment state)
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from metaray.bench.provenance import results_tag
from metaray.bench.report import write_report
from metaray.bench.suite import Suite, SuiteError, require_bench_extra
from metaray.bench.trial import trial_paths, tune_trainable
from metaray.cluster.run_lock import check_not_locked, lock
from metaray.cluster.runtime import RayRuntime


def _comparable(suite: Suite) -> dict[str, Any]:
    """What must match for a bench's results to be finished by another start: the suite, with each
    config named by its file (a checkout elsewhere holds the same configs under another path)."""
    data = suite.model_dump()
    for run in data["runs"]:
        run["config"] = Path(run["config"]).name
    return data


def _resume_id(runs_root: Path, results_root: Path, suite: Suite) -> tuple[str, bool]:
    """The bench to finish and whether Tune's state of it is there. The newest with Tune's state
    under the runs dir; else the newest whose result files hold the same suite (the runs dir was
    lost, e.g. a machine replaced): its finished trials stand, the others train again."""
    found = sorted((p for p in (runs_root / suite.name).glob("*") if (p / "tune").is_dir()),
                   key=lambda p: p.stat().st_mtime)
    if found:
        return found[-1].name, True
    kept = sorted((p for p in (results_root / suite.name).glob("*") if (p / "suite.json").is_file()),
                  key=lambda p: p.stat().st_mtime)
    if not kept:
        raise SuiteError(f"--resume: no interrupted bench of suite {suite.name!r} under {runs_root / suite.name} "
                         f"or {results_root / suite.name}")
    newest = kept[-1]
    try:
        same = _comparable(Suite.model_validate_json((newest / "suite.json").read_text())) == _comparable(suite)
    except ValueError:
        same = False
    if not same:
        raise SuiteError(f"--resume: {newest} holds results of another version of suite {suite.name!r}; "
                         "run it without --resume to start a new bench")
    return newest.name, False


def check_resources(suite: Suite, available: dict[str, float]) -> None:
    """Every trial must fit the cluster on its own, else Tune would wait forever."""
    cpus = float(available.get("CPU", 0))
    for run in suite.runs:
        if run.cpus > cpus:
            raise SuiteError(f"run {run.name!r} asks for {run.cpus:g} CPUs per trial; the Ray cluster has {cpus:g}")


CONCURRENCY_FILE = "concurrency.json"  # the --max-concurrent (and the trials) Tune's experiment started with


def select_trials(suite: Suite, only: list[str] | None = None, seeds: list[int] | None = None) -> dict[str, list]:
    """The runs and seeds to train now (`--only`, `--only-seeds`; the whole suite by default), in
    the suite's order: a grid, since Tune's param space is runs x seeds."""
    names = [run.name for run in suite.runs]
    for name in only or []:
        if name not in names:
            raise SuiteError(f"--only {name!r}: not a run of suite {suite.name!r} (runs: {', '.join(names)})")
    for seed in seeds or []:
        if seed not in suite.seeds:
            raise SuiteError(f"--only-seeds {seed}: not a seed of suite {suite.name!r} "
                             f"(seeds: {', '.join(map(str, suite.seeds))})")
    return {"runs": [n for n in names if not only or n in only],
            "seeds": [k for k in suite.seeds if not seeds or k in seeds]}


def _started_state(bench_dir: Path) -> dict[str, Any] | None:
    """What Tune's experiment of this bench was started with ({"max_concurrent", "runs", "seeds"}),
    or None for a bench started before metaray recorded it."""
    path = bench_dir / CONCURRENCY_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def started_selection(bench_dir: Path, suite: Suite) -> dict[str, list]:
    """The runs and seeds Tune's experiment of this bench was started over (the whole suite for a
    bench started before metaray recorded them)."""
    state = _started_state(bench_dir) or {}
    return {"runs": state.get("runs", [run.name for run in suite.runs]), "seeds": state.get("seeds", suite.seeds)}


def concurrency_on_resume(bench_dir: Path, asked: int | None) -> tuple[int | None, bool]:
    """(limit, restart): the trials a resumed bench runs at once, and whether Tune's experiment must
    start afresh for it. A limit no higher than the start's holds on a restore (the local Ray
    instance is sized to it); a higher one (cores or nodes were added) does not, since Ray Tune
    restores the trial generator with the limit it started with: then a new experiment over the
    same trials, as for another selection (finished trials stand, interrupted ones continue)."""
    state = _started_state(bench_dir)
    started = None if state is None else state["max_concurrent"]
    if asked is None:
        return started, False
    if state is not None and (started is None or asked <= started):  # None: started without a limit
        return asked, False
    print(f"metaray bench: --max-concurrent {asked} on --resume, more than this bench started with "
          f"({'an unrecorded limit' if state is None else started}): Tune's bookkeeping of it starts afresh so "
          f"that {asked} run at a time; finished trials stand, interrupted ones continue their run directories",
          file=sys.stderr)
    return asked, True


def oversubscription_note(max_concurrent: int, num_cpus: int, cores: int) -> str | None:
    """One line when the trials allowed at once ask for more CPUs than the machine has: they then
    share cores and each runs slower, and together slower too (three one-core MAML-TRPO trials on
    2 cores: 36 s a meta-iteration each, against 21 s for two at once; 2026-12-07)."""
    if num_cpus <= cores:
        return None
    per_trial = num_cpus / max_concurrent
    if per_trial > cores:  # no limit helps: one trial alone over-asks
        return (f"metaray bench: a trial asks for {per_trial:g} CPUs on a machine with {cores}: its processes "
                f"share the cores (slower, and wall times not comparable with a machine that has them)")
    return (f"metaray bench: --max-concurrent {max_concurrent} asks for {num_cpus} CPUs on a machine with {cores}: "
            f"the trials share the cores (slower, and wall times not comparable with trials that had theirs); "
            f"--max-concurrent {int(cores // per_trial)} fits them")


def run_suite(suite: Suite, results_root: Path, runs_root: Path, resume: bool = False,
              address: str | None = None, max_concurrent: int | None = None, verbose: int = 1,
              only: list[str] | None = None, only_seeds: list[int] | None = None) -> dict[str, Any]:
    """Run (or finish) the suite, or the runs `only` x seeds `only_seeds` of it (a later --resume
    without them trains the rest into the same bench); returns {"results_dir", "failed": [lines],
    "report": paths, "finished"/"trials": of the selection, "suite_finished"/"suite_trials"}."""
    require_bench_extra("ray.tune", "rliable.library")
    import ray
    from ray import tune

    selection = select_trials(suite, only, only_seeds)
    chosen = [t for t in suite.trials() if t["run"] in selection["runs"] and t["seed"] in selection["seeds"]]
    ident, restorable = _resume_id(runs_root, results_root, suite) if resume else (results_tag(), False)
    bench_dir = (runs_root / suite.name / ident).resolve()
    results_dir = (results_root / suite.name / ident).resolve()
    tune_dir = bench_dir / "tune"
    if bench_dir.is_dir():  # another `metaray bench` runs this bench now: said before anything starts
        check_not_locked(bench_dir, "bench")
    if not resume and tune_dir.exists():
        raise SuiteError(f"{bench_dir} already holds this bench (same suite, day and commit): pass --resume to finish it")
    restorable = restorable and tune.Tuner.can_restore(str(tune_dir))
    if restorable and started_selection(bench_dir, suite) != selection:
        # Tune restores the grid it started with; other trials asked now: a new experiment under the
        # same bench (Tune's bookkeeping only is replaced; run directories and results stay)
        print(f"metaray bench: resuming {ident} over {len(chosen)} trials ({', '.join(selection['runs'])} x seeds "
              f"{', '.join(map(str, selection['seeds']))}), not the ones it was started with: finished trials stand, "
              "interrupted ones continue their run directories", file=sys.stderr)
        shutil.rmtree(tune_dir)
        restorable = False
    elif restorable:
        max_concurrent, restart = concurrency_on_resume(bench_dir, max_concurrent)
        if restart:
            shutil.rmtree(tune_dir)
            restorable = False
    elif resume:
        done = sum(trial_paths(bench_dir, results_dir, t["run"], t["seed"])["result"].is_file() for t in suite.trials())
        print(f"metaray bench: resuming {ident} from its result files ({done} of {len(suite.trials())} trials "
              f"finished, they stand); Tune's state of it is not in {bench_dir}: the other trials continue their run "
              "directories where those are there, else start over",
              file=sys.stderr)
    if not ray.is_initialized():
        num_cpus = None
        if address is None:  # Ray starts its workers at niceness 15: a trial would yield to any other
            os.environ.setdefault("RAY_worker_niceness", "0")  # process; a bench measures wall times
            # a stopped trial's `metaray train` must outlive its actor long enough to write its
            # checkpoint (it gets SIGTERM when the actor dies): Ray's default SIGKILLs a worker's
            # children on exit, which lost the iterations since the last periodic checkpoint
            os.environ.setdefault("RAY_kill_child_processes_on_worker_exit", "0")
            if max_concurrent:  # a local instance only as large as the trials allowed at once: the
                # limit then holds after Tuner.restore too, which forgets max_concurrent_trials
                num_cpus = math.ceil(max_concurrent * max(run.cpus for run in suite.runs))
                line = oversubscription_note(max_concurrent, num_cpus, os.cpu_count() or 1)
                if line:
                    print(line, file=sys.stderr)
        RayRuntime(address, num_cpus=num_cpus)  # one line on an unreachable cluster (RuntimeStartError)
    check_resources(suite, ray.cluster_resources())
    bench_dir.mkdir(parents=True, exist_ok=True)
    held = lock(bench_dir, "bench")  # until this bench ends: one `metaray bench` per bench at a time
    try:
        return _fit(suite, bench_dir, results_dir, tune_dir, ident, selection, chosen, restorable, max_concurrent,
                    verbose)
    finally:
        held.close()


def _fit(suite: Suite, bench_dir: Path, results_dir: Path, tune_dir: Path, ident: str, selection: dict[str, Any],
         chosen: list[dict[str, Any]], restorable: bool, max_concurrent: int | None, verbose: int) -> dict[str, Any]:
    """Tune's experiment over the chosen trials (started or restored), then the report."""
    from ray import tune

    results_dir.mkdir(parents=True, exist_ok=True)
    if not restorable:  # written when Tune's experiment starts, read when it is restored
        (bench_dir / CONCURRENCY_FILE).write_text(json.dumps({"max_concurrent": max_concurrent, **selection}))
    (results_dir / "suite.json").write_text(suite.model_dump_json(indent=1))

    cpus = {run.name: run.cpus for run in suite.runs}
    trainable = tune.with_resources(tune_trainable, lambda config: {"cpu": cpus[config["run"]]})
    if restorable:
        tuner = tune.Tuner.restore(str(tune_dir), trainable=trainable, resume_unfinished=True, restart_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            # the grid is runs x seeds, the suite's trials (shown as the progress table's columns)
            param_space={"run": tune.grid_search(selection["runs"]), "seed": tune.grid_search(selection["seeds"]),
                         "suite": suite.model_dump(),
                         "bench_dir": str(bench_dir), "results_dir": str(results_dir)},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=max_concurrent,
                trial_name_creator=lambda t: f"{t.config['run']}-seed{t.config['seed']}",
                trial_dirname_creator=lambda t: f"{t.config['run']}-seed{t.config['seed']}"),
            run_config=tune.RunConfig(name="tune", storage_path=str(bench_dir), verbose=verbose),
        )
    grid = tuner.fit()
    failed = []
    for result in grid:
        if result.error is not None:
            line = str(result.error).strip().splitlines()
            failed.append(next((x for x in reversed(line) if x.strip()), repr(result.error)))
    done = [t for t in suite.trials()
            if trial_paths(bench_dir, results_dir, t["run"], t["seed"])["result"].is_file()]
    report = write_report([results_dir], compare=suite.compare, title=f"metaray bench {suite.name} ({ident})",
                          target=suite.target) if done else None
    return {"results_dir": results_dir, "bench_dir": bench_dir, "failed": failed, "report": report,
            "finished": sum(t in done for t in chosen), "trials": len(chosen),
            "suite_finished": len(done), "suite_trials": len(suite.trials())}
