"""The learner actor: owns the policy and optimizer, runs updates, publishes versions.

It is algorithm-agnostic: the algorithm (`metaray.core.Algorithm`) supplies the policy and the
update. Under Ray it
is an actor placed on a GPU when one is asked for; in serial mode it is a plain object.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from metaray.core import AlgorithmError, Batch, get_algorithm
from metaray.learner.variables import VariablePublisher


def _load_malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


_malloc_trim = _load_malloc_trim()


def release_freed_memory() -> None:
    """Give the heap memory an update freed back to the OS (glibc `malloc_trim(0)`).

    An update frees tens of MiB of numpy/torch temporaries; glibc keeps much of it, so a
    long-running learner's private memory wanders in a ~35 MiB band that reads as growth in a
    soak (benchmarks/rl2_learner_memory.py). Trimming after each update keeps it flat; ~3 ms.
    """
    if _malloc_trim is not None:
        _malloc_trim(0)


def resolve_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("learner.device is 'cuda' but this process sees no CUDA device")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def numeric_stats(stats: Any, algorithm: str) -> dict[str, float | int]:
    """An algorithm's update statistics as plain numbers (one-element tensors and numpy scalars
    taken as such), as progress rows, TensorBoard and the metrics need them; AlgorithmError
    naming the first that is not one."""
    if not isinstance(stats, dict):
        raise AlgorithmError(f"algorithm {algorithm!r}: update() returned a {type(stats).__name__}, not a dict of numbers")
    out: dict[str, float | int] = {}
    for key, value in stats.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        elif isinstance(value, np.generic | np.ndarray) and np.size(value) == 1:
            value = np.asarray(value).item()
        if isinstance(value, bool):
            value = float(value)
        if not isinstance(key, str) or not isinstance(value, int | float):
            shown = repr(value) if len(repr(value)) <= 40 else f"a {type(value).__name__}"
            raise AlgorithmError(f"algorithm {algorithm!r}: update() returned {key!r}: {shown}, not a number "
                                 "(its statistics go to progress.jsonl, TensorBoard and the metrics)")
        out[key] = value
    return out


class Learner:
    """Runs `update(*batches)`; each update publishes version v+1 to the parameter server."""

    def __init__(
        self, algo: str, algo_config: dict[str, Any], obs_space: gym.Space, act_space: gym.Space,
        publisher: VariablePublisher, seed: int, device: str = "auto", torch_threads: int = 1,
    ):
        torch.set_num_threads(torch_threads)
        torch.manual_seed(seed)
        self.algorithm = get_algorithm(algo)
        self.config = self.algorithm.Config.model_validate(algo_config)
        self.device = resolve_device(device)
        policy = self.algorithm.make_policy(obs_space, act_space, self.config)
        self.impl = self.algorithm.make_learner(policy, self.config, self.device, seed)
        self.publisher = publisher
        self.version = 0
        self._updating = False
        self._before: tuple[dict[str, np.ndarray], dict[str, Any]] | None = None  # the state before the last update
        self.publish()

    def publish(self) -> int:
        weights = {k: v.detach().cpu().numpy() for k, v in self.impl.policy.state_dict().items()}
        self.publisher.publish(self.version, weights)
        return self.version

    def update(self, *batches: Batch) -> dict[str, Any]:
        start = time.perf_counter()
        # kept so that a checkpoint of the last completed iteration can be written while this
        # update is in flight, or after it was cut short (an interrupt in --serial)
        tensors, meta = self.get_state()
        self._before = {k: np.array(v, copy=True) for k, v in tensors.items()}, meta
        self._updating = True
        lags = [self.version - b.policy_version for b in batches]
        if self.algorithm.mode == "meta-batch":  # each batch is a share of the meta-batch's TaskResults
            stats = self.impl.update([r for b in batches for r in b.payload])
        else:
            stats = self.impl.update([b.payload for b in batches])
        stats = numeric_stats(stats, self.algorithm.name)  # before the version moves: a refusal leaves the last one
        self.version += 1
        self._updating = False
        self.publish()
        release_freed_memory()
        remote = sum(b.remote_rollouts for b in batches)
        if remote:  # rollouts from actors outside Ray that this update learned from
            stats["grpc_rollouts_learned"] = int(remote)
        stats.update(
            policy_version=self.version,
            learner_step_s=time.perf_counter() - start,
            policy_lag_mean=float(np.mean(lags)),
            policy_lag_max=int(max(lags)),
        )
        return stats

    def get_version(self) -> int:
        return self.version

    def device_name(self) -> str:
        return str(self.device)

    def get_state(self, version: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Weights, optimizer and RNG as numpy tensors plus a JSON-able dict (no pickle). With
        `version`: the state of that version, the current one or the one before the last update
        (while an update is in flight or was cut short, the current state is no version's)."""
        if version is not None and not (version == self.version and not self._updating):
            if self._before is None or self._before[1]["version"] != version:
                raise ValueError(f"the learner holds version {self.version}, not {version}")
            return self._before
        tensors = {f"policy/{k}": v.detach().cpu().numpy() for k, v in self.impl.policy.state_dict().items()}
        opt_tensors, opt_meta = self.impl.optimizer_state()
        tensors.update({f"optimizer/{k}": v.numpy() for k, v in opt_tensors.items()})
        tensors["rng/torch"] = torch.get_rng_state().numpy()
        tensors["rng/update"] = self.impl.generator.get_state().numpy()
        return tensors, {"version": self.version, "optimizer": opt_meta}

    def get_replay_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        """An off-policy learner's replay (`replay_state()`, optional in the contract) as it is
        now; None for learners without one. Not part of `get_state`: it may be gigabytes, and
        `get_state` runs before every update."""
        replay_state = getattr(self.impl, "replay_state", None)
        return replay_state() if callable(replay_state) else None

    def set_replay_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.impl.load_replay_state(meta, arrays)

    def set_state(self, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> int:
        policy = {k.split("/", 1)[1]: torch.from_numpy(np.array(v)) for k, v in tensors.items() if k.startswith("policy/")}
        self.impl.policy.load_state_dict(policy)
        opt = {k.split("/", 1)[1]: torch.from_numpy(np.array(v)) for k, v in tensors.items() if k.startswith("optimizer/")}
        self.impl.load_optimizer_state(opt, meta["optimizer"])
        torch.set_rng_state(torch.from_numpy(np.array(tensors["rng/torch"])))
        self.impl.generator.set_state(torch.from_numpy(np.array(tensors["rng/update"])))
        self.version = int(meta["version"])
        return self.publish()
