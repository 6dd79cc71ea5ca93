"""The `metaray` command: train, eval, plot, scale, status, tasks; baseline, bench, sweep, report.

User mistakes (bad config, unknown family, unreachable Ray, a directory that is not a run) end
with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from metaray.cluster.config import RunConfig
    from metaray.tasks import TaskFamily

# Rollout workers and the learner run torch with one thread unless told otherwise; set before
# torch is imported anywhere in this process (and inherited by Ray's local workers).
os.environ.setdefault("OMP_NUM_THREADS", "1")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, got {value}")
    return value


def _run_dir(text: str) -> Path | str:
    """A run directory: a path, or a storage URI (`s3://bucket/prefix`, `gs://...`, `file:///...`)."""
    from metaray.cluster.storage import is_uri

    return text.rstrip("/") if is_uri(text) else Path(text)


RUN_DIR_HELP = "run directory: a path, or a storage URI pyarrow reads (s3://, gs://, hdfs://, file://)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="metaray", description="Distributed meta-reinforcement learning on Ray.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train from a YAML config")
    train.add_argument("config", nargs="?", help="config YAML file (with --resume: default the run's own config.yaml)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                       help="override a config value (repeatable)")
    train.add_argument("--run-dir", type=_run_dir, help=f"{RUN_DIR_HELP} (default: runs/ALGO-FAMILY-TIME)")
    train.add_argument("--workers", type=_positive_int, help="rollout workers (workers.num_workers)")
    train.add_argument("--address", help="join a running Ray cluster: 'auto' or HOST:PORT (default: start a local one)")
    train.add_argument("--serial", action="store_true", help="run everything in this process, without Ray")
    train.add_argument("--iterations", type=_positive_int, help="total iterations of the run (also across --resume)")
    train.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its newest checkpoint")
    train.add_argument("--metrics-port", type=_port, help="serve Prometheus metrics on this port (metrics.port; 0 = any free port)")
    train.add_argument("--grpc-port", type=_port, help="serve the gRPC service for actors outside Ray on this port (grpc.port; 0 = any free port)")

    ev = sub.add_parser("eval", help="evaluate a run on held-out tasks")
    ev.add_argument("run_dir", type=_run_dir, help=RUN_DIR_HELP)
    ev.add_argument("--split", choices=["train", "test"], default="test")
    ev.add_argument("--num-tasks", type=_positive_int)
    ev.add_argument("--seed", type=int)
    ev.add_argument("--json", action="store_true", help="print the result as JSON")
    ev.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                    help="change task.kwargs.*, eval.* or an algorithm's eval_* for this evaluation (e.g. an "
                    "out-of-distribution goal range, rl2.eval_temperature=0)")
    ev.add_argument("--output", type=Path, help="write the result here instead of RUN_DIR/eval.json")

    base = sub.add_parser("baseline", help="a classical algorithm on a config's held-out tasks (bandit, tabular-mdp)")
    base.add_argument("config", type=Path, help="config YAML file (its family, eval.num_tasks, eval.seed)")
    base.add_argument("name", help="baseline, e.g. greedy, thompson, ucb1, bayes-optimal, greedy-planning, psrl, random")
    base.add_argument("--split", choices=["train", "test"], default="test")
    base.add_argument("--num-tasks", type=_positive_int)
    base.add_argument("--seed", type=int, help="eval seed: which tasks (default: the config's eval.seed)")
    base.add_argument("--baseline-seed", type=int, default=0, help="the baseline's own randomness")
    base.add_argument("--json", action="store_true", help="print the result as JSON")
    base.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                      help="change task.kwargs.* or eval.* (repeatable)")
    base.add_argument("--output", type=Path, help="also write the result (with per-task returns) to this .json file")

    plot = sub.add_parser("plot", help="plot a run's learning curves to a PNG")
    plot.add_argument("run_dir", type=_run_dir, help=RUN_DIR_HELP)
    plot.add_argument("-o", "--output", type=Path, help="PNG file (default: RUN_DIR/curves.png)")

    scale = sub.add_parser("scale", help="resize the rollout-worker pool of a running job")
    scale.add_argument("run_dir", type=_run_dir, help=RUN_DIR_HELP)
    scale.add_argument("--workers", type=_positive_int, required=True, help="rollout workers wanted")

    status = sub.add_parser("status", help="latest progress of a running or finished run")
    status.add_argument("run_dir", type=_run_dir, help=RUN_DIR_HELP)
    status.add_argument("--json", action="store_true", help="print the status as JSON")

    sub.add_parser("tasks", help="list task families")

    bench = sub.add_parser("bench", help="run a benchmark suite (configs x seeds, held-out evaluation, report)")
    bench.add_argument("suite", type=Path, help="suite YAML (see benchmarks/suites/)")
    bench.add_argument("--only", type=_names, metavar="RUN[,RUN...]",
                       help="train only these runs of the suite now (a later --resume without it trains the rest)")
    bench.add_argument("--only-seeds", type=_seeds, metavar="K[,K...]", help="only these of the suite's seeds now")
    _bench_options(bench)

    sweep = sub.add_parser("sweep", help="one config over seeds and a grid of settings, as a bench")
    sweep.add_argument("config", help="config YAML file")
    sweep.add_argument("--seeds", type=int, nargs="+", required=True, help="seeds to train each setting with")
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY.PATH=V1,V2,...",
                       help="values to try for one key (repeatable: the product of all grids)")
    sweep.add_argument("--name", help="suite name for the results (default: sweep-CONFIG)")
    sweep.add_argument("--metric", choices=["mean_return", "success_rate", "normalised_score"], default="mean_return")
    sweep.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                       help="override a config field in every run (repeatable)")
    sweep.add_argument("--iterations", type=_positive_int, help="iterations of every run")
    sweep.add_argument("--num-tasks", type=_positive_int, help="held-out tasks of every evaluation")
    _bench_options(sweep)

    report = sub.add_parser("report", help="tables (mean, IQM, 95%% CIs) and plots from bench results")
    report.add_argument("results", type=Path, nargs="+", help="result files or directories of them")
    report.add_argument("-o", "--output", type=Path, help="report path without suffix (default: DIR/report)")
    report.add_argument("--compare", action="append", default=[], metavar="A,B",
                        help="probability that run A improves on run B (repeatable)")
    report.add_argument("--target", type=float, help="training return whose time to reach each run reports")
    report.add_argument("--index", action="store_true",
                        help="one table of every suite under one RESULTS root (RESULTS/<suite>/<bench>/*.json)")
    report.add_argument("--readme", type=Path, metavar="FILE", help="with --index: write the table between this file's markers")
    report.add_argument("--check", action="store_true",
                        help="with --index --readme: write nothing, exit 1 if the file's table is out of date")
    return parser


def _names(text: str) -> list[str]:
    names = text.split(",")
    if not all(names):
        raise argparse.ArgumentTypeError(f"{text!r}: expected run names separated by commas")
    return names


def _seeds(text: str) -> list[int]:
    try:
        return [int(k) for k in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected seeds separated by commas, e.g. 0,1,2") from None


def _bench_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results-dir", type=Path, default=Path("benchmarks/results"),
                        help="where result files and the report go (default: benchmarks/results)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/bench"),
                        help="where the training runs go (default: runs/bench)")
    parser.add_argument("--resume", action="store_true", help="finish the newest interrupted bench of this suite")
    parser.add_argument("--address", help="run the trials on a running Ray cluster: 'auto' or HOST:PORT")
    parser.add_argument("--max-concurrent", type=_positive_int, help="at most this many trials at once")


def cmd_bench(args: argparse.Namespace) -> int:
    from metaray.bench.suite import load_suite, sweep_suite

    if args.command == "bench":
        suite = load_suite(args.suite)
    else:
        suite = sweep_suite(args.config, args.seeds, args.grid, args.name, args.metric, args.overrides, args.iterations,
                            args.num_tasks)
    return _run_bench(suite, args)


def _run_bench(suite: Any, args: argparse.Namespace) -> int:
    from metaray.bench.runner import run_suite

    out = run_suite(suite, args.results_dir, args.runs_dir, resume=args.resume, address=args.address,
                    max_concurrent=args.max_concurrent, only=getattr(args, "only", None),
                    only_seeds=getattr(args, "only_seeds", None))
    for line in out["failed"]:
        print(f"metaray {args.command}: trial failed: {line}", file=sys.stderr)
    of_suite = (f" ({out['suite_finished']}/{out['suite_trials']} of the suite)"
                if out["trials"] < out["suite_trials"] else "")
    print(f"metaray {args.command}: {out['finished']}/{out['trials']} trials finished{of_suite}; "
          f"results in {out['results_dir']}"
          + (f", report {out['report']['markdown']}" if out["report"] else "")
          + (f"; runs in {out['bench_dir']} (--resume finishes the rest)" if out["finished"] < out["trials"] else
             f"; --resume trains the suite's other {out['suite_trials'] - out['suite_finished']} trials"
             if out["suite_finished"] < out["suite_trials"] else ""))
    if out["report"]:
        print(out["report"]["markdown"].read_text())
    return 0 if out["finished"] == out["trials"] else 1


def cmd_report(args: argparse.Namespace) -> int:
    from metaray.bench.report import (
        ReportError,
        index_markdown,
        load_results,
        update_readme,
        write_report,
    )

    if (args.readme or args.check) and not args.index:
        raise ReportError("--readme and --check go with --index")
    if args.index:
        if args.compare or args.target is not None or args.output:
            raise ReportError("--index takes a RESULTS root, --readme and --check only")
        if len(args.results) != 1:
            raise ReportError(f"--index takes one results root, got {len(args.results)}")
        if args.check and not args.readme:
            raise ReportError("--check needs --readme FILE (the file whose table it checks)")
        if not args.readme:
            print(index_markdown(args.results[0]), end="")
            return 0
        stale = update_readme(args.readme, args.results[0], check=args.check)
        if args.check:
            print(f"metaray report: {args.readme}'s index is {'out of date' if stale else 'current'}")
            return 1 if stale else 0
        print(f"metaray report: {args.readme}: index {'updated' if stale else 'already current'}")
        return 0
    pairs = []
    for text in args.compare:
        parts = text.split(",")
        if len(parts) != 2 or not all(parts):
            raise ReportError(f"--compare {text!r}: expected A,B (two run names)")
        pairs.append((parts[0], parts[1]))
    if pairs:  # a misspelt run would only drop its comparison from the report: say so before writing
        runs = sorted({r["run"] for r in load_results(args.results)})
        for name in (n for pair in pairs for n in pair if n not in runs):
            raise ReportError(f"--compare: {name!r} is not a run in these results (runs: {', '.join(runs)})")
    paths = write_report(args.results, args.output, compare=pairs, target=args.target)
    print(paths["markdown"].read_text())
    print(f"metaray report: wrote {paths['markdown']}, {paths['plot']}")
    return 0


def cmd_tasks(_: argparse.Namespace) -> int:
    from metaray.tasks import list_families

    for name, doc in list_families():
        print(f"{name:16s} {doc}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from metaray.cluster.checkpoint import write_text_atomic
    from metaray.cluster.config import to_yaml
    from metaray.cluster.progress import ProgressDisplay
    from metaray.cluster.run_lock import check_not_locked, lock
    from metaray.cluster.runners import make_runner
    from metaray.cluster.runtime import make_runtime
    from metaray.cluster.storage import StorageSync, is_uri

    storage = _train_storage(args) if args.run_dir is not None and is_uri(args.run_dir) else None
    created = storage is not None and not args.resume
    try:
        config = _train_config(args)
        if storage is None and args.run_dir is not None and Path(args.run_dir).is_dir():
            check_not_locked(Path(args.run_dir))  # trained by a live process now: said before all else
        run_dir = _resume_run_dir(args, config) if args.resume else _new_run_dir(args, config)
    except BaseException as err:
        if created:
            storage.discard()
        _raise_in_storage_terms(err, storage)
        raise
    shown = storage.uri if storage is not None else run_dir
    runtime = make_runtime(args.serial, args.address, num_cpus=_local_cpus(config) if args.address is None else None)
    if threading.current_thread() is threading.main_thread():  # `ray job stop`, kill: stop like Ctrl-C
        signal.signal(signal.SIGTERM, _interrupt)  # after ray.init, which installs its own
    created = created or not run_dir.exists()
    display = ProgressDisplay(config.iterations, 0)
    sync = [StorageSync(storage, display.message)] if storage is not None else []
    made = None  # the folder this run made (inode): the only one its clean-up may remove
    held = None  # this run directory's lock, for as long as this process trains it
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        made = run_dir.stat().st_ino
        held = lock(run_dir)
        trainer = make_runner(config, run_dir, runtime, resume=args.resume, display=display, observers=sync)
        if trainer.counters["iteration"] >= config.iterations:
            trainer.close()
            held.close()
            print(f"{shown}: already at iteration {trainer.counters['iteration']} of {config.iterations}")
            return 0
        # the run starts now: a resume that failed before this point left the run directory as it was
        write_text_atomic(run_dir / "config.yaml", to_yaml(config))
        where = "serial, no Ray" if args.serial else (
            f"started local Ray at {runtime.address}" if args.address is None else f"joined Ray cluster at {runtime.address}")
        display.message(
            f"metaray: {config.algo} on {config.task.family}, {config.workers.num_workers} workers "
            f"({where}), learner on {trainer.device}, run dir {shown}"
            + (f" (local copy {run_dir})" if storage is not None else "")
            + (f", metrics at {trainer.metrics_url}" if trainer.metrics_url else "")
            + (f", gRPC on {trainer.grpc.address} (token: {trainer.grpc_token_source})" if trainer.grpc else "")
        )
        last = trainer.run()
    except BaseException as err:
        runtime.shutdown()
        if created and held is not None and not (run_dir / "progress.jsonl").exists():
            remove_if_same(run_dir, made)  # failed before any iteration: leave nothing
        elif storage is not None and held is not None:
            _final_push(storage, failing=True)  # what the run did until it stopped
        if held is not None:
            held.close()
        _raise_in_storage_terms(err, storage)
        raise
    runtime.shutdown()
    if storage is not None:
        _final_push(storage)
    held.close()
    ret = {k: v for k, v in last.items() if k in ("trial_return", "return_pre", "return_post")}
    print(f"done: {last.get('iteration')} iterations, {last.get('env_steps_total')} env steps, "
          f"{json.dumps(ret)}; run dir {shown}")
    return 0


def remove_if_same(run_dir: Path, inode: int | None) -> None:
    """Remove `run_dir` if it is still the folder with this inode: a run stopped while another was
    started in a re-created folder of the same path must not remove the other's."""
    try:
        if inode is not None and run_dir.stat().st_ino == inode:
            shutil.rmtree(run_dir, ignore_errors=True)
    except OSError:
        pass


