"""What a run reports while it trains: Prometheus metrics served by the driver, TensorBoard scalars.

Both are fed from the same per-iteration progress row the trainer writes to `progress.jsonl`,
so worker-side counts (env steps, episodes, env failures) arrive already aggregated over all
workers and one scrape target shows the whole job. Every metric carries the labels `algo`,
`family` and `run`; names are `metaray_*` as listed in DESIGN.md and exported as `METRIC_NAMES`
(the Grafana dashboard test checks its queries against the live exposition).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LABELS = ("algo", "family", "run")
SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)

# progress-row key -> counter (cumulative totals in the row; the counter gets the increase)
COUNTERS = {
    "env_steps_total": ("metaray_env_steps", "Environment steps collected by all rollout workers."),
    "episodes_total": ("metaray_episodes", "Episodes collected by all rollout workers."),
    "env_failures_total": ("metaray_env_failures", "Env failures (exception, NaN, hang): env recreated, episode dropped."),
    "worker_restarts_total": ("metaray_worker_restarts", "Rollout workers restarted after dying."),
    "tasks_requeued_total": ("metaray_tasks_requeued", "Tasks re-queued after a worker failure or timeout."),
    "dropped_batches_total": ("metaray_dropped_batches", "Sample batches dropped for exceeding max_policy_lag."),
    "dropped_episodes_total": ("metaray_dropped_episodes", "Episodes (stream algorithms: trials) dropped after an env failure."),
    "tasks_reissued_total": ("metaray_tasks_reissued", "Tasks issued to a second worker after task_timeout_s."),
    "duplicate_results_total": ("metaray_duplicate_results", "Results discarded because another worker's came first."),
    "grpc_rollouts_accepted_total": ("metaray_grpc_rollouts_accepted", "Rollouts pushed by gRPC actors that passed every check."),
    "grpc_rollouts_rejected_total": ("metaray_grpc_rollouts_rejected", "Rollouts pushed by gRPC actors and refused (invalid, stale, over a limit, queue full)."),
    "grpc_rollouts_learned_total": ("metaray_grpc_rollouts_learned", "Rollouts from gRPC actors the learner trained on."),
    "grpc_rollouts_stale_total": ("metaray_grpc_rollouts_stale", "Accepted gRPC rollouts dropped for exceeding max_policy_lag by the time of the update."),
    "grpc_tasks_reassigned_total": ("metaray_grpc_tasks_reassigned", "Tasks offered to gRPC actors that Ray workers ran instead (not taken, or late)."),
}
# progress-row key -> gauge
GAUGES = {
    "iteration": ("metaray_iteration", "Completed iterations (learner updates)."),
    "policy_version": ("metaray_policy_version", "Version of the weights on the parameter server."),
    "policy_lag_mean": ("metaray_policy_lag", "Mean versions between the weights a batch was sampled with and the learner's."),
    "workers_alive": ("metaray_workers_alive", "Rollout workers alive."),
    "workers_pending": ("metaray_workers_pending", "Rollout workers asked for that do not take work yet (starting, in restart backoff, or waiting for a node with room)."),
    "env_steps_per_s": ("metaray_env_steps_per_second", "Env steps per second over the last iteration."),
    "meta_loss": ("metaray_meta_loss", "Meta-loss (outer objective) after the last update."),
    "policy_loss": ("metaray_meta_loss", None),  # a stream algorithm's policy loss reports under the same name
    "kl": ("metaray_kl", "KL between the policies before and after the last update."),
    "approx_kl": ("metaray_kl", None),
    "grad_norm": ("metaray_grad_norm", "Norm of the (meta-)gradient of the last update."),
}
RETURNS = {"return_pre": "pre", "return_post": "post", "trial_return": "trial",
           "heldout_mean_return": "heldout"}  # eval.every: the held-out headline return
HISTOGRAMS = {
    "learner_step_s": ("metaray_learner_step_seconds", "Seconds per learner update."),
    "sampling_s": ("metaray_sampling_seconds", "Seconds to sample one iteration's data."),
    "sample_s_mean": ("metaray_worker_sample_seconds", "Seconds per rollout-worker sampling call (mean over the iteration)."),
}
RETURN_NAME = "metaray_return"
GRPC_NAME = "metaray_grpc_requests"

METRIC_NAMES = sorted(
    {f"{name}_total" for name, _ in COUNTERS.values()} | {name for name, _ in GAUGES.values()}
    | {name for name, _ in HISTOGRAMS.values()} | {RETURN_NAME, f"{GRPC_NAME}_total"}
)


class RunMetrics:
    """The Prometheus metrics of one run, in their own registry (several runs can share a process)."""

    def __init__(self, algo: str, family: str, run: str):
        self.registry = CollectorRegistry()
        labels = {"algo": algo, "family": family, "run": run}
        self._counters: dict[str, Any] = {}
        self._gauges: dict[str, Any] = {}
        self._histograms: dict[str, Any] = {}
        self._last: dict[str, float] = {}
        made: dict[str, Any] = {}
        for key, (name, doc) in COUNTERS.items():
            self._counters[key] = Counter(name, doc, LABELS, registry=self.registry).labels(**labels)
        for key, (name, doc) in GAUGES.items():
            if name not in made:
                made[name] = Gauge(name, doc, LABELS, registry=self.registry).labels(**labels)
            self._gauges[key] = made[name]
        for key, (name, doc) in HISTOGRAMS.items():
            self._histograms[key] = Histogram(name, doc, LABELS, buckets=SECONDS_BUCKETS,
                                              registry=self.registry).labels(**labels)
        returns = Gauge(RETURN_NAME, "Mean true return of the last iteration: stage pre/post adaptation (meta-batch "
                        "algorithms) or trial (stream algorithms, total reward per trial); stage heldout: the last "
                        "held-out evaluation (eval.every).", (*LABELS, "stage"), registry=self.registry)
        # children made on first value: a stream run has no pre/post series, a meta-batch run no trial series
        self._returns = {key: (lambda stage=stage: returns.labels(**labels, stage=stage)) for key, stage in RETURNS.items()}
        self.grpc_requests = Counter(GRPC_NAME, "gRPC requests served, by method and status code.",
                                     (*LABELS, "method", "code"), registry=self.registry)
        self._grpc_labels = labels
        self.address: tuple[str, int] | None = None
        self._server: Any = None

    def count_grpc(self, method: str, code: str) -> None:
        self.grpc_requests.labels(**self._grpc_labels, method=method, code=code).inc()

    def observe(self, record: dict[str, Any]) -> None:
        """Take one progress row: counters advance by the row's increase, gauges take its values."""
        for key, counter in self._counters.items():
            if key in record:
                value = float(record[key])
                delta = value - self._last.get(key, 0.0)
                if delta > 0:
                    counter.inc(delta)
                self._last[key] = value
        for key, gauge in self._gauges.items():
            if _is_number(record.get(key)):
                gauge.set(float(record[key]))
        for key, gauge in self._returns.items():
            if _is_number(record.get(key)):
                gauge().set(float(record[key]))
        for key, hist in self._histograms.items():
            if _is_number(record.get(key)):
                hist.observe(float(record[key]))

    def serve(self, port: int, host: str = "0.0.0.0") -> str:
        """Start the HTTP endpoint; returns its URL (the node's address when bound to all interfaces)."""
        self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        bound = self._server.server_address[1]
        shown = _node_ip() if host in ("0.0.0.0", "::", "") else host
        self.address = (shown, bound)
        return f"http://{shown}:{bound}/metrics"

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class TensorBoardScalars:
    """Every numeric field of each progress row as a TensorBoard scalar, step = env steps, grouped
    by what it is (returns/, throughput/, learner/, runtime/)."""

    GROUPS = {
        "returns": ("trial_return", "return_pre", "return_post"),
        "throughput": ("env_steps_per_s", "sampling_s", "sample_s_mean", "learner_step_s"),
        "heldout": ("heldout_mean_return", "heldout_return_pre", "heldout_success_rate", "heldout_success_last",
                    "heldout_normalised_score",
                    "heldout_eval_s"),
        "runtime": ("iteration", "policy_version", "policy_lag_mean", "policy_lag_max", "workers_alive",
                    "worker_restarts_total", "tasks_requeued_total", "dropped_batches_total", "env_failures_total",
                    "episodes_total", "wall_time_s"),
    }

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.writer: Any = None  # made at the first record: a run that never starts writes nothing
        self._group = {key: group for group, keys in self.GROUPS.items() for key in keys}

    def observe(self, record: dict[str, Any]) -> None:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter  # imported only when asked for

            self.writer = SummaryWriter(log_dir=str(self.log_dir), flush_secs=5)
        step = int(record["env_steps_total"])
        for key, value in record.items():
            if key == "env_steps_total" or not _is_number(value):
                continue
            self.writer.add_scalar(f"{self._group.get(key, 'learner')}/{key}", float(value), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _node_ip() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except Exception:  # only a nicer address to print
        pass
    return socket.gethostname()
