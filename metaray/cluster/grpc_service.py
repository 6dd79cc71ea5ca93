"""The gRPC service for rollout actors outside Ray: versioned parameters out, rollouts in.

It runs in the driver beside the training loop (`metaray train --grpc-port P`). Actors ask
for a task (`GetTask`, from the run's task scheduler), fetch or watch the parameters, run
their env loop wherever they are, and push the rollouts back. What enters training:

- stream algorithms: each pushed trial joins the learner's queue like a Ray worker's trial,
  under the same policy-lag rule (a trial that has grown too old by the time the learner
  would use it is dropped and counted as stale); the algorithm's `from_rollouts` makes them
  its batch.
- meta-batch algorithms: `grpc.external_tasks` tasks of each meta-batch are offered to
  gRPC actors; an actor pushes all stages' episodes of its task (it adapts locally, as a Ray
  worker does) and the task joins that iteration's batch as a `TaskResult`. A task nobody
  took, or whose actor is late past `grpc.task_timeout_s`, is run by the Ray workers instead.

What the stages and rollout counts are comes from the algorithm's `WireSpec`; this module knows
no algorithm.

Every call must carry `authorization: Bearer <token>` (constant-time compare). Every field of
every rollout is checked (assignment, actor, task, policy version, dtypes, shapes, lengths,
episode ends, finiteness, observation bounds, action range) before anything is queued, and a
push is all or nothing. Rejections use the matching gRPC status code and are counted
(`grpc_rollouts_rejected_total`, `metaray_grpc_requests_total{method,code}`). Each parameter
version is serialized once and the same bytes are sent to every client.
"""

from __future__ import annotations

import collections
import hmac
import json
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import gymnasium as gym
import numpy as np

from metaray.core import Mode, TaskResult, WireSpec, episodes_from_rollouts, mean_episode_return
from metaray.protocol import RolloutArrays, decode_tensor, encode_tensor
from metaray.protocol import metaray_pb2 as pb
from metaray.protocol.codec import SERVICE
from metaray.tasks import Task

log = logging.getLogger(__name__)
MAX_WAIT_S = 30.0  # longest a GetParameters / GetTask call may wait for something to appear
MAX_ACTOR_ID = 128


