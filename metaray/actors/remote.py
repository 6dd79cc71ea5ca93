"""A rollout actor outside Ray: talks to a run's gRPC service (`metaray train --grpc-port P`).

`RemoteClient` is the thin client of the five calls (any language can do the same from
metaray/protocol/metaray.proto). `RemoteSampler` runs the run's own algorithm's sampler in this
process and pushes what it collects: a stream algorithm's whole trials (converted by the
algorithm's `to_rollouts`), or a meta-batch algorithm's whole task, every stage's episodes
(the same worker step a Ray rollout worker does). `examples/remote_actor.py` shows a
hand-written env loop instead.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import grpc
import numpy as np
import torch

from metaray.core import TaskResult, get_algorithm
from metaray.protocol import RolloutArrays, decode_tensor, rollout_message
from metaray.protocol import metaray_pb2 as pb
from metaray.protocol import metaray_pb2_grpc as pb_grpc
from metaray.tasks import Task, make_family

TOKEN_ENV = "METARAY_GRPC_TOKEN"


class RemoteClient:
    """The gRPC calls of one actor, with its token and actor id on every call."""

    def __init__(self, target: str, token: str | None = None, actor_id: str | None = None,
                 tls_root_cert: bytes | None = None, max_message_mb: float = 16.0, timeout_s: float = 60.0):
        token = token or os.environ.get(TOKEN_ENV)
        if not token:
            raise ValueError(f"no gRPC token: pass token= or set ${TOKEN_ENV}")
        limit = int(max_message_mb * 2**20)
        options = [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]
        if tls_root_cert is not None:
            self.channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(tls_root_cert), options)
        else:
            self.channel = grpc.insecure_channel(target, options)
        self.stub = pb_grpc.MetaRayStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.actor_id = actor_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.timeout_s = timeout_s

    def run_info(self) -> pb.RunInfo:
        return self.stub.GetRunInfo(pb.RunInfoRequest(), metadata=self.metadata, timeout=self.timeout_s)

    def parameters(self, min_version: int = 0, wait_s: float = 0.0) -> tuple[int, dict[str, np.ndarray]]:
        """The newest parameters (version, name -> array), once the version is >= min_version."""
        reply = self.stub.GetParameters(pb.ParametersRequest(min_version=min_version, wait_s=wait_s),
                                        metadata=self.metadata, timeout=self.timeout_s + wait_s)
        return reply.version, {t.name: decode_tensor(t) for t in reply.tensors}

    def watch(self, min_version: int = 0) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Each new version from min_version on, as it is published (until the run ends)."""
        for reply in self.stub.WatchParameters(pb.ParametersRequest(min_version=min_version), metadata=self.metadata):
            yield reply.version, {t.name: decode_tensor(t) for t in reply.tensors}

    def get_task(self, wait_s: float = 0.0) -> pb.TaskAssignment:
        return self.stub.GetTask(pb.TaskRequest(actor_id=self.actor_id, wait_s=wait_s), metadata=self.metadata,
                                 timeout=self.timeout_s + wait_s)

    def push(self, rollouts: Iterable[pb.Rollout]) -> pb.PushResult:
        """Send rollouts in one stream; all are accepted, or the call fails with the reason."""
        return self.stub.PushEpisodes(iter(list(rollouts)), metadata=self.metadata, timeout=self.timeout_s)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> RemoteClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def make_rollout(assignment: pb.TaskAssignment, actor_id: str, policy_version: int, stage: str,
                 obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, dones: np.ndarray,
                 log_probs: np.ndarray) -> pb.Rollout:
    """One rollout message; arrays are converted to the dtypes the service expects."""
    arrays = RolloutArrays(assignment.task_id, policy_version, stage, obs, actions, rewards, dones, log_probs)
    return rollout_message(arrays, assignment.assignment_id, actor_id)


def task_of(assignment: pb.TaskAssignment) -> Task:
    return Task(assignment.family, assignment.split, int(assignment.task_id), tuple(assignment.params))