def _train_storage(args: argparse.Namespace) -> Any:
    """The run directory in storage, with a fresh local copy to work in (a resume pulls the run);
    `args.run_dir` becomes the local copy."""
    from metaray.cluster.config import ConfigError
    from metaray.cluster.storage import RunStorage, StorageError, staging_dir

    storage = RunStorage(args.run_dir, staging_dir(args.run_dir))
    if args.resume:
        if not storage.exists("config.yaml"):
            raise StorageError(f"{storage.uri} is not a metaray run directory (no config.yaml)")
        if not storage.committed_checkpoints():
            raise StorageError(f"{storage.uri} has no checkpoint to resume from")
        storage.pull()
    else:
        if storage.exists("config.yaml"):
            raise ConfigError(f"{storage.uri} already holds a run; pass --resume to continue it or choose another --run-dir")
        storage.pull(files=(), checkpoints=False)  # an empty local copy
    args.run_dir = storage.local
    return storage


def _raise_in_storage_terms(err: BaseException, storage: Any) -> None:
    """A user-facing error about the local copy of a run in storage is told about its URI."""
    from metaray.cluster.checkpoint import CheckpointError
    from metaray.cluster.config import ConfigError

    if storage is not None and isinstance(err, (ConfigError, CheckpointError)) and str(storage.local) in str(err):
        raise type(err)(str(err).replace(str(storage.local), storage.uri)) from None


