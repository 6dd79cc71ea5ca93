"""The rollout workers of a run: spawning, health probes, restarts with backoff and a cap, and
resizing while the run trains.

Workers live in numbered slots. A worker that dies (its process or node is gone, or its envs
kept failing) is replaced in the same slot in the background: the replacement is spawned after
`restart_delay_s` (doubling per restart of that slot, at most 30 s) and takes work only once it
answers a probe, so the driver never waits on it and the healthy workers keep sampling. At most
`max_worker_restarts` restarts per slot; when a slot runs out of them, or restarts are off, the
runner writes a checkpoint and stops with a clear message (`TrainingError`).

Resizing (`metaray scale`) works the same way: new slots are spawned at once and join when they
answer (on an autoscaling cluster their node may still be starting); removed slots are retired
by the runner once their current work is done. A worker that cannot be placed (no node has a
free CPU) simply stays waiting: `waiting()` says which, and since when.
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
    """The run's worker slots. `workers` take work (the initial ones and those that joined);
    `pending` were spawned and have not answered yet; `restarting` wait out their backoff."""

    def __init__(self, runtime: Any, make_worker: Callable[[int, int], Any], num_workers: int,
                 config: WorkersConfig, log: Callable[[str], None] = print):
        """`make_worker(slot, generation)` spawns the worker for a slot (generation = restarts so far)."""
        self.runtime, self.make_worker, self.config, self.log = runtime, make_worker, config, log
        self.workers: dict[int, Any] = {}
        self.restarts: dict[int, int] = {}
        self.restarts_total = 0
        self.pending: dict[int, tuple[Any, Any]] = {}  # slot -> (handle, ping future), joining
        self.restarting: dict[int, float] = {}  # slot -> when its replacement is spawned (time.monotonic)
        self.waiting_since: dict[int, float] = {}  # slot -> when it was asked for, until it joins
        self.retiring: set[int] = set()
        self.confirmed: set[int] = set()  # slots whose current worker has answered once
        for slot in range(num_workers):
            self.workers[slot] = make_worker(slot, 0)
            self.restarts[slot] = 0

    def settle(self) -> list[int]:
        """Wait up to workers.start_grace_s for the initial workers to answer; those still silent
        then (no node with room yet, say) become `pending` and join when they answer, so no
        runner hands work (or, in a synchronous update, waits) on a worker that may never
        start. A worker that fails to start is replaced. With none answering, the runners' wait
        for a worker (and workers.unplaceable_timeout_s) takes over. Returns the slots set pending."""
        grace_s = self.config.start_grace_s
        pings = {slot: handle.ping.remote() for slot, handle in self.workers.items()}
        if not pings:
            return []
        start = time.monotonic()
        self.runtime.wait(list(pings.values()), num_returns=len(pings), timeout=grace_s)
        for slot, ping in pings.items():  # as replacements do: they join by answering (admit_ready)
            self.pending[slot] = (self.workers.pop(slot), ping)
            self.waiting_since[slot] = start
        self.admit_ready()
        silent = sorted(slot for slot in pings if slot in self.pending)
        if silent:
            self.log(f"rollout workers {silent} did not start within {grace_s:g} s (no node with room yet?); "
                     f"training starts with {len(self.workers)}, they join when they answer")
        return silent

    def __len__(self) -> int:
        """Workers that take work now."""
        return len(self.workers)

    @property
    def slots(self) -> list[int]:
        return sorted(self.workers)

    def handle(self, slot: int) -> Any:
        return self.workers[slot]

    def waiting(self) -> dict[int, float]:
        """Slots asked for that do not take work yet (spawned or still in backoff), and since when."""
        return {slot: self.waiting_since.get(slot, 0.0) for slot in sorted([*self.pending, *self.restarting])}

    def target(self) -> int:
        return len([s for s in self.slots if s not in self.retiring]) + len(self.pending) + len(self.restarting)

    # ------------------------------------------------------------------ failures
    def replace(self, slot: int, reason: str) -> None:
        """Replace the worker of `slot` in the background (see `tick`); raise TrainingError when
        not allowed. A retiring slot is just dropped."""
        handle = self.workers.pop(slot) if slot in self.workers else self.pending.pop(slot, (None,))[0]
        if handle is not None:
            self.runtime.kill(handle)
        self.confirmed.discard(slot)
        if slot in self.retiring:
            self.retiring.discard(slot)
            return
        done = self.restarts.get(slot, 0)
        if not self.config.restart_failed_workers:
            raise TrainingError(f"rollout worker {slot} failed ({reason}) and workers.restart_failed_workers is off")
        if done >= self.config.max_worker_restarts:
            raise TrainingError(f"rollout worker {slot} failed ({reason}) after {done} restarts "
                                f"(workers.max_worker_restarts={self.config.max_worker_restarts})")
        delay = min(self.config.restart_delay_s * 2 ** done, MAX_RESTART_DELAY_S)
        self.log(f"rollout worker {slot} failed ({reason}); its replacement starts in {delay:.1f} s "
                 f"(restart {done + 1} of at most {self.config.max_worker_restarts}), the others go on")
        self.restarts[slot] = done + 1
        self.restarts_total += 1
        now = time.monotonic()
        self.restarting[slot] = now + delay
        self.waiting_since.setdefault(slot, now)
        self._spawn_due()

    def _spawn_due(self) -> None:
        """Spawn the replacements whose backoff is over; they join once they answer."""
        now = time.monotonic()
        for slot, due in sorted(self.restarting.items()):
            if due <= now:
                del self.restarting[slot]
                handle = self.make_worker(slot, self.restarts[slot])
                self.pending[slot] = (handle, handle.ping.remote())

    def tick(self, wait_s: float = 0.0) -> list[int]:
        """Spawn due replacements and admit the workers that answered; with `wait_s`, wait that
        long for one to answer (or for a backoff to end) when none has. Returns the joined slots."""
        self._spawn_due()
        joined = self.admit_ready()
        if joined or wait_s <= 0 or not (self.pending or self.restarting):
            return joined
        if self.pending:
            self.runtime.wait([ping for _, ping in self.pending.values()], num_returns=1, timeout=wait_s)
        else:
            time.sleep(max(0.0, min(wait_s, min(self.restarting.values()) - time.monotonic())))
        self._spawn_due()
        return self.admit_ready()

    def probe(self) -> list[int]:
        """Ping every worker; replace those that fail, or that answered before and now do not
        answer within probe_timeout_s (a worker still starting up is left alone). Returns the
        replaced slots."""
        futures = {self.workers[s].ping.remote(): s for s in self.slots}
        if not futures:
            return []
        ready, _ = self.runtime.wait(list(futures), num_returns=len(futures), timeout=self.config.probe_timeout_s)
        replaced = []
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
            replaced.append(slot)
        return replaced

    # ------------------------------------------------------------------ resizing
    def resize(self, target: int) -> None:
        """Aim for `target` workers: spawn new slots (they join once they answer) or drop
        waiting slots and mark the highest live slots for retirement (the runner retires them
        when they are idle)."""
        active = [s for s in self.slots if s not in self.retiring] + list(self.waiting())
        if target > len(active):
            next_slot = max([*self.workers, *self.pending, *self.restarting, *self.restarts, -1]) + 1
            for slot in range(next_slot, next_slot + target - len(active)):
                handle = self.make_worker(slot, 0)
                self.restarts[slot] = 0
                self.pending[slot] = (handle, handle.ping.remote())
                self.waiting_since[slot] = time.monotonic()
            self.log(f"scaling to {target} rollout workers: starting {target - len(active)}")
        elif target < len(active):
            excess = len(active) - target
            for slot in sorted(self.waiting(), reverse=True)[:excess]:
                if slot in self.pending:
                    self.runtime.kill(self.pending.pop(slot)[0])
                self.restarting.pop(slot, None)
                self.waiting_since.pop(slot, None)
                excess -= 1
            self.retiring |= set(sorted((s for s in self.slots if s not in self.retiring), reverse=True)[:excess])
            self.log(f"scaling to {target} rollout workers: retiring slots {sorted(self.retiring)}")

    def admit_ready(self) -> list[int]:
        """Move pending workers that answered their probe into the pool; one that failed to
        start is replaced like any failed worker."""
        if not self.pending:
            return []
        futures = {ping: slot for slot, (_, ping) in self.pending.items()}
        ready, _ = self.runtime.wait(list(futures), num_returns=len(futures), timeout=0)
        joined = []
        for future in ready:
            slot = futures[future]
            try:
                self.runtime.get(future)
            except Exception as err:
                if not is_worker_failure(err):
                    raise
                self.replace(slot, f"{type(err).__name__} while starting")
                continue
            self.workers[slot] = self.pending.pop(slot)[0]
            self.waiting_since.pop(slot, None)
            self.confirmed.add(slot)
            joined.append(slot)
        return sorted(joined)

    def cancel_waiting(self) -> None:
        """Drop the workers that do not take work yet (the run is over: a replacement still
        waiting for a node must not hold a resource request after it)."""
        for handle, _ in self.pending.values():
            self.runtime.kill(handle)
        self.pending.clear()
        self.restarting.clear()
        self.waiting_since.clear()

    def retire(self, slot: int) -> None:
        self.runtime.kill(self.workers.pop(slot))
        self.retiring.discard(slot)
