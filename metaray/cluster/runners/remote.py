"""The gRPC service attached to a runner: actors outside Ray take tasks and push rollouts.

A meta-batch runner offers part of each meta-batch to them (`offer` / `collect_offer`); a stream
runner drains their pushed trials into a batch (`drain`). After each update the new version is
published to them, and the service's counters join the progress record and the checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metaray.cluster.config import ConfigError
from metaray.cluster.grpc_service import GrpcService, RunSpec, load_token
from metaray.core import Batch, TaskResult

COUNTERS = ("grpc_rollouts_accepted_total", "grpc_rollouts_rejected_total", "grpc_rollouts_learned_total",
            "grpc_rollouts_stale_total", "grpc_tasks_reassigned_total")


class RemoteActors:
    def __init__(self, runner: Any, saved: dict[str, Any]):
        """Start the service with the current weights published; `saved` is a checkpoint's state."""
        self.runner = runner
        self.counts = {k: int(saved.get(k, 0)) for k in COUNTERS}
        self.base = dict(self.counts)  # the service's own counts start at 0 in this process
        self.version = -1
        config, cfg = runner.config, runner.config.grpc
        try:
            token, self.token_source = load_token(cfg.token_env, cfg.token_file, runner.run_dir)
            tls = None
            if cfg.tls_cert is not None:
                tls = (Path(cfg.tls_cert).read_bytes(), Path(cfg.tls_key).read_bytes())
        except (ValueError, OSError) as err:
            raise ConfigError(f"grpc: {err}") from None
        algorithm, algo_config = runner.algorithm, runner.algo_config
        obs_space, act_space = runner._spaces
        spec = RunSpec(runner.run_dir.name, config.algo, algorithm.mode, algorithm.wire_spec(algo_config),
                       config.task.family, dict(config.task.kwargs), algo_config.model_dump(), obs_space, act_space,
                       runner._family.max_episode_steps)
        count = runner.metrics.count_grpc if runner.metrics else None
        self.service = GrpcService(spec, cfg, runner.next_task, token, count)
        self.publish()
        try:
            self.service.start(cfg.port, cfg.host, tls)
        except (OSError, RuntimeError) as err:
            reason = getattr(err, "strerror", None) or err
            raise ConfigError(f"grpc.port: cannot serve on {cfg.host}:{cfg.port} ({reason})") from None

    def publish(self) -> None:
        found = self.runner._variables.latest(self.version)
        if found is not None:
            self.version = found[0]
            self.service.publish(*found)

    # ------------------------------------------------------------------ meta-batch
    def offer(self, tasks: list[Any], version: int) -> int:
        """Offer the first grpc.external_tasks of `tasks`; returns how many were offered."""
        n = min(self.runner.config.grpc.external_tasks, len(tasks))
        if n:
            self.service.offer(tasks[:n], version)
        return n

    def collect_offer(self) -> tuple[list[tuple[TaskResult, dict[str, Any]]], list[Any]]:
        """The offered tasks actors delivered, and those to run on Ray workers (counted)."""
        results, missing = self.service.close_offer()
        self.counts["grpc_tasks_reassigned_total"] += len(missing)
        return results, missing

    # ------------------------------------------------------------------ stream
    def drain(self, version: int, max_policy_lag: int) -> tuple[Batch | None, dict[str, int]]:
        """The trials actors pushed since the last call as one batch of the algorithm's (None:
        none usable; too old ones are dropped and counted as stale), and their env steps and
        episodes."""
        rows = self.service.drain_rollouts()
        fresh = [r for r in rows if version - r.policy_version <= max_policy_lag]
        self.counts["grpc_rollouts_stale_total"] += len(rows) - len(fresh)
        if not fresh:
            return None, {}
        runner = self.runner
        payload = runner.algorithm.from_rollouts(fresh, runner.algo_config, *runner._spaces)
        oldest = min(r.policy_version for r in fresh)
        counts = {"env_steps": sum(len(r.rewards) for r in fresh), "episodes": int(sum(r.dones.sum() for r in fresh))}
        return Batch(oldest, payload, remote_rollouts=len(fresh)), counts

    # ------------------------------------------------------------------ after each update
    def after_update(self, stats: dict[str, Any]) -> dict[str, int]:
        """Publish the new version; the counters for the progress record."""
        self.publish()
        self.counts["grpc_rollouts_learned_total"] += int(stats.pop("grpc_rollouts_learned", 0))
        for key, value in self.service.counts.items():
            self.counts[key] = self.base[key] + value
        return dict(self.counts)

    def checkpoint_counters(self) -> dict[str, int]:
        return dict(self.counts)

    def observe(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        self.service.stop()