def _final_push(storage: Any, failing: bool = False) -> None:
    """Upload the run's last changes; if that fails the local copy is kept and said where (while
    another error ends the run, that error is the one raised)."""
    from metaray.cluster.storage import StorageError

    try:
        storage.push()
    except StorageError as err:
        storage.keep_unpushed()
        line = (f"{err}; the run's last changes are only in its local copy {storage.local} (kept: copy it to "
                f"{storage.uri} by hand, then remove it)")
        if failing:
            print(f"metaray train: error: {line}", file=sys.stderr)
            return
        raise StorageError(line) from None


# Where the run reports and serves, and how it handles faults: not what it computes.
RESUME_MAY_CHANGE = ("iterations", "metrics", "grpc", "workers.max_worker_restarts", "workers.restart_failed_workers",
                     "workers.restart_delay_s", "workers.probe_timeout_s", "workers.task_timeout_s",
                     "workers.start_grace_s", "workers.unplaceable_timeout_s")


def _train_config(args: argparse.Namespace) -> RunConfig:
    """The config with the command line's overrides, checked against its task family."""
    from metaray.cluster.config import ConfigError, load_config
    from metaray.core import checked_loop_spec
    from metaray.tasks import check_family, make_family
    from metaray.tasks.reference import has_expert

    if args.config is None:
        if not args.resume or args.run_dir is None:
            raise ConfigError("train needs a config file (or --resume --run-dir DIR to continue a run with its own config)")
        if not (args.run_dir / "config.yaml").is_file():
            from metaray.cluster.checkpoint import CheckpointError

            raise CheckpointError(f"{args.run_dir} is not a metaray run directory (no config.yaml)")
        args.config = args.run_dir / "config.yaml"
    overrides = list(args.overrides)
    for flag, key in (("workers", "workers.num_workers"), ("iterations", "iterations"), ("metrics_port", "metrics.port"),
                      ("grpc_port", "grpc.port")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    config = load_config(args.config, overrides)
    family = make_family(config.task.family, config.task.kwargs)  # unknown family / bad kwargs: fail now
    if ":" in config.task.family:  # a user's family: its whole contract, once, before anything starts
        check_family(family)
    try:
        config.algorithm().check_family(family, config.algo_config())
        checked_loop_spec(config.algorithm(), config.algo_config())
        _build_policy_once(config, family)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if config.scheduler.strategy == "regret" and not has_expert(family):
        raise ConfigError(f"scheduler.strategy regret measures regret against an expert: task family {config.task.family!r} has no expert(task)")
    if config.eval.normalise and not has_expert(family):
        raise ConfigError(f"eval.normalise scores against the family's expert: task family {config.task.family!r} has no expert(task)")
    return config


def _build_policy_once(config: RunConfig, family: TaskFamily) -> None:
    """The algorithm builds its policy for the family's spaces before Ray starts, so that a
    policy that cannot be (MAML's Gaussian policy on discrete actions, a user's inner optimizer
    refusing its settings) is one line now, not a traceback from the learner. The global torch
    RNG is left as it was."""
    import numpy as np
    import torch

    from metaray.tasks import make_vector_env

    probe = make_vector_env(family, family.sample(1, np.random.default_rng(0)), seed=0)
    try:
        with torch.random.fork_rng(devices=[]):
            config.algorithm().make_policy(probe.single_observation_space, probe.single_action_space, config.algo_config())
    finally:
        probe.close()


def _resume_run_dir(args: argparse.Namespace, config: RunConfig) -> Path:
    """--run-dir, once it holds a run of this config (up to RESUME_MAY_CHANGE) with a checkpoint."""
    from metaray.cluster.checkpoint import CheckpointError, latest_checkpoint
    from metaray.cluster.config import ConfigError, load_yaml, validate
    from metaray.core import builtin_algorithms

    if args.run_dir is None:
        raise ConfigError("--resume needs --run-dir of the run to continue")
    if not (args.run_dir / "config.yaml").is_file():
        raise CheckpointError(f"{args.run_dir} is not a metaray run directory (no config.yaml)")
    saved = validate(load_yaml(args.run_dir / "config.yaml")).model_dump()
    now = config.model_dump()
    for name in builtin_algorithms():  # other algorithms' sections (defaults that may change) do not matter
        if name != config.algo:
            saved.pop(name, None)
            now.pop(name, None)
    for key in RESUME_MAY_CHANGE:
        *parents, leaf = key.split(".")
        into, source = saved, now
        for part in parents:
            into, source = into[part], source[part]
        into[leaf] = source[leaf]
    if saved != now:
        raise ConfigError(f"--resume: config differs from {args.run_dir}/config.yaml at {_first_difference(saved, now)}; "
                          f"to continue the run with its own config, leave the config file out: "
                          f"metaray train --resume --run-dir {args.run_dir}")
    if latest_checkpoint(args.run_dir) is None:
        raise CheckpointError(f"{args.run_dir} has no checkpoint to resume from")
    return args.run_dir


def _new_run_dir(args: argparse.Namespace, config: RunConfig) -> Path:
    from metaray.cluster.config import ConfigError

    name = f"{config.algo}-{config.task.family}".replace(":", ".")
    run_dir = args.run_dir or Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (run_dir / "config.yaml").exists():
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --run-dir")
    existing = next(p for p in (run_dir, *run_dir.parents) if p.exists())  # what mkdir would build on
    if not existing.is_dir():
        raise ConfigError(f"--run-dir {run_dir}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--run-dir {run_dir}: {existing} is not writable by this user")
    return run_dir


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM stops the run like Ctrl-C, at a clean point with a checkpoint. Further SIGTERMs
    are ignored from then on (SIGKILL still forces): they come in pairs (a bench trial's parent
    stopping it, then dying) and a second one used to cut the checkpoint off half-written."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def _local_cpus(config: RunConfig) -> int:
    """A local Ray instance gets enough logical CPUs for every actor of the run."""
    need = max(config.workers.num_workers, config.workers.max_workers or 0) + int(config.learner.num_cpus + 0.999)
    return max(os.cpu_count() or 1, need)


def _first_difference(a: object, b: object, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
    return f"{path} ({a!r} in the run, {b!r} now)"


def cmd_eval(args: argparse.Namespace) -> int:
    from metaray.cluster.evaluation import evaluate_run

    if args.output is not None and args.output.suffix.lower() != ".json":
        from metaray.cluster.config import ConfigError

        raise ConfigError(f"--output must be a .json file, got {args.output}")
    with _readable_run(args, checkpoints=True) as (run_dir, storage):
        result = evaluate_run(run_dir, args.split, args.num_tasks, args.seed, args.overrides, args.output)
        if storage is not None and args.output is None:
            storage.push_file("eval.json")
    for line in result.get("skipped_checkpoints", []):
        print(f"metaray eval: {line}; evaluated {result['checkpoint']}", file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    else:
        pre = f"pre-adaptation {result['return_pre']:.3f} -> post " if "return_pre" in result else ""
        print(f"{args.run_dir}: {result['algo']} on {result['family']}, iteration {result['iteration']}, "
              f"{result['num_tasks']} {result['split']} tasks: mean return {pre}{result['mean_return']:.3f} "
              f"(std {result['std_return']:.3f}, worst 10% {result['cvar10_return']:.3f}); "
              f"wrote {args.output or f'{args.run_dir}/eval.json'}")
        if "normalised_score" in result:
            print(f"  normalised score {result['normalised_score']:.3f} (mean over tasks; on the same tasks the "
                  f"expert returns {result['expert_return']:.3f}, random actions {result['random_return']:.3f})")
        if "episode_return_means" in result:
            means = result["episode_return_means"]
            shown = means if len(means) <= 12 else [*means[:6], *means[-6:]]
            cells = " ".join(f"{v:.2f}" for v in shown[:6]) + (" ... " if len(means) > 12 else " ") + \
                " ".join(f"{v:.2f}" for v in shown[6:])
            print(f"  mean return per episode of the trial, first to last: {cells.strip()}")
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    from metaray.cluster.checkpoint import write_text_atomic
    from metaray.cluster.config import ConfigError
    from metaray.cluster.evaluation import evaluate_baseline

    if args.output is not None and args.output.suffix.lower() != ".json":
        raise ConfigError(f"--output must be a .json file, got {args.output}")
    result = evaluate_baseline(args.config, args.name, args.overrides, args.num_tasks, args.seed, args.baseline_seed,
                               args.split)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.output, json.dumps(result, indent=1))
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "tasks"}))
    else:
        print(f"{args.config}: {args.name} on {result['family']}, {result['num_tasks']} {result['split']} tasks: "
              f"mean return {result['mean_return']:.3f} (std {result['std_return']:.3f}, "
              f"standard error {result['std_return'] / max(1, result['num_tasks'] - 1) ** 0.5:.3f})")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from metaray.cluster.report import plot_run

    if args.output is not None and args.output.suffix.lower() != ".png":
        from metaray.cluster.config import ConfigError

        raise ConfigError(f"--output must be a .png file, got {args.output}")
    with _readable_run(args, checkpoints=False) as (run_dir, storage):
        out = plot_run(run_dir, args.output)
        if storage is not None and args.output is None:
            storage.push_file(out.name)
    print(f"wrote {args.run_dir}/{out.name}" if storage is not None and args.output is None else f"wrote {out}")
    return 0


