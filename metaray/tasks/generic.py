"""The slow path: a TaskVectorEnv over any family that only provides `make_env`.

Built on gymnasium's SyncVectorEnv in SAME_STEP autoreset mode. Each slot env is wrapped so that
a task given with `set_task` reaches the user's env only at that slot's next reset, whatever the
user's own `set_task` does; `final_obs` is turned into one dense array for Box observations so
both paths look alike to the samplers. Slot envs are guarded: one that raises, returns NaN/inf
or hangs is rebuilt and its episode marked dropped (`info["env_failure"]`), the worker lives.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager, suppress
from copy import deepcopy
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from metaray.tasks.base import (
    Task,
    TaskFamily,
    TaskVectorEnv,
    check_state_slots,
    task_from_json,
    task_to_json,
)


class EnvFailure(RuntimeError):
    """An env kept failing on reset after being recreated `max_recreate` times in a row."""


class _StepTimeout(Exception):
    pass


@dataclass
class EnvGuardConfig:
    """How slot envs are watched (set per process by the rollout worker, `workers.env_*`)."""

    step_timeout_s: float | None = 30.0  # a step or reset taking longer counts as a hang
    max_recreate: int = 3  # failed resets in a row before EnvFailure


GUARD = EnvGuardConfig()
ENV_FAILURES: Counter[str] = Counter()  # reason -> count, in this process (workers report deltas)
LAST_ENV_FAILURE: list[str] = [""]  # the newest failure's full reason ("exception: ValueError"), in this process


def _on_alarm(signum: int, frame: Any) -> None:
    raise _StepTimeout()


@contextmanager
def _deadline(seconds: float | None) -> Iterator[None]:
    """Raise _StepTimeout in the main thread if the body runs past `seconds` (SIGALRM; the
    handler is (re)installed only when another one replaced it, each call just arms and disarms
    the timer). Off the main thread (or without SIGALRM) the body runs unguarded and the caller
    checks its duration."""
    if not seconds or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return
    if signal.getsignal(signal.SIGALRM) is not _on_alarm:
        signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _finite(*values: Any) -> bool:
    for v in values:
        if isinstance(v, (float, int)):
            if not math.isfinite(v):
                return False
        elif isinstance(v, np.ndarray) and v.dtype.kind == "f":  # the common case: no conversion
            # one reduction instead of isfinite + all: NaN/inf anywhere make the sum non-finite
            # (so would finite values summing past 1e308, an observation no env produces sanely)
            if not math.isfinite(v.sum()):
                return False
        else:
            try:
                if not np.all(np.isfinite(np.asarray(v, dtype=np.float64))):
                    return False
            except (TypeError, ValueError):
                pass  # non-numeric observations (e.g. dicts of strings) are not checked
    return True


class _TaskSlot(gym.Wrapper):
    """One slot's env: hands it its next task right before its reset, and guards it.

    An env whose step raises, returns NaN/inf, or runs past `GUARD.step_timeout_s` is closed and
    rebuilt with `make_env(task)`; the step returns the fresh env's first observation with reward
    0, `truncated=True` and `info["env_failure"]` = the reason, so the sampler drops the episode
    and the slot goes on. Failures are counted in `ENV_FAILURES`.
    """

    def __init__(self, make_env: Callable[[Task], gym.Env], task: Task) -> None:
        env = make_env(task)
        super().__init__(env)
        self._make_env, self._task = make_env, task
        self._bind(env)
        self._next_task: Task | None = None
        # SyncVectorEnv writes into its first env's metadata, often a class attribute: copy it.
        self.metadata = dict(env.metadata)

    def _bind(self, env: gym.Env) -> None:
        try:
            self._set_inner_task = env.get_wrapper_attr("set_task")
        except AttributeError:
            raise TypeError(
                f"{type(env.unwrapped).__name__} has no set_task(task) method; "
                "a task family's make_env must return an env with one"
            ) from None

    def set_task(self, task: Task) -> None:
        self._next_task = task

    def slot_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """This slot's tasks and its env's state (`get_env_state`, which the family's env may
        define; NotImplementedError without it)."""
        get = getattr(self.env, "get_env_state", None)
        if get is None:
            raise NotImplementedError(f"{type(self.env).__name__} has no get_env_state(): it cannot save its state")
        meta, arrays = get()
        nxt = None if self._next_task is None else task_to_json(self._next_task)
        return {"task": task_to_json(self._task), "next_task": nxt, "env": meta}, arrays

    def load_slot_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        set_state = getattr(self.env, "set_env_state", None)
        if set_state is None:
            raise NotImplementedError(f"{type(self.env).__name__} has no set_env_state(): it cannot restore a state")
        self._task = task_from_json(meta["task"])
        self._next_task = None if meta["next_task"] is None else task_from_json(meta["next_task"])
        set_state(meta["env"], arrays)

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        if self._next_task is not None:
            self._set_inner_task(self._next_task)
            self._task, self._next_task = self._next_task, None
        reason = self._guarded(lambda: self.env.reset(**kwargs))
        if isinstance(reason, str):
            return self._recreate(reason)
        return reason

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        # The hot path, inlined: the deadline is armed once around the whole vector step
        # (GymTaskVectorEnv.step), a hang raises _StepTimeout inside the slot that hangs, caught here.
        timeout = GUARD.step_timeout_s
        start = time.monotonic()
        try:
            out = self.env.step(action)
        except _StepTimeout:
            reason = "hang"
        except Exception as err:  # the user's env raised: that env is broken, not the worker
            reason = f"exception: {type(err).__name__}"
        else:
            if timeout and time.monotonic() - start > timeout:
                reason = "hang"
            elif not _finite(out[0], out[1]):
                reason = "non-finite"
            else:
                return out
        obs, info = self._recreate(reason)
        return obs, 0.0, False, True, {**info, "env_failure": reason}

    def _guarded(self, call: Callable[[], Any]) -> Any:
        """The call's result (a reset's), or the failure reason as a string."""
        timeout = GUARD.step_timeout_s
        start = time.monotonic()
        try:
            with _deadline(timeout):
                out = call()
        except _StepTimeout:
            return "hang"
        except Exception as err:  # the user's env raised: that env is broken, not the worker
            return f"exception: {type(err).__name__}"
        if timeout and time.monotonic() - start > timeout:
            return "hang"
        if not _finite(out[0], *(out[1:2] if len(out) == 5 else ())):
            return "non-finite"
        return out

    def _recreate(self, reason: str) -> tuple[Any, dict[str, Any]]:
        ENV_FAILURES[reason.split(":")[0]] += 1
        LAST_ENV_FAILURE[0] = reason
        for _ in range(GUARD.max_recreate):
            with suppress(Exception):
                self.env.close()
            self.env = self._make_env(self._task)
            self._bind(self.env)
            out = self._guarded(lambda: self.env.reset())
            if not isinstance(out, str):
                return out
            ENV_FAILURES[out.split(":")[0]] += 1
            LAST_ENV_FAILURE[0] = out
        raise EnvFailure(f"env of task {self._task.task_id} ({self._task.family}) failed {GUARD.max_recreate + 1} "
                         f"times in a row, last: {out}")


ALWAYS_BATCHED = ("final_obs", "final_info", "env_failure")


class _SyncVectorEnv(SyncVectorEnv):
    """SyncVectorEnv that batches only the info keys asked for (None: all, gymnasium's behaviour).

    gymnasium batches every key of every slot's info on every step (`_add_info`, an array and a
    mask per key): about a tenth of a HalfCheetah rollout's time, for keys the samplers never
    read. `final_obs`, `final_info` and `env_failure` are always kept."""

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]], info_keys: Collection[str] | None, **kwargs: Any):
        super().__init__(env_fns, **kwargs)
        self._info_keys = None if info_keys is None else frozenset({*info_keys, *ALWAYS_BATCHED})

    def _add_info(self, vector_infos: dict[str, Any], env_info: dict[str, Any], env_num: int) -> dict[str, Any]:
        keys = self._info_keys
        if keys is not None:
            env_info = {k: v for k, v in env_info.items() if k in keys}
            if not env_info:
                return vector_infos
        return super()._add_info(vector_infos, env_info, env_num)


class GymTaskVectorEnv(TaskVectorEnv):
    """`family.make_env(task)` per slot, stepped one after another; same contract as the fast path.

    `info_keys`: the per-slot info keys to batch into the step's infos (None: every key, as
    gymnasium); the samplers pass `SAMPLER_INFO_KEYS`, the only ones they read.
    """

    def __init__(
        self,
        family: TaskFamily,
        tasks: Sequence[Task],
        envs_per_task: int = 1,
        seed: int | None = None,
        info_keys: Collection[str] | None = None,
    ) -> None:
        if (
            isinstance(envs_per_task, bool)
            or not isinstance(envs_per_task, int)
            or envs_per_task < 1
        ):
            raise ValueError(f"envs_per_task must be an integer >= 1, got {envs_per_task!r}")
        if len(tasks) == 0:
            raise ValueError("GymTaskVectorEnv needs at least one task")
        self.family = family
        self.tasks = [task for task in tasks for _ in range(envs_per_task)]
        self._vec = _SyncVectorEnv(
            [self._slot_factory(family, task) for task in self.tasks],
            info_keys,
            autoreset_mode=AutoresetMode.SAME_STEP,
        )
        self.num_envs = self._vec.num_envs
        self.metadata = {**self._vec.metadata, "autoreset_mode": AutoresetMode.SAME_STEP}
        self.single_observation_space = self._vec.single_observation_space
        self.single_action_space = self._vec.single_action_space
        self.observation_space = self._vec.observation_space
        self.action_space = self._vec.action_space
        self._dense_final_obs = isinstance(self.single_observation_space, gym.spaces.Box)
        self._first_seed = seed
        self._last_obs: Any = None

    @staticmethod
    def _slot_factory(family: TaskFamily, task: Task) -> Any:
        return lambda: _TaskSlot(family.make_env, task)

    @property
    def envs(self) -> list[gym.Env]:
        """The slot envs (each wrapped in the task-deferring wrapper)."""
        return self._vec.envs

    def set_task(self, slot: int, task: Task) -> None:
        self._vec.envs[slot].set_task(task)
        self.tasks[slot] = task

    def get_rng_state(self) -> list[dict[str, Any]]:
        return [env.np_random.bit_generator.state for env in self._vec.envs]

    def set_rng_state(self, states: list[dict[str, Any]]) -> None:
        if len(states) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} env states, got {len(states)}")
        for env, state in zip(self._vec.envs, states, strict=True):
            env.np_random.bit_generator.state = state
        self._first_seed = None  # the restored streams continue; no reseeding at the next reset

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Supported when every slot's env defines `get_env_state()` / `set_env_state(meta,
        arrays)` (the MuJoCo families do) and observations are arrays."""
        if self._last_obs is not None and not isinstance(self._last_obs, np.ndarray):
            raise NotImplementedError(f"{type(self).__name__} saves array observations only")
        slots, arrays = [], {}
        for i, env in enumerate(self._vec.envs):
            meta, slot_arrays = env.slot_state()
            slots.append(meta)
            arrays.update({f"slots/{i}/{name}": np.array(a, copy=True) for name, a in slot_arrays.items()})
        if self._last_obs is not None:
            arrays["last_obs"] = np.array(self._last_obs, copy=True)
        meta = {"tasks": [task_to_json(task) for task in self.tasks], "first_seed": self._first_seed,
                "started": self._last_obs is not None, "slots": slots}
        return meta, arrays

    def set_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        check_state_slots(self, meta)
        self.tasks = [task_from_json(task) for task in meta["tasks"]]
        self._first_seed = meta["first_seed"]
        for i, (env, slot) in enumerate(zip(self._vec.envs, meta["slots"], strict=True)):
            prefix = f"slots/{i}/"
            env.load_slot_state(slot, {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)})
        if meta["started"]:
            self._last_obs = np.array(arrays["last_obs"], copy=True)
            for i in range(self.num_envs):  # what a masked reset batches for the slots it leaves alone
                self._vec._env_obs[i] = self._last_obs[i].copy()
        else:
            self._last_obs = None

    def reset(
        self,
        *,
        seed: int | list[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[Any, dict[str, Any]]:
        if seed is None and self._first_seed is not None:
            seed = self._first_seed
        self._first_seed = None
        # SyncVectorEnv pops reset_mask out of the caller's dict and rejects an all-False mask.
        options = dict(options) if options else None
        if options is not None and "reset_mask" in options:
            mask = np.asarray(options["reset_mask"])
            if mask.dtype != np.bool_ or mask.shape != (self.num_envs,):
                raise ValueError(
                    f"reset_mask must be a bool array of shape ({self.num_envs},), "
                    f"got dtype {mask.dtype} shape {mask.shape}"
                )
            if self._last_obs is None and not mask.all():
                raise RuntimeError("the first reset() must reset every slot (no reset_mask)")
            if not mask.any():
                return deepcopy(self._last_obs), {}
            options["reset_mask"] = mask
        obs, infos = self._vec.reset(seed=seed, options=options)
        self._last_obs = obs
        return obs, infos

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self._last_obs is None:
            raise RuntimeError("call reset() before step()")
        with _deadline(GUARD.step_timeout_s):  # one timer per vector step, not one per slot
            obs, rewards, terminated, truncated, infos = self._vec.step(actions)
        truncated &= ~terminated  # TimeLimit sets both on a last-step termination; we don't
        final_info = infos.get("final_info", {})
        if "_env_failure" in final_info:  # lift the slot failures to a dense top-level mask
            infos["env_failure"] = np.asarray(final_info["_env_failure"], bool)
        if self._dense_final_obs and "final_obs" in infos:
            done = infos["_final_obs"]
            final = np.array(obs, copy=True)
            final[done] = np.stack(infos["final_obs"][done])
            infos["final_obs"] = final
        self._last_obs = obs
        return obs, rewards, terminated, truncated, infos

    def close_extras(self, **kwargs: Any) -> None:
        vec = getattr(self, "_vec", None)  # absent when __init__ failed
        if vec is not None:
            vec.close(**kwargs)
