"""Numpy arrays <-> `Tensor` messages, and one rollout as arrays <-> a `Rollout` message."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from metaray.protocol import metaray_pb2 as pb

SERVICE = "metaray.v1.MetaRay"
DTYPES = {"float32": np.dtype("<f4"), "int64": np.dtype("<i8"), "bool": np.dtype("bool")}


def encode_tensor(name: str, array: np.ndarray) -> pb.Tensor:
    """A numpy array as a Tensor message (little-endian, C order)."""
    array = np.asarray(array)
    dtype = next((k for k, v in DTYPES.items() if (v.kind, v.itemsize) == (array.dtype.kind, array.dtype.itemsize)), None)
    if dtype is None:
        raise ValueError(f"{name}: dtype {array.dtype} cannot be sent (use float32, int64 or bool)")
    data = np.ascontiguousarray(array, DTYPES[dtype]).tobytes()
    return pb.Tensor(name=name, dtype=dtype, shape=list(array.shape), data=data)


def decode_tensor(tensor: pb.Tensor) -> np.ndarray:
    """A Tensor message as a (read-only) numpy array; raises ValueError when it is malformed."""
    if tensor.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {tensor.dtype!r}")
    dtype = DTYPES[tensor.dtype]
    shape = tuple(int(s) for s in tensor.shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"negative dimension in shape {shape}")
    count = math.prod(shape)
    if len(tensor.data) != count * dtype.itemsize:
        raise ValueError(f"{len(tensor.data)} bytes of data for shape {shape} of {tensor.dtype} "
                         f"({count * dtype.itemsize} expected)")
    if dtype == np.bool_ and count and np.frombuffer(tensor.data, np.uint8).max() > 1:
        raise ValueError("bool data must be bytes 0 or 1")
    return np.frombuffer(tensor.data, dtype).reshape(shape)


@dataclass(frozen=True)
class RolloutArrays:
    """One rollout of the wire format as numpy arrays, T steps: obs [T, obs_dim], actions [T]
    (discrete, int64) or [T, act_dim] (float32), rewards / dones / logp [T]. `stage` names the
    algorithm's stage ("trial" for a stream algorithm's whole trial; "inner_0", ..., "post" for
    a meta-batch algorithm's episodes of one task). The service builds these only from messages
    that passed every check; algorithms build them from their own results to send."""

    task_id: int
    policy_version: int
    stage: str
    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    logp: np.ndarray
    assignment_id: int = 0
    next_obs: np.ndarray | None = None  # off-policy algorithms (WireSpec.transitions): s' [T, obs_dim]
    terminals: np.ndarray | None = None  # and whether the task ended the episode [T]


def rollout_message(rollout: RolloutArrays, assignment_id: int, actor_id: str) -> pb.Rollout:
    """The Rollout message of `rollout` for an assignment; arrays take the dtypes the service expects."""
    act = np.asarray(rollout.actions)
    act = act.astype(np.int64) if act.dtype.kind in "iu" else act.astype(np.float32)
    return pb.Rollout(
        actor_id=actor_id, assignment_id=assignment_id, task_id=rollout.task_id,
        policy_version=rollout.policy_version, stage=rollout.stage,
        observations=encode_tensor("observations", np.asarray(rollout.obs, np.float32)),
        actions=encode_tensor("actions", act),
        rewards=encode_tensor("rewards", np.asarray(rollout.rewards, np.float32)),
        dones=encode_tensor("dones", np.asarray(rollout.dones, bool)),
        log_probs=encode_tensor("log_probs", np.asarray(rollout.logp, np.float32)),
        **({} if rollout.next_obs is None else
           {"next_observations": encode_tensor("next_observations", np.asarray(rollout.next_obs, np.float32))}),
        **({} if rollout.terminals is None else {"terminals": encode_tensor("terminals", np.asarray(rollout.terminals, bool))}),
    )