class Reject(Exception):
    """A request the service refuses: a gRPC status code and a one-line reason."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def _invalid(message: str) -> Reject:
    return Reject(grpc.StatusCode.INVALID_ARGUMENT, message)


@dataclass(frozen=True)
class RunSpec:
    """What the service must know about the run to hand out tasks and check rollouts."""

    run: str
    algo: str
    mode: Mode
    wire: WireSpec | None  # None: actors outside Ray cannot run this algorithm's tasks
    family: str
    family_kwargs: dict[str, Any]
    algo_config: dict[str, Any]
    observation_space: gym.spaces.Box
    action_space: gym.Space
    max_episode_steps: int

    @property
    def stream(self) -> bool:
        return self.mode == "stream"

    @property
    def discrete(self) -> bool:
        return isinstance(self.action_space, gym.spaces.Discrete)

    @property
    def stages(self) -> list[str]:
        return list(self.wire.stages) if self.wire else []

    @property
    def rollouts_per_stage(self) -> int:
        return self.wire.rollouts_per_stage if self.wire else 0

    @property
    def episodes_per_rollout(self) -> int:
        return self.wire.episodes_per_rollout if self.wire else 1

    @property
    def max_steps(self) -> int:
        return self.episodes_per_rollout * self.max_episode_steps

    @property
    def max_policy_lag(self) -> int:
        return self.wire.max_policy_lag if self.wire else 0


@dataclass
class Assignment:
    id: int
    task: Task
    policy_version: int
    expires: float
    actor_id: str = ""
    started: float = 0.0


@dataclass
class Offer:
    """The external share of one meta-batch (each assignment carries its policy version)."""

    open: collections.deque[Assignment] = field(default_factory=collections.deque)
    taken: dict[int, Assignment] = field(default_factory=dict)
    results: dict[int, tuple[TaskResult, dict[str, Any]]] = field(default_factory=dict)


def load_token(env_var: str | None, token_file: str | Path | None, run_dir: Path) -> tuple[str, str]:
    """The service's token and where it came from: the env var, the token file, or (neither
    given) a new random token written to RUN_DIR/grpc_token, readable by the owner only."""
    import os
    import secrets

    if env_var and os.environ.get(env_var):
        token, source = os.environ[env_var].strip(), f"${env_var}"
    elif token_file:
        path = Path(token_file)
        if not path.is_file():
            raise ValueError(f"grpc.token_file: no such file {path}")
        token, source = path.read_text().strip(), str(path)
    else:
        path = run_dir / "grpc_token"
        token = path.read_text().strip() if path.is_file() else secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        source = str(path)
    if len(token) < 16 or not token.isascii() or not token.isprintable():
        raise ValueError(f"gRPC token from {source}: needs at least 16 printable ASCII characters")
    return token, source


class _TokenCheck(grpc.ServerInterceptor):
    """Refuses every call without `authorization: Bearer <token>` (constant-time compare)."""

    def __init__(self, token: str, on_reject: Callable[[str], None]):
        self._expected = f"Bearer {token}".encode()
        self._on_reject = on_reject

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        given = ""
        for key, value in details.invocation_metadata or ():
            if key == "authorization" and isinstance(value, str):
                given = value
        if hmac.compare_digest(given.encode("utf-8", "replace"), self._expected):
            return continuation(details)
        handler = continuation(details)
        if handler is None:  # unknown method: grpc answers UNIMPLEMENTED
            return None
        method = details.method.rsplit("/", 1)[-1]
        self._on_reject(method)
        message = "missing or wrong token (metadata 'authorization: Bearer <token>')"

        def deny(request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(deny)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(deny)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(deny)
        return grpc.unary_unary_rpc_method_handler(deny)


class GrpcService:
    """The server and the state it shares with the training loop (thread-safe)."""

    def __init__(self, spec: RunSpec, config: Any, next_task: Callable[[], Task], token: str,
                 count_request: Callable[[str, str], None] | None = None):
        self.spec, self.config = spec, config
        self._next_task = next_task
        self._token = token
        self._count_request = count_request or (lambda method, code: None)
        self._lock = threading.Condition()
        self._version = -1
        self._params: bytes = b""
        self._next_id = 1
        self._assignments: collections.OrderedDict[int, Assignment] = collections.OrderedDict()  # stream
        self._queue: collections.deque[RolloutArrays] = collections.deque()  # stream: trials for the learner
        self._offer: Offer | None = None  # meta-batch
        self._stopping = False
        self._server: grpc.Server | None = None
        self.address: str | None = None
        self.counts = collections.Counter({"grpc_rollouts_accepted_total": 0, "grpc_rollouts_rejected_total": 0})
        obs = spec.observation_space
        self._obs_low = np.where(np.isfinite(obs.low), obs.low, -np.inf).astype(np.float64)
        self._obs_high = np.where(np.isfinite(obs.high), obs.high, np.inf).astype(np.float64)

    # ------------------------------------------------------------------ lifecycle
    def start(self, port: int, host: str = "127.0.0.1", tls: tuple[bytes, bytes] | None = None) -> str:
        """Serve on host:port (0 = a free port); `tls` = (certificate chain, private key) PEM."""
        if port:  # a clear error before gRPC's own (which also logs to stderr)
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC: TIME_WAIT is fine
                probe.bind((host, port))
        limit = int(self.config.max_message_mb * 2**20)
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.config.max_concurrent_rpcs, thread_name_prefix="metaray-grpc"),
            interceptors=[_TokenCheck(self._token, self._count_unauthenticated)],
            # no SO_REUSEPORT: a port already in use is an error, not a port shared with another server
            options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
                     ("grpc.so_reuseport", 0)],
            maximum_concurrent_rpcs=self.config.max_concurrent_rpcs,
        )
        server.add_generic_rpc_handlers([self._handlers()])
        where = f"{host}:{port}"
        if tls is None:
            bound = server.add_insecure_port(where)
        else:
            bound = server.add_secure_port(where, grpc.ssl_server_credentials([(tls[1], tls[0])]))
        if bound == 0:
            raise OSError(f"cannot bind the gRPC service to {where}")
        server.start()
        self._server = server
        self.address = f"{host}:{bound}"
        return self.address

    def stop(self, grace: float = 1.0) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None

    def _handlers(self) -> grpc.GenericRpcHandler:
        def out(message: Any) -> bytes:  # parameters arrive pre-serialized (once per version)
            return message if isinstance(message, bytes) else message.SerializeToString()

        unary = {"GetRunInfo": (self.get_run_info, pb.RunInfoRequest),
                 "GetParameters": (self.get_parameters, pb.ParametersRequest),
                 "GetTask": (self.get_task, pb.TaskRequest)}
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(self._counted(name, fn), _parser(fn_in), out)
            for name, (fn, fn_in) in unary.items()
        }
        handlers["WatchParameters"] = grpc.unary_stream_rpc_method_handler(
            self._counted_stream("WatchParameters", self.watch_parameters), _parser(pb.ParametersRequest), out)
        handlers["PushEpisodes"] = grpc.stream_unary_rpc_method_handler(
            self._counted("PushEpisodes", self.push_episodes), _parser(pb.Rollout), out)
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    def _count_unauthenticated(self, method: str) -> None:
        self._count_request(method, "UNAUTHENTICATED")

    def _counted(self, method: str, fn: Callable[[Any, grpc.ServicerContext], Any]) -> Callable:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                _refuse_malformed(request)
                response = fn(request, context)
            except Reject as err:
                self._count_request(method, err.code.name)
                context.abort(err.code, err.message)
            except grpc.RpcError as err:  # reading a client stream failed (cancelled, oversize)
                code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
                self._count_request(method, code.name)
                raise
            except Exception:
                log.exception("gRPC %s failed", method)
                self._count_request(method, "INTERNAL")
                context.abort(grpc.StatusCode.INTERNAL, "internal error (see the training run's log)")
            self._count_request(method, "OK")
            return response
        return run

    def _counted_stream(self, method: str, fn: Callable[[Any, grpc.ServicerContext], Iterator[Any]]) -> Callable:
        def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                _refuse_malformed(request)
                yield from fn(request, context)
            except Reject as err:
                self._count_request(method, err.code.name)
                context.abort(err.code, err.message)
            self._count_request(method, "OK")
        return run

    # ------------------------------------------------------------------ training-loop side
    def publish(self, version: int, weights: dict[str, np.ndarray]) -> None:
        """Make `version` the newest parameters; serialized once here for every client."""
        message = pb.Parameters(version=version, tensors=[encode_tensor(k, v) for k, v in weights.items()])
        data = message.SerializeToString()
        with self._lock:
            self._version, self._params = version, data
            self._lock.notify_all()

    def drain_rollouts(self) -> list[RolloutArrays]:
        """Stream: every trial accepted since the last call, oldest first."""
        with self._lock:
            out = list(self._queue)
            self._queue.clear()
        return out

    def offer(self, tasks: list[Task], version: int) -> None:
        """Meta-batch: open `tasks` to gRPC actors for the iteration acting with `version`."""
        now = time.monotonic()
        with self._lock:
            offer = Offer()
            for task in tasks:
                offer.open.append(Assignment(self._new_id(), task, version, expires=now + self.config.task_timeout_s))
            self._offer = offer
            self._lock.notify_all()

    def close_offer(self) -> tuple[list[tuple[TaskResult, dict[str, Any]]], list[Task]]:
        """Meta-batch: wait for the tasks actors took (each until task_timeout_s after it was taken), then close the offer.
        Returns the delivered results and the tasks to run elsewhere (never taken, or late)."""
        with self._lock:
            offer = self._offer
            if offer is None:
                return [], []
            if offer.open and self.config.take_wait_s > 0:
                self._lock.wait_for(lambda: not offer.open or self._stopping, timeout=self.config.take_wait_s)
            missing = list(offer.open)  # nobody took them: no need to wait
            offer.open.clear()
            deadline = max((a.expires for a in offer.taken.values()), default=0.0)
            self._lock.wait_for(lambda: set(offer.results) >= set(offer.taken) or self._stopping,
                                timeout=max(0.0, deadline - time.monotonic()))
            missing += [a for a_id, a in offer.taken.items() if a_id not in offer.results]
            self._offer = None
            results = [offer.results[a_id] for a_id in offer.taken if a_id in offer.results]
        return results, [a.task for a in missing]

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    # ------------------------------------------------------------------ RPCs
    def get_run_info(self, request: pb.RunInfoRequest, context: grpc.ServicerContext) -> pb.RunInfo:
        spec = self.spec
        act = spec.action_space
        return pb.RunInfo(
            run=spec.run, algo=spec.algo, family=spec.family, family_kwargs_json=json.dumps(spec.family_kwargs),
            algo_config_json=json.dumps(spec.algo_config), observation_shape=list(spec.observation_space.shape),
            discrete_actions=spec.discrete, num_actions=int(act.n) if spec.discrete else 0,
            action_shape=[] if spec.discrete else list(act.shape), max_episode_steps=spec.max_episode_steps,
            policy_version=self._version, max_policy_lag=spec.max_policy_lag,
        )

    def get_parameters(self, request: pb.ParametersRequest, context: grpc.ServicerContext) -> bytes:
        wait = min(max(float(request.wait_s), 0.0), MAX_WAIT_S) if math.isfinite(request.wait_s) else 0.0
        with self._lock:
            self._lock.wait_for(lambda: self._version >= request.min_version or self._stopping, timeout=wait)
            if self._version < request.min_version:
                raise Reject(grpc.StatusCode.UNAVAILABLE,
                             f"version {request.min_version} is not published yet (newest: {self._version}); retry")
            return self._params

    def watch_parameters(self, request: pb.ParametersRequest, context: grpc.ServicerContext) -> Iterator[bytes]:
        last = int(request.min_version) - 1
        while context.is_active():
            with self._lock:
                self._lock.wait_for(lambda seen=last: self._version > seen or self._stopping, timeout=1.0)
                if self._stopping:
                    return
                version, data = self._version, self._params
            if version > last:
                last = version
                yield data

    def get_task(self, request: pb.TaskRequest, context: grpc.ServicerContext) -> pb.TaskAssignment:
        actor = _check_actor_id(request.actor_id)
        wait = min(max(float(request.wait_s), 0.0), MAX_WAIT_S) if math.isfinite(request.wait_s) else 0.0
        now = time.monotonic()
        if self.spec.stream:
            task = self._next_task()
            with self._lock:
                assignment = Assignment(self._new_id(), task, self._version, now + self.config.assignment_ttl_s,
                                        actor, now)
                self._assignments[assignment.id] = assignment
                self._evict_assignments(now)
        else:
            with self._lock:
                self._lock.wait_for(lambda: (self._offer is not None and bool(self._offer.open)) or self._stopping,
                                    timeout=wait)
                if self._offer is None or not self._offer.open:
                    raise Reject(grpc.StatusCode.UNAVAILABLE, "no task is open for gRPC actors now; retry")
                assignment = self._offer.open.popleft()
                assignment.actor_id, assignment.started = actor, now
                assignment.expires = now + self.config.task_timeout_s
                self._offer.taken[assignment.id] = assignment
        spec = self.spec
        return pb.TaskAssignment(
            assignment_id=assignment.id, family=assignment.task.family, split=assignment.task.split,
            task_id=assignment.task.task_id, params=list(assignment.task.params),
            policy_version=assignment.policy_version, stages=spec.stages, rollouts_per_stage=spec.rollouts_per_stage,
            max_steps=spec.max_steps, episodes_per_rollout=spec.episodes_per_rollout,
            expires_in_s=max(0.0, assignment.expires - now),
        )

    def _evict_assignments(self, now: float) -> None:
        while self._assignments:
            oldest = next(iter(self._assignments.values()))
            if oldest.expires > now and len(self._assignments) <= self.config.max_open_assignments:
                break
            self._assignments.popitem(last=False)

    def push_episodes(self, requests: Iterable[pb.Rollout], context: grpc.ServicerContext) -> pb.PushResult:
        received = 0
        checked: list[RolloutArrays] = []
        try:
            for message in requests:
                _refuse_malformed(message, f"rollout {received}")
                received += 1
                if received > self.config.max_rollouts_per_push:
                    raise Reject(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                 f"more than grpc.max_rollouts_per_push={self.config.max_rollouts_per_push} rollouts in one push")
                checked.append(self._check(message, index=received - 1))
            if not checked:
                raise _invalid("empty push: no rollouts")
            self._commit(checked)
        except (Reject, grpc.RpcError):
            with self._lock:
                self.counts["grpc_rollouts_rejected_total"] += max(received, 1)
            raise
        with self._lock:
            self.counts["grpc_rollouts_accepted_total"] += len(checked)
            version = self._version
        return pb.PushResult(accepted=len(checked), policy_version=version)

    # ------------------------------------------------------------------ checks
    def _assignment(self, assignment_id: int) -> Assignment | None:
        if self.spec.stream:
            return self._assignments.get(assignment_id)
        offer = self._offer
        return None if offer is None else offer.taken.get(assignment_id)

    def _check(self, msg: pb.Rollout, index: int) -> RolloutArrays:
        """Every field of one rollout, or Reject naming the first bad one."""
        where = f"rollout {index}"
        self._check_assignment(msg, where)
        arrays = self._decode(msg, where)
        self._check_values(arrays, where)
        self._check_episode_ends(arrays["dones"], where)
        return RolloutArrays(int(msg.task_id), int(msg.policy_version), msg.stage, arrays["observations"],
                             arrays["actions"], arrays["rewards"], arrays["dones"], arrays["log_probs"],
                             int(msg.assignment_id), arrays.get("next_observations"), arrays.get("terminals"))

    def _check_assignment(self, msg: pb.Rollout, where: str) -> None:
        """The rollout answers an open assignment of this actor, with its task, a stage and a
        policy version the run accepts."""
        spec = self.spec
        actor = _check_actor_id(msg.actor_id, where)
        with self._lock:
            assignment = self._assignment(msg.assignment_id)
            version = self._version
        if assignment is None:
            code = grpc.StatusCode.NOT_FOUND if spec.stream else grpc.StatusCode.FAILED_PRECONDITION
            raise Reject(code, f"{where}: assignment {msg.assignment_id} is unknown, expired or already closed")
        if assignment.actor_id != actor:
            raise Reject(grpc.StatusCode.PERMISSION_DENIED, f"{where}: assignment {msg.assignment_id} belongs to another actor")
        if msg.task_id != assignment.task.task_id:
            raise _invalid(f"{where}: task_id {msg.task_id} is not the assigned task {assignment.task.task_id}")
        if msg.stage not in spec.stages:
            raise _invalid(f"{where}: stage must be one of {spec.stages}, got {msg.stage!r}")
        if spec.stream:
            if msg.policy_version > version or msg.policy_version < version - spec.max_policy_lag:
                raise Reject(grpc.StatusCode.FAILED_PRECONDITION,
                             f"{where}: policy_version {msg.policy_version} outside [{version - spec.max_policy_lag}, {version}] "
                             f"(max_policy_lag {spec.max_policy_lag})")
        elif msg.policy_version != assignment.policy_version:
            raise Reject(grpc.StatusCode.FAILED_PRECONDITION,
                         f"{where}: policy_version {msg.policy_version}, the task must be run with {assignment.policy_version}")

    def _decode(self, msg: pb.Rollout, where: str) -> dict[str, np.ndarray]:
        """The five tensors (seven for off-policy algorithms), each present, well formed, of its
        dtype and of one length T."""
        spec = self.spec
        transitions = spec.wire is not None and spec.wire.transitions  # off-policy: s' and terminals too
        arrays = {name: _decode_field(msg, name, where) for name in ("observations", "actions", "rewards", "dones", "log_probs")}
        if transitions:
            arrays.update({name: _decode_field(msg, name, where, f" (algo {spec.algo} learns from transitions)")
                           for name in ("next_observations", "terminals")})
        steps = arrays["rewards"].shape[0] if arrays["rewards"].ndim == 1 else -1
        if not 1 <= steps <= spec.max_steps:
            raise _invalid(f"{where}: rewards must have shape [T] with 1 <= T <= {spec.max_steps}, got {arrays['rewards'].shape}")
        act_tail = () if spec.discrete else tuple(spec.action_space.shape)
        expected = {"observations": ("float32", (steps, *spec.observation_space.shape)),
                    "actions": ("int64" if spec.discrete else "float32", (steps, *act_tail)),
                    "rewards": ("float32", (steps,)), "dones": ("bool", (steps,)), "log_probs": ("float32", (steps,))}
        if transitions:
            expected["next_observations"] = ("float32", (steps, *spec.observation_space.shape))
            expected["terminals"] = ("bool", (steps,))
        for name, (dtype, shape) in expected.items():
            if getattr(msg, name).dtype != dtype or arrays[name].shape != shape:
                raise _invalid(f"{where}: {name} must be {dtype} {list(shape)}, got {getattr(msg, name).dtype} "
                               f"{list(arrays[name].shape)}")
        return arrays

    def _check_values(self, arrays: dict[str, np.ndarray], where: str) -> None:
        """Finite, within grpc.max_abs_value, observations inside their space, actions valid."""
        spec, limit = self.spec, self.config.max_abs_value
        for name in ("observations", "rewards", "log_probs") + (() if spec.discrete else ("actions",)):
            a = arrays[name]
            if not np.isfinite(a).all():
                raise _invalid(f"{where}: {name} has NaN or infinite values")
            if a.size and np.abs(a).max() > limit:
                raise _invalid(f"{where}: {name} has values beyond ±{limit:g} (grpc.max_abs_value)")
        for name in ("observations", "next_observations"):
            if name not in arrays:
                continue
            obs = arrays[name]
            if not np.isfinite(obs).all():
                raise _invalid(f"{where}: {name} has NaN or infinite values")
            if obs.size and np.abs(obs).max() > limit:
                raise _invalid(f"{where}: {name} has values beyond ±{limit:g} (grpc.max_abs_value)")
            if ((obs < self._obs_low) | (obs > self._obs_high)).any():
                raise _invalid(f"{where}: {name} outside the observation space's bounds")
        if "terminals" in arrays and (arrays["terminals"] & ~arrays["dones"]).any():
            raise _invalid(f"{where}: terminals marks a step that does not end an episode (dones)")
        if spec.discrete:
            acts = arrays["actions"]
            if acts.min() < 0 or acts.max() >= spec.action_space.n:
                raise _invalid(f"{where}: actions must be in [0, {spec.action_space.n})")
            if arrays["log_probs"].max() > 1e-6:
                raise _invalid(f"{where}: log_probs of discrete actions must be <= 0")

    def _check_episode_ends(self, dones: np.ndarray, where: str) -> None:
        spec = self.spec
        ends = np.flatnonzero(dones)
        if spec.stream:
            if len(ends) != spec.episodes_per_rollout or ends[-1] != len(dones) - 1:
                raise _invalid(f"{where}: a trial has exactly {spec.episodes_per_rollout} episodes, the last step "
                               f"ending the last one (dones marks {len(ends)})")
            lengths = np.diff(np.concatenate([[-1], ends]))
            if lengths.max() > spec.max_episode_steps:
                raise _invalid(f"{where}: an episode is longer than the horizon {spec.max_episode_steps}")
        elif (len(ends) > 1 or (len(ends) == 1 and ends[0] != len(dones) - 1)
              or (len(ends) == 0 and len(dones) != spec.max_episode_steps)):
            raise _invalid(f"{where}: one episode per rollout: dones only on the last step, and an episode "
                           f"without an end runs the full horizon {spec.max_episode_steps}")

    def _commit(self, rollouts: list[RolloutArrays]) -> None:
        """All of a push enters, or none of it (Reject)."""
        by_assignment: dict[int, list[RolloutArrays]] = collections.defaultdict(list)
        for r in rollouts:
            by_assignment[r.assignment_id].append(r)
        with self._lock:
            if self.spec.stream:
                for a_id, rs in by_assignment.items():
                    if len(rs) != 1:
                        raise _invalid(f"assignment {a_id}: one trial per assignment, got {len(rs)}")
                    if a_id not in self._assignments:
                        raise Reject(grpc.StatusCode.NOT_FOUND, f"assignment {a_id} was used or expired meanwhile")
                if len(self._queue) + len(rollouts) > self.config.max_queued_rollouts:
                    raise Reject(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                 f"the learner's queue is full ({len(self._queue)} trials); retry later")
                for a_id in by_assignment:
                    del self._assignments[a_id]
                self._queue.extend(rollouts)
                return
            offer = self._offer
            results = {}
            for a_id, rs in by_assignment.items():
                if offer is None or a_id not in offer.taken:
                    raise Reject(grpc.StatusCode.FAILED_PRECONDITION, f"assignment {a_id} was closed meanwhile")
                if a_id in offer.results:
                    raise Reject(grpc.StatusCode.ALREADY_EXISTS, f"assignment {a_id} was delivered already")
                results[a_id] = self._task_result(offer.taken[a_id], rs)
            offer.results.update(results)
            self._lock.notify_all()

    def _task_result(self, assignment: Assignment, rollouts: list[RolloutArrays]) -> tuple[TaskResult, dict[str, Any]]:
        """Meta-batch: one task's rollouts as the TaskResult a Ray worker's sampler returns, and its info."""
        spec, per = self.spec, self.spec.rollouts_per_stage
        stages = {}
        for stage in spec.stages:
            rs = [r for r in rollouts if r.stage == stage]
            if len(rs) != per:
                raise _invalid(f"assignment {assignment.id}: stage {stage} needs {per} episodes, got {len(rs)}")
            stages[stage] = episodes_from_rollouts(rs, spec.max_episode_steps, spec.observation_space.shape,
                                                   spec.action_space.shape)
        steps = sum(len(r.rewards) for r in rollouts)
        metrics = {"return_pre": mean_episode_return(stages[spec.stages[0]]),
                   "return_post": mean_episode_return(stages[spec.stages[-1]])}
        result = TaskResult(assignment.task.task_id, assignment.policy_version, stages, steps, per * len(spec.stages))
        info = {"task_id": assignment.task.task_id, **metrics, "env_steps": steps, "episodes": per * len(spec.stages),
                "rollouts": len(rollouts), "actor_id": assignment.actor_id, "sample_s": time.monotonic() - assignment.started}
        return result, info


@dataclass(frozen=True)
class _Malformed:
    """A request body that is not the protobuf message the method takes."""

    message: str


def _parser(message_class: Any) -> Callable[[bytes], Any]:
    """The method's deserializer, which hands bytes that do not parse to the handler (answered
    INVALID_ARGUMENT and counted) instead of failing inside grpc (INTERNAL)."""
    from google.protobuf.message import DecodeError

    def parse(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except DecodeError:
            return _Malformed(message_class.DESCRIPTOR.name)
    return parse


def _refuse_malformed(request: Any, where: str = "request") -> None:
    if isinstance(request, _Malformed):
        raise _invalid(f"{where}: the body is not a valid {request.message} message")


def _decode_field(msg: pb.Rollout, name: str, where: str, why: str = "") -> np.ndarray:
    """One tensor field of a rollout, present and well formed, or Reject naming it."""
    if not msg.HasField(name):
        raise _invalid(f"{where}: {name} is missing{why}")
    try:
        return decode_tensor(getattr(msg, name))
    except ValueError as err:
        raise _invalid(f"{where}: {name}: {err}") from None


def _check_actor_id(actor_id: str, where: str = "request") -> str:
    if not actor_id or len(actor_id) > MAX_ACTOR_ID or not actor_id.isprintable():
        raise _invalid(f"{where}: actor_id must be 1..{MAX_ACTOR_ID} printable characters")
    return actor_id
