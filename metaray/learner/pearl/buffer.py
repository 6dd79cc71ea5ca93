"""PEARL's replay: per train task, an RL ring buffer and a context buffer, in the learner.

A plain numpy ring per task rather than torchrl's buffers: the learner samples [meta_batch,
batch] index arrays per gradient step, which is one fancy-index per field here, the buffers
checkpoint as flat named arrays (safetensors) without a second serialisation layer, and no
dependency is added. Arrays are allocated with `np.zeros` (the OS maps pages as they are
first written), so a large capacity costs memory only as it fills.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np

FIELDS = ("obs", "actions", "rewards", "next_obs", "terminals")


def transition_bytes(obs_dim: int, act_dim: int) -> int:
    """Bytes one stored transition takes (float32 fields, a bool terminal)."""
    return 4 * (2 * obs_dim + act_dim + 1) + 1


def machine_memory_bytes() -> int:
    """The machine's physical memory (0 where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def check_buffer_fits(num_tasks: int, capacity: int, obs_dim: int, act_dim: int, memory_bytes: int | None = None) -> int:
    """The full buffers' size in bytes; ValueError with the estimate if they could not fit in
    half the machine's memory (the learner needs the rest)."""
    need = num_tasks * capacity * transition_bytes(obs_dim, act_dim)
    total = machine_memory_bytes() if memory_bytes is None else memory_bytes
    if total and need > total // 2:
        raise ValueError(
            f"pearl.buffer_size_per_task: {num_tasks} tasks x {capacity} transitions x "
            f"{transition_bytes(obs_dim, act_dim)} B = {need / 2**30:.1f} GiB of replay, more than half "
            f"this machine's {total / 2**30:.1f} GiB; lower buffer_size_per_task or num_train_tasks")
    return need


class Ring:
    """One task's transitions, the oldest overwritten first once `capacity` is reached."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int):
        self.capacity = capacity
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.actions = np.zeros((capacity, act_dim), np.float32)
        self.rewards = np.zeros(capacity, np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.terminals = np.zeros(capacity, bool)
        self.size = 0  # transitions held (<= capacity)
        self.head = 0  # where the next one goes

    def add(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, next_obs: np.ndarray,
            terminals: np.ndarray) -> None:
        n = len(rewards)
        if n >= self.capacity:  # only the newest `capacity` survive
            obs, actions, rewards, next_obs, terminals = (a[n - self.capacity:] for a in (obs, actions, rewards, next_obs, terminals))
            n = self.capacity
        idx = (self.head + np.arange(n)) % self.capacity
        self.obs[idx], self.actions[idx], self.rewards[idx] = obs, actions, rewards
        self.next_obs[idx], self.terminals[idx] = next_obs, terminals
        self.head = int((self.head + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)

    def clear(self) -> None:
        self.size = self.head = 0

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n indices drawn uniformly with replacement from what the ring holds."""
        return rng.integers(0, self.size, size=n)

    def state(self) -> tuple[dict[str, int], dict[str, np.ndarray]]:
        """The held transitions in their slots (so a restored ring samples the same indices)."""
        return {"size": self.size, "head": self.head}, {name: getattr(self, name)[: self.size].copy() for name in FIELDS}

    def load(self, meta: dict[str, int], arrays: dict[str, np.ndarray]) -> None:
        size = int(meta["size"])
        if size > self.capacity:
            raise ValueError(f"a replay of {size} transitions does not fit a buffer of {self.capacity}")
        for name in FIELDS:
            getattr(self, name)[:size] = arrays[name]
        self.size, self.head = size, int(meta["head"])

    def ordered(self) -> dict[str, np.ndarray]:
        """The held transitions, oldest first (a checkpoint, or a test)."""
        idx = (self.head - self.size + np.arange(self.size)) % self.capacity
        return {name: getattr(self, name)[idx] for name in FIELDS}


class TaskReplay:
    """Per-task RL rings and context rings, created as tasks first send data."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int):
        self.capacity = capacity
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.rl: dict[int, Ring] = {}
        self.context: dict[int, Ring] = {}

    def tasks(self) -> list[int]:
        """Task ids with RL data and a non-empty context buffer (those a gradient step can use)."""
        return sorted(t for t, ring in self.context.items() if ring.size and self.rl[t].size)

    def add_round(self, task_id: int, fields: dict[str, np.ndarray], to_context: np.ndarray) -> None:
        """One round of a task: every transition to its RL ring; its context ring becomes the
        round's context transitions (the paper clears a task's encoder buffer each round)."""
        if task_id not in self.rl:
            self.rl[task_id] = Ring(self.capacity, self.obs_dim, self.act_dim)
        self.rl[task_id].add(*(fields[name] for name in FIELDS))
        if to_context.any():  # sized to the round's context, which the next round replaces
            ring = self.context[task_id] = Ring(int(to_context.sum()), self.obs_dim, self.act_dim)
            ring.add(*(fields[name][to_context] for name in FIELDS))

    def state(self) -> tuple[dict[str, object], dict[str, np.ndarray]]:
        """Every task's rings as a JSON-able dict and arrays named `{rl|context}/{task}/{field}`."""
        meta: dict[str, object] = {"rl": {}, "context": {}}
        arrays: dict[str, np.ndarray] = {}
        for kind, rings in (("rl", self.rl), ("context", self.context)):
            for task_id, ring in rings.items():
                ring_meta, ring_arrays = ring.state()
                meta[kind][str(task_id)] = ring_meta  # type: ignore[index]
                arrays.update({f"{kind}/{task_id}/{name}": a for name, a in ring_arrays.items()})
        return meta, arrays

    def load(self, meta: dict[str, object], arrays: dict[str, np.ndarray]) -> None:
        """Replace the rings by a `state()`."""
        self.rl, self.context = {}, {}
        for kind, rings in (("rl", self.rl), ("context", self.context)):
            for task_id, ring_meta in meta[kind].items():  # type: ignore[attr-defined]
                capacity = self.capacity if kind == "rl" else max(int(ring_meta["size"]), 1)
                ring = Ring(capacity, self.obs_dim, self.act_dim)
                ring.load(ring_meta, {name: arrays[f"{kind}/{task_id}/{name}"] for name in FIELDS})
                rings[int(task_id)] = ring

    @property
    def num_transitions(self) -> int:
        return sum(ring.size for ring in self.rl.values())

    def gather(self, rings: dict[int, Ring], task_ids: Iterable[int], n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """n transitions (with replacement) of each task: arrays [len(task_ids), n, ...]."""
        picks = [(rings[t], rings[t].sample(rng, n)) for t in task_ids]
        return {name: np.stack([getattr(ring, name)[idx] for ring, idx in picks]) for name in FIELDS}
