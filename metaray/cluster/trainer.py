"""The training loop: workers -> learner -> parameter server -> progress and checkpoints.

The same loop runs under Ray (actors) and in one process (`--serial`); only the runtime differs.
For asynchronous algorithms (RL²) every worker always has one sampling call in flight, so
sampling continues while the learner updates; batches older than `max_policy_lag` versions are
dropped and counted.
"""

from __future__ import annotations

import json
import os
import socket
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
from metaray.cluster.metrics import RunMetrics, TensorBoardScalars
from metaray.cluster.progress import ProgressDisplay
from metaray.cluster.runtime import RayRuntime, SerialRuntime
from metaray.cluster.scheduler import TaskScheduler
from metaray.learner import get_algorithm
from metaray.learner.learner import Learner
from metaray.tasks import make_family, make_vector_env


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a worker died); a checkpoint was written first."""


class Trainer:
    def __init__(self, config: RunConfig, run_dir: Path, runtime: SerialRuntime | RayRuntime, resume: bool = False,
                 display: ProgressDisplay | None = None):
        self.config, self.run_dir, self.runtime = config, Path(run_dir), runtime
        self.algo_config = config.algo_config()
        self.algorithm = get_algorithm(config.algo)
        family = make_family(config.task.family, config.task.kwargs)
        self.scheduler = TaskScheduler(family, config.seed)
        probe = make_vector_env(family, family.sample(1, np.random.default_rng(0)), seed=0)
        obs_space, act_space = probe.single_observation_space, probe.single_action_space
        probe.close()

        self.counters = {"iteration": 0, "wall_time_s": 0.0, "env_steps_total": 0, "episodes_total": 0,
                         "dropped_batches_total": 0, "worker_restarts_total": 0}
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
        )
        if resume_state is not None:
            tensors, state = resume_state
            runtime.get(self.learner.set_state.remote(tensors, state["learner"]))
            self.counters.update({k: state[k] for k in self.counters if k in state})
            if "scheduler" in state:
                self.scheduler.set_state(state["scheduler"])
            truncate_progress(self.run_dir, self.counters["iteration"])
        self.version = runtime.get(self.learner.get_version.remote())

        # Worker seeds differ per resume point so a resumed run does not replay its tasks.
        seeds = np.random.SeedSequence([config.seed, self.counters["iteration"]]).generate_state(config.workers.num_workers)
        self.workers = [
            runtime.spawn(
                RolloutWorker, i, config.algo, self.algo_config.model_dump(), config.task.family,
                config.task.kwargs, int(seeds[i]), variables, config.workers.torch_threads, num_cpus=1,
            )
            for i in range(config.workers.num_workers)
        ]
        self.display = display or ProgressDisplay(config.iterations, self.counters["iteration"], live=False)
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
        """Stop the metrics endpoint and flush TensorBoard (idempotent)."""
        for reporter in self.reporters:
            reporter.close()
        self.reporters = []

    def _write_driver_info(self, state: str) -> None:
        """`driver.json`: who runs this run and where its metrics are (read by `metaray status`)."""
        info = {"state": state, "pid": os.getpid(), "host": socket.gethostname(), "metrics_url": self.metrics_url,
                "runtime": self.runtime.name, "ray_address": getattr(self.runtime, "address", None),
                "target_iterations": self.config.iterations, "updated": time.time()}
        write_text_atomic(self.run_dir / "driver.json", json.dumps(info, indent=1) + "\n")

    def _run_async(self) -> None:
        """Stream mode (RL²): every worker always has one sampling call in flight."""
        rt, algo = self.runtime, self.algo_config
        pending: dict[Any, tuple[int, Any]] = {}

        def launch(i: int) -> None:
            batch, info = self.workers[i].sample.options(num_returns=2).remote(algo.slots_per_worker)
            pending[info] = (i, batch)

        for i in range(len(self.workers)):
            launch(i)
        collected: list[Any] = []
        infos: list[dict[str, Any]] = []
        trials = 0
        while self.counters["iteration"] < self.config.iterations:
            ready, _ = rt.wait(list(pending), num_returns=1)
            i, batch = pending.pop(ready[0])
            info = self._get_worker_result(ready[0], i)
            launch(i)
            self.counters["env_steps_total"] += info["env_steps"]
            self.counters["episodes_total"] += info["episodes"]
            if self.version - info["policy_version"] > algo.max_policy_lag:
                self.counters["dropped_batches_total"] += 1
                continue
            collected.append(batch)
            infos.append(info)
            trials += info["num_trials"]
            if trials < algo.trials_per_update:
                continue
            stats = rt.get(self.learner.update.remote(*collected))
            self._end_iteration(stats, {"sample_s_mean": float(np.mean([x["sample_s"] for x in infos]))})
            collected, infos, trials = [], [], 0

    def _run_sync(self) -> None:
        """Meta-batch mode (MAML family): scheduler -> workers -> learner, one iteration at a time."""
        rt, algo = self.runtime, self.algo_config
        while self.counters["iteration"] < self.config.iterations:
            t0 = time.perf_counter()
            tasks = self.scheduler.next_batch(algo.meta_batch_size)
            parts = TaskScheduler.assign(tasks, len(self.workers))
            calls = [(i, self.workers[i].collect.options(num_returns=2).remote(part, self.version))
                     for i, part in enumerate(parts) if part]
            infos = [self._get_worker_result(info, i) for i, (_, info) in calls]
            sampling_s = time.perf_counter() - t0
            for info in infos:
                self.counters["env_steps_total"] += info["env_steps"]
                self.counters["episodes_total"] += info["episodes"]
                for task_id, pre, post in info["per_task"]:
                    self.scheduler.observe(task_id, return_pre=pre, return_post=post)
            stats = rt.get(self.learner.update.remote(*[batch for _, (batch, _) in calls]))
            n = sum(x["num_tasks"] for x in infos)
            self._end_iteration(stats, {
                "return_pre": sum(x["return_pre"] * x["num_tasks"] for x in infos) / n,
                "return_post": sum(x["return_post"] * x["num_tasks"] for x in infos) / n,
                "sampling_s": sampling_s,
                "sample_s_mean": float(np.mean([x["sample_s"] for x in infos])),
            })

    def _end_iteration(self, stats: dict[str, Any], extra: dict[str, Any]) -> None:
        """Count the iteration, append its progress row, show it, checkpoint when due."""
        self.version = stats["policy_version"]
        self.counters["iteration"] += 1
        now = time.perf_counter()
        self.counters["wall_time_s"] = now - self._start
        record = {
            "iteration": self.counters["iteration"],
            "wall_time_s": round(self.counters["wall_time_s"], 3),
            "env_steps_total": self.counters["env_steps_total"],
            "env_steps_per_s": (self.counters["env_steps_total"] - self._last_steps) / max(now - self._last_t, 1e-9),
            "episodes_total": self.counters["episodes_total"],
            "policy_version": self.version,
            "workers_alive": len(self.workers),
            "worker_restarts_total": self.counters["worker_restarts_total"],
            "dropped_batches_total": self.counters["dropped_batches_total"],
            **extra,
            **stats,
        }
        self._last_t, self._last_steps = now, self.counters["env_steps_total"]
        self._append_progress(record)
        for reporter in self.reporters:
            reporter.observe(record)
        self.display.update(record)
        self._last_record = record
        if self.counters["iteration"] % self.config.checkpoint.every == 0 or self.counters["iteration"] >= self.config.iterations:
            self.checkpoint()

    def _get_worker_result(self, future: Any, index: int) -> dict[str, Any]:
        try:
            return self.runtime.get(future)
        except Exception as err:
            if type(err).__name__ not in ("RayActorError", "ActorDiedError", "ActorUnavailableError"):
                raise
            self.checkpoint()
            raise TrainingError(
                f"rollout worker {index} died ({type(err).__name__}); a checkpoint was written, "
                f"continue with --resume"
            ) from None

    # ------------------------------------------------------------ outputs
    def _append_progress(self, record: dict[str, Any]) -> None:
        with open(self.run_dir / "progress.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def checkpoint(self) -> Path | None:
        if self.counters["iteration"] == 0:
            return None
        tensors, learner_meta = self.runtime.get(self.learner.get_state.remote())
        state = {**self.counters, "policy_version": self.version, "learner": learner_meta, "algo": self.config.algo,
                 "scheduler": self.scheduler.get_state()}
        return save_checkpoint(self.run_dir, self.counters["iteration"], tensors, state, self.config.checkpoint.keep)
