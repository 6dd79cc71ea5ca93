"""`faulty`: point navigation whose env fails on purpose, to test fault tolerance end to end.

In the spirit of RLlib's fault-injecting test env: each step raises with probability
`raise_rate`, returns a NaN observation with probability `nan_rate`, or sleeps `hang_s` seconds
with probability `hang_rate`; `reset_raise_rate` does the same for resets. Failures are drawn
from the env's own RNG (`np_random`, seeded through the vector env's seed).

Process-level faults, for runs on Ray only (they end the process): `crash_every_steps` kills
the worker process after that many env steps in it; `crash_once_file` kills the first process
to step after creating that file (one crash in the whole cluster); `hang_once_file` makes one
step in the whole cluster sleep `hang_s` the same way. It has no natively batched env: it goes
through the guarded `make_env` path like MuJoCo and user families.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from metaray.tasks.base import SeededFamily, Task
from metaray.tasks.point_nav import (
    ACTION_SPACE,
    GOAL_TOLERANCE,
    MAX_ACTION,
    OBSERVATION_SPACE,
    goal,
)


class InjectedFault(RuntimeError):
    """What the faulty env raises on purpose."""


_steps_in_process = 0


def _claim(path: str) -> bool:
    """True for exactly one caller across processes: whoever creates the file."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


class FaultyPointNavEnv(gym.Env):
    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, task: Task, family: FaultyFamily) -> None:
        self.observation_space, self.action_space = OBSERVATION_SPACE, ACTION_SPACE
        self.f = family
        self.task = task
        self._position = np.zeros(2)
        self._t = 0

    def set_task(self, task: Task) -> None:
        self.task = task

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        if self.np_random.random() < self.f.reset_raise_rate:
            raise InjectedFault("injected reset failure")
        self._position, self._t = np.zeros(2), 0
        return self._position.astype(np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        global _steps_in_process
        _steps_in_process += 1
        f = self.f
        if (f.crash_every_steps and _steps_in_process >= f.crash_every_steps) or (
                f.crash_once_file and _claim(f.crash_once_file)):
            os._exit(1)
        if f.hang_once_file and _claim(f.hang_once_file):
            time.sleep(f.hang_s)
        u = self.np_random.random()
        if u < self.f.raise_rate:
            raise InjectedFault("injected step failure")
        u -= self.f.raise_rate
        if u < self.f.hang_rate:
            time.sleep(self.f.hang_s)
        u -= self.f.hang_rate
        self._position = self._position + np.clip(np.asarray(action, np.float64), -MAX_ACTION, MAX_ACTION)
        self._t += 1
        dx, dy = self._position - goal(self.task)
        obs = self._position.astype(np.float32)
        if u < self.f.nan_rate:
            obs = np.full(2, np.nan, np.float32)
        terminated = bool(abs(dx) < GOAL_TOLERANCE and abs(dy) < GOAL_TOLERANCE)
        return obs, float(-np.hypot(dx, dy)), terminated, self._t >= self.f.horizon and not terminated, {}


@dataclass(frozen=True)
class FaultyFamily(SeededFamily):
    """Testing: point-nav whose env raises, returns NaN or hangs at configurable rates."""

    horizon: int = 20
    raise_rate: float = 0.0
    nan_rate: float = 0.0
    hang_rate: float = 0.0
    hang_s: float = 2.0
    reset_raise_rate: float = 0.0
    crash_every_steps: int = 0
    crash_once_file: str = ""
    hang_once_file: str = ""

    name: ClassVar[str] = "faulty"

    def __post_init__(self) -> None:
        rates = {k: getattr(self, k) for k in ("raise_rate", "nan_rate", "hang_rate", "reset_raise_rate")}
        for key, value in rates.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"FaultyFamily: {key} must be in [0, 1], got {value}")
        if rates["raise_rate"] + rates["nan_rate"] + rates["hang_rate"] > 1.0:
            raise ValueError("FaultyFamily: raise_rate + nan_rate + hang_rate must be at most 1")
        if self.horizon < 1 or self.hang_s < 0:
            raise ValueError("FaultyFamily: horizon must be >= 1 and hang_s >= 0")

    @property
    def max_episode_steps(self) -> int:
        return self.horizon

    def draw_params(self, rng: np.random.Generator) -> tuple[float, ...]:
        return tuple(rng.uniform(-0.5, 0.5, size=2).tolist())

    def make_env(self, task: Task | None = None) -> FaultyPointNavEnv:
        return FaultyPointNavEnv(task or self.task("train", 0), self)
