"""The rollout workers of a run: spawning, health probes, restarts with backoff and a cap, and
resizing while the run trains.

Workers live in numbered slots. A worker that dies (its process or node is gone, or its envs
kept failing) is replaced in the same slot after `restart_delay_s` (doubling per restart of that
slot, at most 30 s), at most `max_worker_restarts` times per slot; the new worker fetches the
current weights before it samples. When a slot runs out of restarts, or restarts are off, the
trainer writes a checkpoint and stops with a clear message (`TrainingError`).

Resizing (`metaray scale`): new slots are spawned at once but join the pool only when they
answer a probe (on an autoscaling cluster their node may still be starting); removed slots are
retired by the trainer once their current work is done.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from metaray.cluster.config import WorkersConfig
from metaray.tasks.generic import EnvFailure

ACTOR_DEATH = ("RayActorError", "ActorDiedError", "ActorUnavailableError", "WorkerCrashedError",
               "NodeDiedError", "OwnerDiedError", "ObjectLostError", "GetTimeoutError")
MAX_RESTART_DELAY_S = 30.0


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a worker died for good); a checkpoint was written first."""


def is_worker_failure(err: BaseException) -> bool:
    """A failure of the worker itself (process, node, or envs beyond repair), not a bug in the
    algorithm: the worker is replaced and its work re-run. Ray's task errors are instances of
    their cause, so an EnvFailure raised inside an actor is recognised too."""
    return isinstance(err, EnvFailure) or type(err).__name__ in ACTOR_DEATH or any(
        cls.__name__ in ACTOR_DEATH for cls in type(err).__mro__)


class WorkerPool:
    def __init__(self, runtime: Any, make_worker: Callable[[int, int], Any], num_workers: int,
                 config: WorkersConfig, log: Callable[[str], None] = print):
        """`make_worker(slot, generation)` spawns the worker for a slot (generation = restarts so far)."""
        self.runtime, self.make_worker, self.config, self.log = runtime, make_worker, config, log
        self.workers: dict[int, Any] = {}
        self.restarts: dict[int, int] = {}
        self.restarts_total = 0
        self.pending: dict[int, tuple[Any, Any]] = {}  # slot -> (handle, ping future), joining
        self.pending_since: dict[int, float] = {}  # slot -> when it was asked for (time.monotonic)
        self.retiring: set[int] = set()
        self.confirmed: set[int] = set()  # slots whose current worker has answered once
        for slot in range(num_workers):
            self.workers[slot] = make_worker(slot, 0)
            self.restarts[slot] = 0

    def __len__(self) -> int:
        return len(self.workers)

    @property
    def slots(self) -> list[int]:
        return sorted(self.workers)

    def handle(self, slot: int) -> Any:
        return self.workers[slot]

    # ------------------------------------------------------------------ failures
    def replace(self, slot: int, reason: str) -> Any:
        """Restart the worker of `slot` after the backoff delay; raise TrainingError when not allowed."""
        done = self.restarts.get(slot, 0)
        if not self.config.restart_failed_workers:
            raise TrainingError(f"rollout worker {slot} failed ({reason}) and workers.restart_failed_workers is off")
        if done >= self.config.max_worker_restarts:
            raise TrainingError(f"rollout worker {slot} failed ({reason}) after {done} restarts "
                                f"(workers.max_worker_restarts={self.config.max_worker_restarts})")
        self.runtime.kill(self.workers[slot])
        delay = min(self.config.restart_delay_s * 2 ** done, MAX_RESTART_DELAY_S)
        self.log(f"rollout worker {slot} failed ({reason}); restarting it in {delay:.1f} s "
                 f"(restart {done + 1} of at most {self.config.max_worker_restarts})")
        time.sleep(delay)
        self.restarts[slot] = done + 1
        self.restarts_total += 1
        self.confirmed.discard(slot)
        self.workers[slot] = self.make_worker(slot, done + 1)
        return self.workers[slot]

    def probe(self) -> list[int]:
        """Ping every worker; restart those that fail, or that answered before and now do not
        answer within probe_timeout_s (a worker still starting up is left alone). Returns the
        restarted slots."""
        futures = {self.workers[s].ping.remote(): s for s in self.slots}
        ready, _ = self.runtime.wait(list(futures), num_returns=len(futures), timeout=self.config.probe_timeout_s)
        restarted = []
        for future, slot in futures.items():
            if future in ready:
                try:
                    self.runtime.get(future)
                    self.confirmed.add(slot)
                    continue
                except Exception as err:
                    if not is_worker_failure(err):
                        raise
                    reason = type(err).__name__
            elif slot not in self.confirmed:
                continue  # still starting (imports, envs, or waiting for a node): not dead yet
            else:
                reason = f"no answer to a health probe within {self.config.probe_timeout_s} s"
            self.replace(slot, reason)
            restarted.append(slot)
        return restarted

    # ------------------------------------------------------------------ resizing
    def resize(self, target: int) -> None:
        """Aim for `target` workers: spawn new slots (they join once they answer) or mark the
        highest slots for retirement (the trainer retires them when they are idle)."""
        active = [s for s in self.slots if s not in self.retiring] + sorted(self.pending)
        if target > len(active):
            next_slot = max([*self.workers, *self.pending, -1]) + 1
            for slot in range(next_slot, next_slot + target - len(active)):
                handle = self.make_worker(slot, 0)
                self.restarts[slot] = 0
                self.pending[slot] = (handle, handle.ping.remote())
                self.pending_since[slot] = time.monotonic()
            self.log(f"scaling to {target} rollout workers: starting {target - len(active)}")
        elif target < len(active):
            excess = len(active) - target
            for slot in sorted(self.pending, reverse=True)[:excess]:
                self.runtime.kill(self.pending.pop(slot)[0])
                self.pending_since.pop(slot, None)
                excess -= 1
            self.retiring |= set(sorted((s for s in self.slots if s not in self.retiring), reverse=True)[:excess])
            self.log(f"scaling to {target} rollout workers: retiring slots {sorted(self.retiring)}")

    def admit_ready(self) -> list[int]:
        """Move pending workers that answered their probe into the pool."""
        if not self.pending:
            return []
        futures = {ping: slot for slot, (_, ping) in self.pending.items()}
        ready, _ = self.runtime.wait(list(futures), num_returns=len(futures), timeout=0)
        joined = []
        for future in ready:
            slot = futures[future]
            handle, _ = self.pending.pop(slot)
            self.pending_since.pop(slot, None)
            try:
                self.runtime.get(future)
            except Exception as err:
                if not is_worker_failure(err):
                    raise
                self.log(f"new rollout worker {slot} failed to start ({type(err).__name__}); dropped")
                continue
            self.workers[slot] = handle
            self.confirmed.add(slot)
            joined.append(slot)
        return joined

    def retire(self, slot: int) -> None:
        self.runtime.kill(self.workers.pop(slot))
        self.retiring.discard(slot)

    def target(self) -> int:
        return len([s for s in self.slots if s not in self.retiring]) + len(self.pending)
