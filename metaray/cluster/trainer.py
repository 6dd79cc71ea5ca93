"""The training loop: workers -> learner -> parameter server -> progress and checkpoints.

The same loop runs under Ray (actors) and in one process (`--serial`); only the runtime differs.
For asynchronous algorithms (RL²) every worker always has one sampling call in flight, so
sampling continues while the learner updates; batches older than `max_policy_lag` versions are
dropped and counted.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metaray.actors import RolloutWorker
from metaray.cluster.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    truncate_progress,
    write_text_atomic,
)
from metaray.cluster.config import ConfigError, RunConfig
from metaray.cluster.control import NAMESPACE as CONTROL_NAMESPACE
from metaray.cluster.control import RunControl, control_name
from metaray.cluster.grpc_service import CheckedRollout, GrpcService, RunSpec, load_token
from metaray.cluster.metrics import RunMetrics, TensorBoardScalars
from metaray.cluster.progress import ProgressDisplay
from metaray.cluster.runtime import RayRuntime, SerialRuntime
from metaray.cluster.scheduler import TaskScheduler
from metaray.cluster.worker_pool import TrainingError, WorkerPool, is_worker_failure
from metaray.learner import get_algorithm
from metaray.learner.learner import Learner
from metaray.learner.maml import finite_mean
from metaray.learner.rl2 import SpaceSpec, pad_trials
from metaray.tasks import make_family, make_vector_env

MAX_BATCH_LOSSES = 3  # iterations re-collected after sample batches were lost with a node
GRPC_COUNTERS = ("grpc_rollouts_accepted_total", "grpc_rollouts_rejected_total", "grpc_rollouts_learned_total",
                 "grpc_rollouts_stale_total", "grpc_tasks_reassigned_total")


class Trainer:
    def __init__(self, config: RunConfig, run_dir: Path, runtime: SerialRuntime | RayRuntime, resume: bool = False,
                 display: ProgressDisplay | None = None):
        self.config, self.run_dir, self.runtime = config, Path(run_dir), runtime
        self.algo_config = config.algo_config()
        self.algorithm = get_algorithm(config.algo)
        family = make_family(config.task.family, config.task.kwargs)
        sched = config.scheduler
        self.scheduler = TaskScheduler(family, config.seed, sched.strategy, sched.fixed_set_size, sched.regret_share,
                                       sched.regret_temperature, sched.regret_pool_size, sched.regret_smoothing)
        probe = make_vector_env(family, family.sample(1, np.random.default_rng(0)), seed=0)
        obs_space, act_space = probe.single_observation_space, probe.single_action_space
        probe.close()
        self._family, self._spaces = family, (obs_space, act_space)
        self._scheduler_lock = threading.Lock()  # gRPC threads draw tasks too

        self.counters = {"iteration": 0, "wall_time_s": 0.0, "env_steps_total": 0, "episodes_total": 0,
                         "dropped_batches_total": 0, "worker_restarts_total": 0, "tasks_requeued_total": 0,
                         "tasks_reissued_total": 0, "duplicate_results_total": 0, "env_failures_total": 0,
                         "dropped_episodes_total": 0}
        resume_from = latest_checkpoint(self.run_dir) if resume else None
        resume_state = load_checkpoint(resume_from) if resume_from is not None else None

        gpus = runtime.cluster_gpus() if runtime.name == "ray" else float(torch.cuda.is_available())
        if config.learner.device == "cuda" and gpus < 1:
            raise ConfigError("learner.device: 'cuda' asked for, but the cluster has no GPU (use 'auto' or 'cpu')")
        use_gpu = runtime.name == "ray" and config.learner.device != "cpu" and gpus >= 1
        self.ps, variables = runtime.parameter_server()
        self.learner = runtime.spawn(
            Learner, config.algo, self.algo_config.model_dump(), obs_space, act_space, variables, config.seed,
            config.learner.device, config.learner.torch_threads,
            num_cpus=config.learner.num_cpus, num_gpus=1 if use_gpu else 0,
            **({} if use_gpu or runtime.name != "ray" else {"scheduling_strategy": runtime.driver_node(soft=True)}),
        )
        if resume_state is not None:
            tensors, state = resume_state
            runtime.get(self.learner.set_state.remote(tensors, state["learner"]))
            self.counters.update({k: state[k] for k in self.counters if k in state})
            if "scheduler" in state:
                self.scheduler.set_state(state["scheduler"])
            truncate_progress(self.run_dir, self.counters["iteration"])
        self.version = runtime.get(self.learner.get_version.remote())

        self.display = display or ProgressDisplay(config.iterations, self.counters["iteration"], live=False)
        self._variables = variables
        self._restarts_base = self.counters["worker_restarts_total"]
        self.pool = WorkerPool(runtime, self._make_worker, config.workers.num_workers, config.workers,
                               log=self.display.message)
        self.control: Any = None
        self.control_name: str | None = None
        if runtime.name == "ray":
            self.control_name = control_name(self.run_dir)
            self.control = self._spawn_control(config.workers.num_workers)
        self._launch_order: list[int] = []
        self._pending: dict[Any, tuple] = {}
        if resume_state is not None:
            self._restore_workers(*resume_state)
        self.device = runtime.get(self.learner.device_name.remote())
        self.metrics: RunMetrics | None = None
        self.metrics_url: str | None = None
        self.reporters: list[Any] = []
        if config.metrics.port is not None:
            self.metrics = RunMetrics(config.algo, config.task.family, self.run_dir.name)
            try:
                self.metrics_url = self.metrics.serve(config.metrics.port, config.metrics.host)
            except OSError as err:
                raise ConfigError(f"metrics.port: cannot serve on {config.metrics.host}:{config.metrics.port} "
                                  f"({err.strerror or err})") from None
            self.reporters.append(self.metrics)
        if config.metrics.tensorboard:
            self.reporters.append(TensorBoardScalars(self.run_dir / "tensorboard"))
        self.grpc: GrpcService | None = None
        self.grpc_token_source: str | None = None
        self._grpc_version = -1
        if config.grpc.port is not None:
            self.counters.update({k: int(resume_state[1].get(k, 0)) if resume_state else 0 for k in GRPC_COUNTERS})
            self._grpc_base = {k: self.counters[k] for k in GRPC_COUNTERS}
            self._start_grpc()

    def _start_grpc(self) -> None:
        """Serve actors outside Ray (config.grpc); the current weights are published first."""
        cfg = self.config.grpc
        try:
            token, self.grpc_token_source = load_token(cfg.token_env, cfg.token_file, self.run_dir)
            tls = None
            if cfg.tls_cert is not None:
                tls = (Path(cfg.tls_cert).read_bytes(), Path(cfg.tls_key).read_bytes())
        except (ValueError, OSError) as err:
            raise ConfigError(f"grpc: {err}") from None
        obs_space, act_space = self._spaces
        spec = RunSpec(self.run_dir.name, self.config.algo, self.config.task.family, dict(self.config.task.kwargs),
                       self.algo_config.model_dump(), obs_space, act_space, self._family.max_episode_steps)

        def next_task() -> Any:
            with self._scheduler_lock:
                return self.scheduler.next_batch(1)[0]

        self.grpc = GrpcService(spec, cfg, next_task, token, self.metrics.count_grpc if self.metrics else None)
        self._publish_grpc()
        try:
            self.grpc.start(cfg.port, cfg.host, tls)
        except (OSError, RuntimeError) as err:
            self.grpc = None
            reason = getattr(err, "strerror", None) or err
            raise ConfigError(f"grpc.port: cannot serve on {cfg.host}:{cfg.port} ({reason})") from None

    def _publish_grpc(self) -> None:
        found = self._variables.latest(self._grpc_version)
        if found is not None and self.grpc is not None:
            self._grpc_version = found[0]
            self.grpc.publish(*found)

    def _external_trials(self) -> dict[str, Any] | None:
        """RL²: the trials gRPC actors pushed since the last call, as one batch (None: none
        usable). Trials older than max_policy_lag by now are dropped and counted as stale."""
        if self.grpc is None:
            return None
        rows: list[CheckedRollout] = self.grpc.drain_rollouts()
        fresh = [r for r in rows if self.version - r.policy_version <= self.algo_config.max_policy_lag]
        self.counters["grpc_rollouts_stale_total"] += len(rows) - len(fresh)
        if not fresh:
            return None
        batch = pad_trials([(r.obs, r.actions, r.rewards, r.dones, r.logp, r.policy_version, r.task_id) for r in fresh],
                           SpaceSpec.from_spaces(*self._spaces))
        batch["grpc_rollouts"] = len(fresh)
        self.counters["env_steps_total"] += int(batch["mask"].sum())
        self.counters["episodes_total"] += int(batch["dones"].sum())
        return batch

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
        """Give each worker slot its checkpointed random state, then start fresh trials (as the
        checkpointing run did), so the resumed run continues exactly as the uninterrupted one."""
        saved = state.get("workers", {})
        calls = [self.pool.handle(slot).set_state.remote(saved[str(slot)], tensors[f"workers/{slot}/torch_gen"])
                 for slot in self.pool.slots if str(slot) in saved]
        self.runtime.get(calls)
        self.runtime.get([self.pool.handle(slot).restart_trials.remote() for slot in self.pool.slots])
        self._launch_order = [s for s in state.get("launch_order", []) if s in self.pool.workers]

    def _replace_worker(self, slot: int, err: BaseException) -> None:
        """Restart a failed worker, or checkpoint and stop when that is not allowed any more."""
        first = (str(err).strip().splitlines() or [""])[0][:200]
        reason = f"{type(err).__name__}: {first}" if first else type(err).__name__
        try:
            self.pool.replace(slot, reason)
        except TrainingError as stop:
            written = self.checkpoint()
            where = f"a checkpoint was written ({written.name}), continue with --resume" if written else \
                "no iteration had completed, so there is no checkpoint"
            raise TrainingError(f"{stop}; {where}") from None
        self.counters["worker_restarts_total"] = self._restarts_base + self.pool.restarts_total

    def _spawn_control(self, num_workers: int) -> Any:
        """The run's named control actor, on the driver's node (it lives and dies with the driver)."""
        return self.runtime.spawn(RunControl, num_workers, self.config.workers.max_workers, num_cpus=0,
                                  name=self.control_name, namespace=CONTROL_NAMESPACE,
                                  scheduling_strategy=self.runtime.driver_node(soft=False))

    def _poll_control(self) -> None:
        """Apply a `metaray scale` request: the pool is resized towards the new target."""
        if self.control is None:
            return
        try:
            target = self.runtime.get(self.control.get_target.remote())
        except Exception as err:  # should not happen on the driver's node; training must not stop for it
            if not is_worker_failure(err):
                raise
            self.display.message(f"run control actor lost ({type(err).__name__}); registering it again")
            self.control = self._spawn_control(self.pool.target())
            return
        if target != self.pool.target():
            self.pool.resize(target)

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

    # ------------------------------------------------------------------ loop
    def run(self) -> dict[str, Any]:
        self._start = time.perf_counter() - self.counters["wall_time_s"]
        self._last_t, self._last_steps = time.perf_counter(), self.counters["env_steps_total"]
        self._last_record: dict[str, Any] = {}
        self._write_driver_info("running")
        state = "failed"
        try:
            if self.algorithm.mode == "async":
                self._run_async()
            else:
                self._run_sync()
            state = "finished"
        except KeyboardInterrupt:
            state = "interrupted"
            self.checkpoint()
            raise
        finally:
            self.display.close()
            self.close()
            self._write_driver_info(state)
        return self._last_record

    def close(self) -> None:
        """Stop the gRPC service and the metrics endpoint, flush TensorBoard (idempotent)."""
        if self.grpc is not None:
            self.grpc.stop()
        for reporter in self.reporters:
            reporter.close()
        self.reporters = []

    def _write_driver_info(self, state: str) -> None:
        """`driver.json`: who runs this run and where its metrics are (read by `metaray status`)."""
        info = {"state": state, "pid": os.getpid(), "host": socket.gethostname(), "metrics_url": self.metrics_url,
                "runtime": self.runtime.name, "ray_address": getattr(self.runtime, "address", None),
                "control_actor": self.control_name, "grpc_address": self.grpc.address if self.grpc else None,
                "target_iterations": self.config.iterations, "updated": time.time()}
        write_text_atomic(self.run_dir / "driver.json", json.dumps(info, indent=1) + "\n")

    def _run_async(self) -> None:
        """Stream mode (RL²): every worker always has one sampling call in flight. A failed
        worker is restarted and sampling goes on; new workers join, retired ones leave once
        their call in flight has returned."""
        rt, algo, pool = self.runtime, self.algo_config, self.pool
        pending: dict[Any, tuple[int, Any, Any]] = {}

        def launch(slot: int) -> None:
            handle = pool.handle(slot)
            batch, info = handle.sample.options(num_returns=2).remote(algo.slots_per_worker)
            pending[info] = (slot, batch, handle)

        self._pending = pending
        for slot in self._launch_order + [s for s in pool.slots if s not in self._launch_order]:
            launch(slot)
        collected: list[Any] = []
        infos: list[dict[str, Any]] = []
        trials = 0
        # with a gRPC service, also look at its queue at least every 50 ms
        timeout = 0.05 if self.grpc is not None else None
        while self.counters["iteration"] < self.config.iterations:
            ready, _ = rt.wait(list(pending), num_returns=1, timeout=timeout)
            if ready:
                slot, batch, handle = pending.pop(ready[0])
                info = self._result_or_replace(ready[0], slot, handle)
                if info is None:
                    launch(slot)
                    continue
                if slot in pool.retiring:
                    pool.retire(slot)
                else:
                    launch(slot)
                for joined in pool.admit_ready():
                    launch(joined)
                self._count_worker_info(info)
                if self.version - info["policy_version"] > algo.max_policy_lag:
                    self.counters["dropped_batches_total"] += 1
                else:
                    collected.append(batch)
                    infos.append(info)
                    trials += info["num_trials"]
            external = self._external_trials()
            if external is not None:
                collected.append(external)
                trials += external["grpc_rollouts"]
            if trials < algo.trials_per_update:
                continue
            try:
                stats = rt.get(self.learner.update.remote(*collected))
            except Exception as err:
                if not is_worker_failure(err):
                    raise
                # a batch on a lost node: drop what was collected (the update did not run), go on
                self.display.message(f"a sample batch was lost ({type(err).__name__}); dropping {len(collected)} batches")
                self.counters["dropped_batches_total"] += len(collected)
                collected, infos, trials = [], [], 0
                continue
            extra = {"sample_s_mean": float(np.mean([x["sample_s"] for x in infos])) if infos else 0.0}
            rates = [(x["success_rate"], x["num_trials"]) for x in infos if "success_rate" in x]
            if rates:  # families that report success (Meta-World): share of successful episodes
                extra["success_rate"] = sum(r * k for r, k in rates) / sum(k for _, k in rates)
            self._end_iteration(stats, extra)
            collected, infos, trials = [], [], 0

    def _run_sync(self) -> None:
        """Meta-batch mode (MAML family): scheduler -> workers -> learner, one iteration at a time.
        Between iterations: resize, probe, restart dead workers. A worker that fails mid-iteration
        is restarted and its tasks re-run, so the iteration completes with the same task set."""
        rt, algo, pool = self.runtime, self.algo_config, self.pool
        while self.counters["iteration"] < self.config.iterations:
            for slot in list(pool.retiring):
                pool.retire(slot)
            pool.admit_ready()
            if pool.probe():
                self.counters["worker_restarts_total"] = self._restarts_base + pool.restarts_total
            t0 = time.perf_counter()
            with self._scheduler_lock:
                tasks = self.scheduler.next_batch(algo.meta_batch_size)
            n_external = min(self.config.grpc.external_tasks, len(tasks)) if self.grpc is not None else 0
            if n_external:
                self.grpc.offer(tasks[:n_external], self.version)
            ray_tasks = tasks[n_external:]
            external: list[tuple[dict[str, Any], dict[str, Any]]] = []
            for attempt in range(MAX_BATCH_LOSSES + 1):
                done = self._collect_tasks(ray_tasks)
                if n_external and attempt == 0:
                    external, missing = self.grpc.close_offer()
                    if missing:  # nobody took them, or their actor is late: the Ray workers run them
                        self.counters["grpc_tasks_reassigned_total"] += len(missing)
                        ray_tasks = ray_tasks + missing
                        done += self._collect_tasks(missing)
                sampling_s = time.perf_counter() - t0
                batches = [batch for batch, _ in done]
                if external:
                    batches.append({"policy_version": self.version, "tasks": [r for r, _ in external],
                                    "grpc_rollouts": sum(info["rollouts"] for _, info in external)})
                try:
                    stats = rt.get(self.learner.update.remote(*batches))
                    break
                except Exception as err:
                    # A batch kept on a node that died after its worker answered is lost before the
                    # learner could read it (the update did not run): collect the same tasks again.
                    if not is_worker_failure(err) or attempt == MAX_BATCH_LOSSES:
                        raise
                    self.display.message(f"a sample batch was lost ({type(err).__name__}); re-running the iteration's tasks")
                    self.counters["tasks_requeued_total"] += len(ray_tasks)
                    if pool.probe():
                        self.counters["worker_restarts_total"] = self._restarts_base + pool.restarts_total
            infos = [info for _, info in done]
            for info in infos:
                self._count_worker_info(info)
                for task_id, pre, post, *steps in info["per_task"]:
                    self.scheduler.observe(task_id, return_pre=pre, return_post=post,
                                           **({"env_steps": steps[0]} if steps else {}))
            for _, info in external:
                self._count_worker_info(info)
                self.scheduler.observe(info["task_id"], return_pre=info["return_pre"], return_post=info["return_post"],
                                       env_steps=info["env_steps"])
            returns = [(pre, post) for x in infos for _, pre, post, *_ in x["per_task"]]
            returns += [(x["return_pre"], x["return_post"]) for _, x in external]
            n = len(returns)
            success = {  # families that report success (Meta-World), when every part has it
                f"success_rate_{stage}": sum(x[f"success_{stage}"] * x["num_tasks"] for x in infos) / n
                for stage in ("pre", "post") if not external and infos and all(f"success_{stage}" in x for x in infos)
            }
            self._end_iteration(stats, {
                **success, **self.scheduler.regret_stats(),
                "return_pre": finite_mean([pre for pre, _ in returns]),
                "return_post": finite_mean([post for _, post in returns]),
                "sampling_s": sampling_s,
                "sample_s_mean": float(np.mean([x["sample_s"] for x in infos] + [x["sample_s"] for _, x in external])),
            })

    def _collect_tasks(self, tasks: list[Any]) -> list[tuple[Any, dict[str, Any]]]:
        """Run `tasks` on the Ray workers, balanced by expected cost."""
        if not tasks:
            return []
        parts = self.scheduler.balance(tasks, len(self.pool))
        return self._collect([(slot, part) for slot, part in zip(self.pool.slots, parts, strict=True) if part])

    def _collect(self, jobs: list[tuple[int, list[Any]]]) -> list[tuple[Any, dict[str, Any]]]:
        """Run each (slot, tasks) job; returns (batch ref, info) per job, in job order.

        A job whose worker fails is re-run on the restarted worker (tasks_requeued_total). A job
        running past workers.task_timeout_s is issued again to another worker; the first result
        wins and the other is discarded (tasks_reissued_total, duplicate_results_total)."""
        rt, pool = self.runtime, self.pool
        timeout = self.config.workers.task_timeout_s
        pending: dict[Any, tuple[int, int, Any, Any, float]] = {}
        done: dict[int, tuple[Any, dict[str, Any]]] = {}
        reissued: set[int] = set()

        def submit(j: int, slot: int) -> None:
            handle = pool.handle(slot)
            batch, info = handle.collect.options(num_returns=2).remote(jobs[j][1], self.version)
            pending[info] = (j, slot, batch, handle, time.monotonic())

        for j, (slot, _) in enumerate(jobs):
            submit(j, slot)
        while len(done) < len(jobs):
            ready, _ = rt.wait(list(pending), num_returns=1, timeout=None if timeout is None else min(timeout, 1.0))
            if not ready:
                self._reissue_slow_jobs(jobs, pending, done, reissued, submit, timeout)
                continue
            j, slot, batch, handle, _ = pending.pop(ready[0])
            info = self._result_or_replace(ready[0], slot, handle)
            if info is None:
                if j not in done and all(p[0] != j for p in pending.values()):
                    self.counters["tasks_requeued_total"] += len(jobs[j][1])
                    submit(j, slot)
                continue
            if j in done:
                self.counters["duplicate_results_total"] += 1
                continue
            done[j] = (batch, info)
        self.counters["duplicate_results_total"] += len(pending)  # still running: discarded
        return [done[j] for j in range(len(jobs))]

    def _reissue_slow_jobs(self, jobs: list[tuple[int, list[Any]]], pending: dict[Any, tuple], done: dict[int, Any],
                           reissued: set[int], submit: Any, timeout: float) -> None:
        now = time.monotonic()
        for j, slot, _, _, started in list(pending.values()):
            if j in done or j in reissued or now - started <= timeout:
                continue
            busy = {p[1] for p in pending.values()}
            target = next((s for s in self.pool.slots if s not in busy), None)
            if target is None:  # only to an idle worker: a busy one would queue it behind its own work
                continue
            self.display.message(f"tasks of rollout worker {slot} exceed task_timeout_s={timeout}; "
                                 f"issuing them to worker {target} as well")
            reissued.add(j)
            self.counters["tasks_reissued_total"] += len(jobs[j][1])
            submit(j, target)

    def _end_iteration(self, stats: dict[str, Any], extra: dict[str, Any]) -> None:
        """Count the iteration, append its progress row, show it, checkpoint when due."""
        self.version = stats["policy_version"]
        self.counters["iteration"] += 1
        if self.grpc is not None:
            self._publish_grpc()
            self.counters["grpc_rollouts_learned_total"] += int(stats.pop("grpc_rollouts_learned", 0))
            for key, value in self.grpc.counts.items():
                self.counters[key] = self._grpc_base[key] + value
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
            **{k: self.counters[k] for k in ("worker_restarts_total", "tasks_requeued_total", "tasks_reissued_total",
                                             "duplicate_results_total", "env_failures_total", "dropped_episodes_total",
                                             "dropped_batches_total")},
            **({k: self.counters[k] for k in GRPC_COUNTERS} if self.grpc is not None else {}),
            **extra,
            **stats,
        }
        self._last_t, self._last_steps = now, self.counters["env_steps_total"]
        self._append_progress(record)
        self._poll_control()
        for reporter in self.reporters:
            reporter.observe(record)
        self.display.update(record)
        self._last_record = record
        if self.counters["iteration"] % self.config.checkpoint.every == 0 or self.counters["iteration"] >= self.config.iterations:
            self.checkpoint()

    # ------------------------------------------------------------ outputs
    def _append_progress(self, record: dict[str, Any]) -> None:
        with open(self.run_dir / "progress.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def checkpoint(self) -> Path | None:
        if self.counters["iteration"] == 0:
            return None
        tensors, learner_meta = self.runtime.get(self.learner.get_state.remote())
        workers = {}
        for slot in self.pool.slots:  # a worker that just died has no state to give: it starts fresh
            try:
                meta, torch_state = self.runtime.get(self.pool.handle(slot).get_state.remote())
            except Exception as err:
                if not is_worker_failure(err):
                    raise
                continue
            workers[str(slot)] = meta
            tensors[f"workers/{slot}/torch_gen"] = torch_state
        for slot in self.pool.slots:
            with contextlib.suppress(Exception):
                self.runtime.get(self.pool.handle(slot).restart_trials.remote())
        state = {**self.counters, "policy_version": self.version, "learner": learner_meta, "algo": self.config.algo,
                 "scheduler": self.scheduler.get_state(), "workers": workers,
                 "launch_order": [entry[0] for entry in self._pending.values()]}
        return save_checkpoint(self.run_dir, self.counters["iteration"], tensors, state, self.config.checkpoint.keep)
