"""What both training loops share: the run's parts (scheduler, learner, parameter server, worker
pool, observers), resuming, worker failures, the end of an iteration and checkpoints.

The same runner runs under Ray (actors) and in one process (`--serial`); only the runtime
differs. A runner knows its algorithm only through `metaray.core.Algorithm`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metaray.actors import RolloutWorker
from metaray.cluster.checkpoint import (
    CheckpointError,
    load_newest_checkpoint,
    save_checkpoint,
    truncate_progress,
    write_text_atomic,
)
from metaray.cluster.config import ConfigError, RunConfig
from metaray.cluster.control import NAMESPACE as CONTROL_NAMESPACE
from metaray.cluster.control import RunControl, control_name
from metaray.cluster.evaluation import PeriodicEvaluation
from metaray.cluster.metrics import RunMetrics, TensorBoardScalars
from metaray.cluster.observers import Checkpointer, Observer, ProgressLog
from metaray.cluster.progress import ProgressDisplay, append_log
from metaray.cluster.runners.remote import RemoteActors
from metaray.cluster.runtime import RayRuntime, SerialRuntime
from metaray.cluster.scheduler import TaskScheduler
from metaray.cluster.worker_pool import TrainingError, WorkerPool, is_worker_failure
from metaray.learner.learner import Learner
from metaray.networks import weights_mismatch
from metaray.tasks import make_family, make_vector_env

COUNTERS = ("iteration", "wall_time_s", "env_steps_total", "episodes_total", "dropped_batches_total",
            "worker_restarts_total", "tasks_requeued_total", "tasks_reissued_total", "duplicate_results_total",
            "env_failures_total", "dropped_episodes_total")
RECORD_COUNTERS = ("worker_restarts_total", "tasks_requeued_total", "tasks_reissued_total", "duplicate_results_total",
                   "env_failures_total", "dropped_episodes_total", "dropped_batches_total")


class Runner:
    """The shared core; `MetaBatchRunner` and `StreamRunner` add the loop (`_loop`)."""

    def __init__(self, config: RunConfig, run_dir: Path, runtime: SerialRuntime | RayRuntime, resume: bool = False,
                 display: ProgressDisplay | None = None, observers: Sequence[Observer] = ()):
        self.config, self.run_dir, self.runtime = config, Path(run_dir), runtime
        self.algorithm = config.algorithm()
        self.algo_config = config.algo_config()
        family = make_family(config.task.family, config.task.kwargs)
        self.scheduler = self._make_scheduler(family)
        probe = make_vector_env(family, family.sample(1, np.random.default_rng(0)), seed=0)
        self._family, self._spaces = family, (probe.single_observation_space, probe.single_action_space)
        probe.close()
        self._scheduler_lock = threading.Lock()  # gRPC threads draw tasks too
        self._task_set: list[Any] | None = None  # the algorithm's own train tasks, if any (next_task)
        self._task_set_rng = np.random.default_rng([config.seed, 7])
        self.counters: dict[str, Any] = dict.fromkeys(COUNTERS, 0)
        self.counters["wall_time_s"] = 0.0
        self.resumed_from: Path | None = None
        self.display = display or ProgressDisplay(config.iterations, 0, live=False)
        resume_state = self._load_resume_state() if resume else None
        self.ps, self._variables = runtime.parameter_server()
        self.learner = self._spawn_learner()
        if resume_state is not None:
            self._restore_learner(*resume_state)
        self.version = runtime.get(self.learner.get_version.remote())
        self._restarts_base = self.counters["worker_restarts_total"]
        self.pool = WorkerPool(runtime, self._make_worker, config.workers.num_workers, config.workers,
                               log=self.display.message)
        self.pool.settle()
        self.control: Any = None
        self.control_name: str | None = None
        if runtime.name == "ray":
            self.control_name = control_name(self.run_dir)
            self.control = self._spawn_control(config.workers.num_workers)
        self._launch_order: list[int] = []
        self._stalled: str | None = None  # why no worker is alive, while that lasts
        self._last_heartbeat = 0.0
        if resume_state is not None:
            self._restore_workers(*resume_state)
        self.device = runtime.get(self.learner.device_name.remote())
        self._committed: dict[str, Any] | None = None  # the last completed iteration, as a checkpoint keeps it
        self.metrics, self.metrics_url = self._start_metrics()
        self.remote: RemoteActors | None = None
        if config.grpc.port is not None:
            self.remote = RemoteActors(self, resume_state[1] if resume_state else {})
        self._control_poller = ControlPoller(self)
        self.observers: list[Observer] = [*self._observers(), *observers]
        if resume_state is not None:  # a checkpoint now (an interrupt before the first iteration) is the same one
            self._committed = {"counters": dict(self.counters), "version": self.version, "workers": None,
                               "scheduler": self.scheduler.get_state(),
                               "remote": self.remote.checkpoint_counters() if self.remote else {}}

    # ------------------------------------------------------------------ set-up
    def _make_scheduler(self, family: Any) -> TaskScheduler:
        s = self.config.scheduler
        return TaskScheduler(family, self.config.seed, s.strategy, s.fixed_set_size, s.regret_share,
                             s.regret_temperature, s.regret_pool_size, s.regret_smoothing)

    def _spawn_learner(self) -> Any:
        """The learner actor, on a GPU when asked for (or `auto` and the cluster has one)."""
        config, runtime = self.config, self.runtime
        gpus = runtime.cluster_gpus() if runtime.name == "ray" else float(torch.cuda.is_available())
        if config.learner.device == "cuda" and gpus < 1:
            raise ConfigError("learner.device: 'cuda' asked for, but the cluster has no GPU (use 'auto' or 'cpu')")
        use_gpu = runtime.name == "ray" and config.learner.device != "cpu" and gpus >= 1
        placement = {} if use_gpu or runtime.name != "ray" else {"scheduling_strategy": runtime.driver_node(soft=True)}
        return runtime.spawn(
            Learner, config.algo, self.algo_config.model_dump(), *self._spaces, self._variables, config.seed,
            config.learner.device, config.learner.torch_threads,
            num_cpus=config.learner.num_cpus, num_gpus=1 if use_gpu else 0, **placement,
        )

    def _load_resume_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The newest checkpoint that loads; damaged newer ones are moved to checkpoints/damaged/."""
        found = load_newest_checkpoint(self.run_dir, set_aside=True)
        for line in found.skipped:
            self.display.message(line)
        if found.path is None:
            raise CheckpointError(f"{self.run_dir} has no checkpoint that loads" +
                                  (" (damaged ones were moved to checkpoints/damaged/)" if found.skipped else ""))
        self.resumed_from = found.path
        self._check_weights_fit(found.tensors)
        return found.tensors, found.state

    def _check_weights_fit(self, tensors: dict[str, np.ndarray]) -> None:
        """A checkpoint whose weights no longer fit the policy the config builds (a user's own
        network or inner optimizer changed since it was written): one line before the learner
        starts, not an error from inside it. The global torch RNG is left as it was."""
        with torch.random.fork_rng(devices=[]):
            policy = self.algorithm.make_policy(*self._spaces, self.algo_config)
        weights = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("policy/")}
        mismatch = weights_mismatch(policy, weights)
        if mismatch is not None:
            raise CheckpointError(f"{self.resumed_from}: its weights do not fit the policy this config builds ({mismatch}); "
                                  "the policy's code or the run's config.yaml changed since it was written: restore them, or start a new run")

    def _restore_learner(self, tensors: dict[str, np.ndarray], state: dict[str, Any]) -> None:
        self.runtime.get(self.learner.set_state.remote(tensors, state["learner"]))
        if "replay" in state and self.config.checkpoint.replay_buffer:  # else: warm start, empty buffers
            replay = {name[len("replay/"):]: array for name, array in tensors.items() if name.startswith("replay/")}
            self.runtime.get(self.learner.set_replay_state.remote(state["replay"], replay))
        self.counters.update({k: state[k] for k in self.counters if k in state})
        if "scheduler" in state:
            self.scheduler.set_state(state["scheduler"])

    def _start_metrics(self) -> tuple[RunMetrics | None, str | None]:
        cfg = self.config.metrics
        if cfg.port is None:
            return None, None
        metrics = RunMetrics(self.config.algo, self.config.task.family, self.run_dir.name)
        try:
            return metrics, metrics.serve(cfg.port, cfg.host)
        except OSError as err:
            raise ConfigError(f"metrics.port: cannot serve on {cfg.host}:{cfg.port} ({err.strerror or err})") from None

    def _observers(self) -> list[Observer]:
        """In the order they see each iteration's record (see metaray.cluster.observers)."""
        observers: list[Observer] = [ProgressLog(self.run_dir), self._control_poller]
        if self.config.eval.every:  # first: its heldout_* fields go into the record the others see
            observers.insert(0, PeriodicEvaluation(self.config, self.run_dir, self._current_weights,
                                                   self.config.eval.every, self.config.iterations))
        if self.remote is not None:
            observers.append(self.remote)
        if self.metrics is not None:
            observers.append(self.metrics)
        if self.config.metrics.tensorboard:
            observers.append(TensorBoardScalars(self.run_dir / "tensorboard"))
        return [*observers, self.display, Checkpointer(self, self.config.checkpoint.every, self.config.iterations)]

    def _current_weights(self) -> dict[str, np.ndarray]:
        """The learner's weights now, as a checkpoint holds them (`policy/…`)."""
        tensors, _ = self.runtime.get(self.learner.get_state.remote())
        return {k: v for k, v in tensors.items() if k.startswith("policy/")}

    @property
    def grpc(self) -> Any:
        """The gRPC service (None unless grpc.port is set)."""
        return None if self.remote is None else self.remote.service

    @property
    def grpc_token_source(self) -> str | None:
        return None if self.remote is None else self.remote.token_source

    def next_task(self) -> Any:
        """A train task for an actor outside Ray: from the algorithm's own fixed task set when it
        has one (PEARL's per-task replay), else the scheduler's."""
        with self._scheduler_lock:
            if self._task_set is None:
                self._task_set = self.algorithm.task_set(self._family, self.algo_config) or []
            if self._task_set:
                return self._task_set[int(self._task_set_rng.integers(len(self._task_set)))]
            return self.scheduler.next_batch(1)[0]

    # ------------------------------------------------------------------ workers
    def _make_worker(self, slot: int, generation: int) -> Any:
        """A rollout worker for `slot`; its seed depends on the slot, the restart generation and the
        iteration it starts at, so a replacement or a resumed run does not replay the same draws."""
        cfg = self.config
        seed = int(np.random.SeedSequence([cfg.seed, self.counters["iteration"], slot, generation]).generate_state(1)[0])
        guard = {"step_timeout_s": cfg.workers.env_step_timeout_s, "max_recreate": cfg.workers.env_max_recreate}
        return self.runtime.spawn(
            RolloutWorker, slot, cfg.algo, self.algo_config.model_dump(), cfg.task.family, cfg.task.kwargs, seed,
            self._variables, cfg.workers.torch_threads, guard, num_cpus=1,
            # First placement spreads over the nodes (one lost node takes few workers); a
            # replacement uses Ray's default, which prefers the driver's node, because SPREAD
            # would pick the node that just lost its workers, often dead but not yet marked so.
            scheduling_strategy="SPREAD" if generation == 0 else "DEFAULT",
        )

    def _restore_workers(self, tensors: dict[str, np.ndarray], state: dict[str, Any]) -> None:
        """Give each worker slot its checkpointed state. Trials saved in flight go on; the others
        start afresh (as the checkpointing run did), so the resumed run continues exactly as the
        uninterrupted one. Old checkpoints hold only `workers/{slot}/torch_gen`."""
        saved = state.get("workers", {})
        calls = [self.pool.handle(slot).set_state.remote(saved[str(slot)], _slot_arrays(tensors, slot))
                 for slot in self.pool.slots if str(slot) in saved]
        self.runtime.get(calls)
        self.runtime.get([self.pool.handle(slot).restart_trials.remote() for slot in self.pool.slots
                          if not saved.get(str(slot), {}).get("in_flight")])
        self._launch_order = [s for s in state.get("launch_order", []) if s in self.pool.workers]

    def _replace_worker(self, slot: int, err: BaseException) -> None:
        """Restart a failed worker, or checkpoint and stop when that is not allowed any more."""
        first = (str(err).strip().splitlines() or [""])[0][:200]
        reason = f"{type(err).__name__}: {first}" if first else type(err).__name__
        self.pool.replace(slot, reason)  # TrainingError when not allowed: run() checkpoints and stops
        self._count_restarts()

    def _count_restarts(self) -> None:
        self.counters["worker_restarts_total"] = self._restarts_base + self.pool.restarts_total

    def _tick_pool(self) -> list[int]:
        """Let replacements and new workers join (they never block the loop); returns the joined slots."""
        restarts = self.pool.restarts_total
        joined = self.pool.tick()
        if self.pool.restarts_total != restarts:  # a replacement failed to start
            self._count_restarts()
        self._heartbeat()
        return joined

    def _await_a_worker(self) -> list[int]:
        """With no worker alive, wait (in short steps, so a signal stops it within a second) for
        one to join; say so on the display and in driver.json, and after
        workers.unplaceable_timeout_s checkpoint and stop (TrainingError). Returns joined slots."""
        limit = self.config.workers.unplaceable_timeout_s
        since = time.monotonic()
        said = False
        while not len(self.pool):
            restarts = self.pool.restarts_total
            joined = self.pool.tick(wait_s=0.5)
            if self.pool.restarts_total != restarts:
                self._count_restarts()
            if joined:
                self._stalled = None
                if said:
                    self.display.message(f"rollout workers {joined} joined; training goes on")
                return joined
            waited = time.monotonic() - since
            self._stalled = self._placement_note(waited)
            self._heartbeat()
            if waited > 5.0 and not said:
                said = True
                self.display.message(f"no rollout worker is alive: {self._stalled}; stopping after "
                                     f"workers.unplaceable_timeout_s={limit:g} s")
            if waited > limit:
                raise TrainingError(f"no rollout worker could be placed for {waited:.0f} s "
                                    f"(workers.unplaceable_timeout_s={limit:g}): {self._stalled}")
        return []

    def _placement_note(self, waited: float) -> str:
        """What the waiting workers ask for and what the cluster has free."""
        waiting = len(self.pool.waiting())
        free = ""
        if self.runtime.name == "ray":
            with contextlib.suppress(Exception):
                free = f", the cluster has {self.runtime.ray.available_resources().get('CPU', 0.0):g} free"
        return f"{waiting} waiting {waited:.0f} s to be placed (each asks for 1 CPU{free})"

    def _heartbeat(self, every_s: float = 2.0) -> None:
        """Now and then while the loop waits: apply a `metaray scale` request and rewrite
        driver.json, so `metaray status` shows the workers alive, waiting and targeted now, not
        only as of the last progress row."""
        now = time.monotonic()
        if now - self._last_heartbeat >= every_s:
            self._last_heartbeat = now
            self._control_poller.poll()

    def _spawn_control(self, num_workers: int) -> Any:
        """The run's named control actor, on the driver's node (it lives and dies with the driver)."""
        local_cpus = self.runtime.cluster_cpus() if self.runtime.started_here else None
        return self.runtime.spawn(RunControl, num_workers, self.config.workers.max_workers, local_cpus,
                                  self.config.learner.num_cpus, num_cpus=0,
                                  name=self.control_name, namespace=CONTROL_NAMESPACE,
                                  scheduling_strategy=self.runtime.driver_node(soft=False))

    def _result_or_replace(self, future: Any, slot: int, handle: Any) -> dict[str, Any] | None:
        """A worker call's info, or None when the worker failed; it is then replaced (unless a
        newer worker already holds its slot)."""
        try:
            return self.runtime.get(future)
        except Exception as err:
            if not is_worker_failure(err):
                raise
            if self.pool.workers.get(slot) is handle:
                self._replace_worker(slot, err)
            return None

    def _count_worker_info(self, info: dict[str, Any]) -> None:
        self.counters["env_steps_total"] += info["env_steps"]
        self.counters["episodes_total"] += info["episodes"]
        self.counters["env_failures_total"] += info.get("env_failures", 0)
        self.counters["dropped_episodes_total"] += info.get("dropped_episodes", 0)
        if info.get("env_failure_last"):
            self._last_env_failure = info["env_failure_last"]

    # ------------------------------------------------------------------ loop
    def run(self) -> dict[str, Any]:
        self.display.log_to(self.run_dir / "driver.log")  # our messages, and Ray's own (not on the display)
        # the sink outlives the run (Ray's note on a worker death comes late): it holds the path only
        self.runtime.route_ray_messages(functools.partial(append_log, self.run_dir / "driver.log", source="ray"))
        if self.resumed_from is not None:  # the resume starts now: only from here on the run directory changes
            dropped = truncate_progress(self.run_dir, self.counters["iteration"])
            self.display.message(f"resuming from {self.resumed_from.relative_to(self.run_dir)} (iteration "
                                 f"{self.counters['iteration']}); dropped {dropped} progress rows after it")
        self._start = time.perf_counter() - self.counters["wall_time_s"]
        self._last_t, self._last_steps = time.perf_counter(), self.counters["env_steps_total"]
        self._last_record: dict[str, Any] = {}
        self._seen_episodes, self._seen_dropped = self.counters["episodes_total"], self.counters["dropped_episodes_total"]
        self._dropped_streak, self._last_env_failure = 0, ""
        self._write_driver_info("running")
        state = "failed"
        try:
            self._loop()
            state = "finished"
        except KeyboardInterrupt:
            state = "interrupted"
            self.checkpoint()
            raise
        except TrainingError as stop:  # e.g. a worker out of restarts, in any phase
            raise TrainingError(f"{stop}; {self._checkpoint_on_failure()}") from None
        except Exception:  # a bug: keep its traceback, but first keep the completed iterations
            self.display.message(f"training stopped by an unexpected error; {self._checkpoint_on_failure()}")
            raise
        finally:
            self.close()
            self.pool.cancel_waiting()
            self._write_driver_info(state)
        return self._last_record

    def _loop(self) -> None:
        raise NotImplementedError

    def in_flight_slots(self) -> list[int]:
        """Worker slots with a call in flight, in launch order (a resumed stream run relaunches so)."""
        return []

    def close(self) -> None:
        """Stop the gRPC service and the metrics endpoint, flush TensorBoard, close the display (idempotent)."""
        for observer in self.observers:
            observer.close()
        self.observers = []

    def _write_driver_info(self, state: str) -> None:
        """`driver.json`: who runs this run and where its metrics are (read by `metaray status`)."""
        info = {"state": state, "pid": os.getpid(), "host": socket.gethostname(), "metrics_url": self.metrics_url,
                "runtime": self.runtime.name, "ray_address": getattr(self.runtime, "address", None),
                "control_actor": self.control_name, "grpc_address": self.grpc.address if self.grpc else None,
                "target_iterations": self.config.iterations, "updated": time.time(),
                "workers_alive": len(self.pool), "workers_pending": len(self.pool.waiting()),
                "workers_target": self.pool.target(), "stalled": self._stalled,
                "worker_restarts_total": self.counters["worker_restarts_total"]}
        write_text_atomic(self.run_dir / "driver.json", json.dumps(info, indent=1) + "\n")

    def _update(self, batches: list[Any]) -> dict[str, Any] | None:
        """One learner update; None when a batch was lost with its node (the update did not run)."""
        try:
            return self.runtime.get(self.learner.update.remote(*batches))
        except Exception as err:
            if not is_worker_failure(err):
                raise
            self.display.message(f"a sample batch was lost ({type(err).__name__})")
            return None

    def _end_iteration(self, stats: dict[str, Any], extra: dict[str, Any]) -> None:
        """Count the iteration, build its progress record and hand it to every observer."""
        self.version = stats["policy_version"]
        self.counters["iteration"] += 1
        remote_counts = self.remote.after_update(stats) if self.remote is not None else {}
        now = time.perf_counter()
        self.counters["wall_time_s"] = now - self._start
        record = {
            "iteration": self.counters["iteration"],
            "wall_time_s": round(self.counters["wall_time_s"], 3),
            "env_steps_total": self.counters["env_steps_total"],
            "env_steps_per_s": (self.counters["env_steps_total"] - self._last_steps) / max(now - self._last_t, 1e-9),
            "episodes_total": self.counters["episodes_total"],
            "policy_version": self.version,
            "workers_alive": len(self.pool),
            "workers_pending": len(self.pool.waiting()),
            **{k: self.counters[k] for k in RECORD_COUNTERS},
            **remote_counts,
            **extra,
            **stats,
        }
        self._last_t, self._last_steps = now, self.counters["env_steps_total"]
        self._last_record = record
        episodes, dropped = self.counters["episodes_total"], self.counters["dropped_episodes_total"]
        all_dropped = episodes > self._seen_episodes and dropped - self._seen_dropped >= episodes - self._seen_episodes
        self._dropped_streak = self._dropped_streak + 1 if all_dropped else 0
        self._seen_episodes, self._seen_dropped = episodes, dropped
        self._stalled = None
        self._commit(remote_counts)
        for observer in self.observers:
            observer.observe(record)
        if self._dropped_streak >= self.config.workers.max_dropped_iterations:
            raise TrainingError(self._all_dropped("iterations"))

    def _all_dropped(self, what: str) -> str:
        limit = self.config.workers.max_dropped_iterations
        return (f"every episode of the last {limit} {what} was dropped for env failures (last: "
                f"{self._last_env_failure or 'unknown'}; {self.counters['env_failures_total']} in all): the env fails at "
                f"every step or reset (workers.max_dropped_iterations={limit})")

    # ------------------------------------------------------------ checkpoints
    def _commit(self, remote_counts: dict[str, int]) -> None:
        """Keep what a checkpoint of this just completed iteration holds, so that one written
        later (an interrupt, a failure) is this iteration's: counters, scheduler, and the workers'
        state for meta-batch runs and serial ones (under Ray stream workers sample on: their
        state is taken when the checkpoint is written)."""
        keep_workers = self.keeps_worker_state or self.runtime.name == "serial"  # serial: workers idle now
        self._committed = {"counters": dict(self.counters), "version": self.version, "scheduler": self.scheduler.get_state(),
                           "remote": dict(remote_counts), "workers": self._worker_states() if keep_workers else None}

    keeps_worker_state = False  # MetaBatchRunner: workers are idle between iterations

    def _worker_states(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Each worker's state (random state, and trials in flight where its sampler keeps them),
        asked of all at once (a worker that just died has none: it starts fresh)."""
        asked = {slot: self.pool.handle(slot).get_state.remote() for slot in self.pool.slots}
        metas: dict[str, Any] = {}
        tensors: dict[str, np.ndarray] = {}
        for slot, future in asked.items():
            try:
                meta, arrays = self.runtime.get(future)
            except Exception as err:
                if not is_worker_failure(err):
                    raise
                continue
            metas[str(slot)] = meta
            tensors.update({f"workers/{slot}/{name}": array for name, array in arrays.items()})
        return metas, tensors

    def _checkpoint_on_failure(self) -> str:
        """Checkpoint the last completed iteration on the way out; says what happened."""
        try:
            written = self.checkpoint()
        except Exception as err:  # the learner itself may be gone
            return f"no checkpoint could be written ({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''})"
        if written is None:
            return "no iteration had completed, so there is no checkpoint"
        return f"a checkpoint was written ({written.name}), continue with --resume"

    def checkpoint(self) -> Path | None:
        """Checkpoint the last completed iteration (see `_commit`); None before the first."""
        committed = self._committed
        if committed is None:
            return None
        counters = committed["counters"]
        tensors, learner_meta = self.runtime.get(self.learner.get_state.remote(committed["version"]))
        tensors = dict(tensors)
        workers, worker_tensors = committed["workers"] or self._worker_states()
        tensors.update(worker_tensors)
        for slot in self.pool.slots:  # trials kept in flight go on; the others restart, as they will on resume
            if not workers.get(str(slot), {}).get("in_flight"):
                with contextlib.suppress(Exception):
                    self.runtime.get(self.pool.handle(slot).restart_trials.remote())
        replay = self.runtime.get(self.learner.get_replay_state.remote()) if self.config.checkpoint.replay_buffer else None
        if replay is not None:
            tensors.update({f"replay/{name}": array for name, array in replay[1].items()})
        state = {**counters, "policy_version": committed["version"], "learner": learner_meta,
                 **({"replay": replay[0]} if replay is not None else {}),
                 "algo": self.config.algo, "scheduler": committed["scheduler"], "workers": workers,
                 "launch_order": self.in_flight_slots(), **committed["remote"]}
        return save_checkpoint(self.run_dir, counters["iteration"], tensors, state, self.config.checkpoint.keep)


def _slot_arrays(tensors: dict[str, np.ndarray], slot: int) -> dict[str, np.ndarray]:
    """A worker's arrays in a checkpoint (`workers/{slot}/<name>`), by name."""
    prefix = f"workers/{slot}/"
    return {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}


class ControlPoller:
    """Applies a `metaray scale` request after each iteration and every few seconds while the
    loop waits (`Runner._heartbeat`): the pool is resized towards it."""

    def __init__(self, runner: Runner):
        self.runner = runner
        self._warned: set[int] = set()

    def observe(self, record: dict[str, Any]) -> None:
        self.poll()

    def poll(self) -> None:
        runner = self.runner
        if runner.control is None:
            runner._write_driver_info("running")
            return
        try:
            target = runner.runtime.get(runner.control.get_target.remote())
        except Exception as err:  # should not happen on the driver's node; training must not stop for it
            if not is_worker_failure(err):
                raise
            runner.display.message(f"run control actor lost ({type(err).__name__}); registering it again")
            runner.control = runner._spawn_control(runner.pool.target())
            return
        if target != runner.pool.target():
            runner.pool.resize(target)
        self._report_pending(runner)
        runner._write_driver_info("running")  # `metaray status` sees pending workers and the target

    def _report_pending(self, runner: Runner, after_s: float = 60.0) -> None:
        """Say once per worker when a new one waits long for a node with room (a cluster)."""
        now = time.monotonic()
        for slot, since in runner.pool.waiting().items():
            if now - since > after_s and slot not in self._warned:
                self._warned.add(slot)
                free = runner.runtime.ray.available_resources().get("CPU", 0.0)
                runner.display.message(f"rollout worker {slot} has waited {now - since:.0f} s to be placed: it asks for "
                                       f"1 CPU and the cluster has {free:g} free; it joins when a node has room")

    def close(self) -> None:
        pass