def cmd_scale(args: argparse.Namespace) -> int:
    from metaray.cluster.control import ScaleError, scale_run
    from metaray.cluster.storage import is_uri, staging_dir

    run_dir = args.run_dir
    if is_uri(run_dir):  # a run in storage is driven from its local copy, on the driver's machine
        run_dir = staging_dir(run_dir)
        if not (run_dir / "config.yaml").is_file():
            raise ScaleError(f"{args.run_dir}: no run of it is driven from this machine (no local copy in {run_dir}); "
                             "run `metaray scale` where its driver runs")
    out = scale_run(run_dir, args.workers)
    print(f"{args.run_dir}: rollout workers {out['workers_before']} -> {out['workers_target']} "
          "(applied within seconds: new workers join once they start; removed ones finish their current work first)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from metaray.cluster.report import print_status, run_status

    with _readable_run(args, checkpoints=False) as (run_dir, storage):
        status = run_status(run_dir)
        if storage is not None:
            newest = storage.committed_checkpoints()
            status.update(run_dir=storage.uri, checkpoint=newest[-1] if newest else None)
    if args.json:
        print(json.dumps(status))
    else:
        print_status(status)
    return 0


@contextlib.contextmanager
def _readable_run(args: argparse.Namespace, checkpoints: bool) -> Iterator[tuple[Path, Any]]:
    """(a folder holding the run, its storage or None): `args.run_dir` itself, or a scratch copy of
    a run in storage (removed afterwards); errors about the copy name the URI."""
    from metaray.cluster.storage import is_uri, scratch_copy

    if not is_uri(args.run_dir):
        yield args.run_dir, None
        return
    storage = scratch_copy(args.run_dir, checkpoints)
    try:
        yield storage.local, storage
    except BaseException as err:
        _raise_in_storage_terms(err, storage)
        raise
    finally:
        storage.discard()


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


def users_frame(err: BaseException) -> tuple[str, int, str] | None:
    """(file, line, function) of the innermost frame of the user's own code in the error's
    traceback (a Ray task's, from its text): code outside metaray, Python and installed packages,
    such as a task family, algorithm or inner optimizer named "package.module:Class". None when
    the error did not pass through such code."""
    import traceback

    import metaray

    # a Ray task's error: the remote traceback is in its text (its cause has none)
    text = str(err) if type(err).__module__.startswith("ray") else None
    if text is not None:
        frames = [(file, int(line), name) for file, line, name in _FRAME.findall(text)]
    else:
        frames = [(f.filename, f.lineno or 0, f.name) for f in traceback.extract_tb(err.__traceback__)]
    ours = {os.path.dirname(os.path.abspath(metaray.__file__)), sys.prefix, sys.base_prefix, sys.exec_prefix}
    users = [f for f in frames if not f[0].startswith("<") and "site-packages" not in f[0] and "dist-packages" not in f[0]
             and not any(os.path.abspath(f[0]).startswith(root + os.sep) for root in ours)]
    return users[-1] if users else None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if os.getcwd() not in sys.path:  # a user's "package.module:Class" (family, algorithm) from the working
        sys.path.append(os.getcwd())  # directory, as `python -m` and the local Ray workers see it
    from metaray.bench.report import ReportError
    from metaray.bench.suite import SuiteError
    from metaray.cluster.checkpoint import CheckpointError
    from metaray.cluster.config import ConfigError
    from metaray.cluster.control import ScaleError
    from metaray.cluster.run_lock import RunBusyError
    from metaray.cluster.runtime import RuntimeStartError
    from metaray.cluster.worker_pool import TrainingError
    from metaray.core import AlgorithmError
    from metaray.tasks import TaskFamilyError

    handlers = {"train": cmd_train, "eval": cmd_eval, "plot": cmd_plot, "scale": cmd_scale, "status": cmd_status,
                "tasks": cmd_tasks, "baseline": cmd_baseline, "bench": cmd_bench, "sweep": cmd_bench, "report": cmd_report}
    try:
        return handlers[args.command](args)
    except (ConfigError, TaskFamilyError, RuntimeStartError, CheckpointError, TrainingError, ScaleError,
            SuiteError, ReportError, RunBusyError, AlgorithmError) as err:
        cause = getattr(err, "cause", None) if type(err).__module__.startswith("ray") else None
        print(f"metaray {args.command}: error: {cause or err}", file=sys.stderr)  # a Ray task's: its own message
        if getattr(err, "half_started", False):  # Ray's gRPC threads would hang the exit (RuntimeStartError)
            sys.stderr.flush()
            sys.stdout.flush()
            os._exit(2)
        return 2
    except KeyboardInterrupt:
        print(f"metaray {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout went away (`metaray eval RUN | head -1`): quietly,
        with contextlib.suppress(OSError):  # as a shell tool; files were written before the printing
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as err:
        if os.environ.get("METARAY_DEBUG"):
            raise
        where = users_frame(err)
        if where is not None:  # raised in the user's own family, algorithm or inner optimizer
            cause = getattr(err, "cause", None) or err  # a Ray task's error carries the original
            first = (str(cause).strip().splitlines() or [""])[0]
            print(f"metaray {args.command}: error in your code at {where[0]}:{where[1]} ({where[2]}): "
                  f"{type(cause).__name__}: {first} (METARAY_DEBUG=1 shows the traceback)", file=sys.stderr)
            return 1
        if not type(err).__module__.startswith("ray"):
            raise
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        print(f"metaray {args.command}: Ray error: {type(err).__name__}: {first} "
              "(METARAY_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