def task_rollouts(result: TaskResult, stages: Iterable[str]) -> Iterator[RolloutArrays]:
    """A meta-batch TaskResult as one rollout per episode and stage (an episode that ran the full
    horizon was cut by it: no done flag)."""
    for stage in stages:
        episodes = result.stages[stage]
        horizon = episodes.mask.shape[1]
        for e in range(episodes.mask.shape[0]):
            n = int(episodes.mask[e].sum())
            dones = np.zeros(n, bool)
            dones[-1] = n < horizon
            yield RolloutArrays(result.task_id, result.policy_version, stage, episodes.obs[e, :n], episodes.actions[e, :n],
                                episodes.rewards[e, :n], dones, episodes.logp[e, :n])


def task_messages(result: TaskResult, assignment: pb.TaskAssignment, actor_id: str) -> Iterator[pb.Rollout]:
    """A meta-batch TaskResult as the Rollout messages answering `assignment`."""
    for rollout in task_rollouts(result, assignment.stages):
        yield rollout_message(rollout, assignment.assignment_id, actor_id)


class RemoteSampler:
    """The run's algorithm's sampler, fed by gRPC instead of Ray."""

    def __init__(self, client: RemoteClient, seed: int = 0, slots: int = 8):
        torch.set_num_threads(1)
        self.client = client
        self.info = client.run_info()
        self.family = make_family(self.info.family, json.loads(self.info.family_kwargs_json))
        self.algorithm = get_algorithm(self.info.algo)
        self.config = self.algorithm.Config.model_validate(json.loads(self.info.algo_config_json))
        if self.algorithm.wire_spec(self.config) is None:
            raise ValueError(f"algorithm {self.info.algo!r} cannot run on actors outside Ray")
        self.seed, self.slots = seed, slots
        self._task_sampler: Any = None
        self.pushed = 0

    def run_once(self, wait_s: float = 5.0) -> int:
        """Take task(s), collect, push; returns the rollouts accepted (0 when no task was open)."""
        return self._stream_round() if self.algorithm.mode == "stream" else self._task_round(wait_s)

    def _stream_round(self) -> int:
        assignments = [self.client.get_task() for _ in range(self.slots)]
        version, weights = self.client.parameters(min_version=max(a.policy_version for a in assignments))
        self.seed += 1
        sampler = self.algorithm.make_sampler(self.family, self.config, self.seed, tasks=[task_of(a) for a in assignments])
        sampler.set_weights(version, weights)
        with torch.no_grad():
            payload, _ = sampler.sample(min_trials=len(assignments))
        sampler.close()
        by_task: dict[int, list[pb.TaskAssignment]] = {}
        for a in assignments:
            by_task.setdefault(a.task_id, []).append(a)
        rollouts = [rollout_message(r, by_task[r.task_id].pop().assignment_id, self.client.actor_id)
                    for r in self.algorithm.to_rollouts(payload)]
        accepted = self.client.push(rollouts).accepted
        self.pushed += accepted
        return accepted

    def _task_round(self, wait_s: float) -> int:
        try:
            assignment = self.client.get_task(wait_s=wait_s)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.UNAVAILABLE:
                return 0
            raise
        version, weights = self.client.parameters(min_version=assignment.policy_version, wait_s=wait_s)
        if self._task_sampler is None:
            self._task_sampler = self.algorithm.make_sampler(self.family, self.config, self.seed)
        sampler = self._task_sampler
        sampler.set_weights(version, weights)
        for _ in range(3):  # an episode lost to an env failure: collect the task again
            dropped = sampler.dropped_episodes
            (result,) = sampler.collect([task_of(assignment)], version)
            if sampler.dropped_episodes == dropped:
                break
        rollouts = list(task_messages(result, assignment, self.client.actor_id))
        accepted = self.client.push(rollouts).accepted
        self.pushed += accepted
        return accepted
