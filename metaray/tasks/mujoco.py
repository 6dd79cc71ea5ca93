"""MuJoCo locomotion task families (Finn et al. 2017, MAML; Rothfuss et al. 2019, ProMP).

Each family wraps one of gymnasium's MuJoCo v5 environments (HalfCheetah-v5, Ant-v5) in a small
`gymnasium.Wrapper` that replaces the reward with the task's, computed from the terms the v5 env
already reports in `info` (`x_velocity`, `x_position`/`y_position`, `reward_ctrl`,
`reward_contact`, `reward_survive`), so the physics is never re-derived. The env's own reward is
kept in `info["env_reward"]` and the task-specific term in `info["reward_task"]`.

Conventions shared with the numpy families:
- `set_task(task)` (reachable through wrappers with `env.get_wrapper_attr("set_task")`) takes
  effect at the next reset; the running episode keeps its task.
- an episode is cut after the family's `horizon` steps (gymnasium's TimeLimit, set through
  `gymnasium.make(..., max_episode_steps=horizon)`); an episode that terminates on its last step
  is terminated, not truncated.
- observations are the v5 envs' own float64 vectors, matching their declared Box spaces.

`metaray.tasks.make_vector_env` steps their slots together (`metaray.tasks.mujoco_batched`: one
MjData per slot, MuJoCo's C step, numpy for the rest), with exactly the observations and rewards
of these envs side by side (`GymTaskVectorEnv`, the reference, still what `make_env` gives).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from metaray.tasks.base import SeededFamily, Task, task_from_json, task_to_json
from metaray.tasks.native import check_float, check_int, check_task

HALFCHEETAH_ID = "HalfCheetah-v5"
ANT_ID = "Ant-v5"
# Control cost weight of the HalfCheetah tasks (Finn et al. 2017): reward -= 0.05 * ||a||^2.
HALFCHEETAH_CTRL_COST = 0.05
# The family ranges a config may ask for (`task.kwargs`), beyond which a task is physically out of
# reach and training on it would only waste the run. HalfCheetah: no published policy runs faster
# than ~15 m/s (SAC's HalfCheetah returns of ~12-15k over 1000 steps), so a target velocity is
# limited to |v*| <= 15 m/s. Ant: a goal radius up to 60 m, what the ant covers in Ant-v5's own
# 1000-step episode (50 s) at 1.2 m/s, about the speed of good Ant-v5 policies (returns ~6000).
# The limit does not depend on the horizon: a short horizon with the default radius is a
# legitimate (debugging) setting.
HALFCHEETAH_MAX_TARGET_SPEED = 15.0
ANT_MAX_GOAL_RADIUS = 60.0


class MujocoTaskWrapper(gym.Wrapper):
    """Runs one task of a family on a MuJoCo env; subclasses define the task reward.

    Subclasses set `family` and `num_params` and define `_load(task)` (read the parameters) and
    `_task_reward(info)` -> (reward, task term), from the inner env's `info` only.
    """

    family: ClassVar[str]
    num_params: ClassVar[int]

    def __init__(self, env: gym.Env, task: Task) -> None:
        super().__init__(env)
        check_task(task, self.family, self.num_params)
        self.task = task
        self._next_task = task
        self._load(task)

    def set_task(self, task: Task) -> None:
        """Run `task` from the next reset on (the current episode keeps its task)."""
        check_task(task, self.family, self.num_params)
        self._next_task = task

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        if self._next_task is not self.task:
            self.task = self._next_task
            self._load(self.task)
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, env_reward, terminated, truncated, info = self.env.step(action)
        reward, task_term = self._task_reward(info)
        info["env_reward"] = float(env_reward)
        info["reward_task"] = task_term
        terminated = bool(terminated)
        return obs, reward, terminated, bool(truncated) and not terminated, info

    def get_env_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The whole state a checkpoint keeps for exact resume (see `GymTaskVectorEnv.get_state`):
        MuJoCo's integration state (`mj_getState`, mjSTATE_INTEGRATION), the derived quantities
        the v5 envs read before stepping (`MUJOCO_DERIVED`, e.g. Ant's torso `xpos`), the
        wrappers' episode fields (TimeLimit's elapsed steps, ...), the tasks and the env's RNG."""
        import mujoco

        inner = self.env.unwrapped
        model, data = _mujoco_parts(inner)
        kind = mujoco.mjtState.mjSTATE_INTEGRATION
        physics = np.empty(mujoco.mj_stateSize(model, kind), np.float64)
        mujoco.mj_getState(model, data, physics, kind)
        meta = {"task": task_to_json(self.task), "next_task": task_to_json(self._next_task),
                "wrappers": _wrapper_fields(self.env), "rng": inner.np_random.bit_generator.state}
        arrays = {"physics": physics, **{f"data/{name}": getattr(data, name).copy() for name in MUJOCO_DERIVED}}
        return meta, arrays

    def set_env_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Continue from `get_env_state()`'s state (an env of the same family and settings)."""
        import mujoco

        inner = self.env.unwrapped
        model, data = _mujoco_parts(inner)
        kind = mujoco.mjtState.mjSTATE_INTEGRATION
        physics = np.asarray(arrays["physics"], np.float64)
        if physics.shape != (mujoco.mj_stateSize(model, kind),):
            raise ValueError(f"{type(self).__name__}.set_env_state: a MuJoCo state of another model")
        task, next_task = task_from_json(meta["task"]), task_from_json(meta["next_task"])
        check_task(task, self.family, self.num_params)
        check_task(next_task, self.family, self.num_params)
        self.task = task
        self._next_task = task if next_task == task else next_task
        self._load(task)
        _set_wrapper_fields(self.env, meta["wrappers"])
        inner.np_random.bit_generator.state = meta["rng"]
        mujoco.mj_setState(model, data, physics, kind)
        for name in MUJOCO_DERIVED:
            getattr(data, name)[...] = arrays[f"data/{name}"]

    def _load(self, task: Task) -> None:
        raise NotImplementedError

    def _task_reward(self, info: dict[str, Any]) -> tuple[float, float]:
        raise NotImplementedError


# Quantities MuJoCo derives from the state that gymnasium's v5 envs read before a step: after
# `mj_step` they describe the last substep's start, not the state, so they are kept as they are
# (Ant's x/y velocity is the torso `xpos` before and after). The step recomputes all others.
MUJOCO_DERIVED = ("xpos", "xquat", "xipos", "cfrc_ext")

# The episode fields of the wrappers `gymnasium.make` puts around a MuJoCo env.
_WRAPPER_FIELDS = {
    "TimeLimit": ("_elapsed_steps",),
    "OrderEnforcing": ("_has_reset",),
    "PassiveEnvChecker": ("checked_reset", "checked_step"),
}


def _mujoco_parts(inner: gym.Env) -> tuple[Any, Any]:
    from gymnasium.envs.mujoco.mujoco_env import MujocoEnv

    if not isinstance(inner, MujocoEnv):
        raise NotImplementedError(f"{type(inner).__name__} is not a gymnasium MujocoEnv: its state cannot be saved")
    return inner.model, inner.data


def _wrapper_chain(env: gym.Env) -> list[gym.Wrapper]:
    chain = []
    while isinstance(env, gym.Wrapper):
        if type(env).__name__ not in _WRAPPER_FIELDS:  # a wrapper whose state is not known
            raise NotImplementedError(f"cannot save the state of a {type(env).__name__} wrapper")
        chain.append(env)
        env = env.env
    return chain


def _wrapper_fields(env: gym.Env) -> list[dict[str, Any]]:
    return [{name: getattr(w, name) for name in _WRAPPER_FIELDS[type(w).__name__]} for w in _wrapper_chain(env)]


def _set_wrapper_fields(env: gym.Env, fields: list[dict[str, Any]]) -> None:
    chain = _wrapper_chain(env)
    if [sorted(f) for f in fields] != [sorted(_WRAPPER_FIELDS[type(w).__name__]) for w in chain]:
        raise ValueError("set_env_state: the env's wrappers differ from those the state was taken from")
    for wrapper, values in zip(chain, fields, strict=True):
        for name, value in values.items():
            setattr(wrapper, name, value)


class HalfCheetahVelEnv(MujocoTaskWrapper):
    """HalfCheetah paid -|x_velocity - v*| - 0.05 ||a||^2.

    With `observe_target` the observation ends with v* (a task-conditioned policy, e.g. the
    expert that demonstrates the tasks); by default the task is hidden, as meta-RL needs.
    """

    family = "halfcheetah-vel"
    num_params = 1

    def __init__(self, env: gym.Env, task: Task, observe_target: bool = False) -> None:
        super().__init__(env, task)
        self.observe_target = observe_target
        if observe_target:
            inner = env.observation_space
            self.observation_space = gym.spaces.Box(
                np.append(inner.low, -np.inf), np.append(inner.high, np.inf), dtype=inner.dtype
            )

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = super().reset(seed=seed, options=options)
        return self._observe(obs), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = super().step(action)
        return self._observe(obs), reward, terminated, truncated, info

    def _observe(self, obs: np.ndarray) -> np.ndarray:
        return np.append(obs, self.target_velocity).astype(obs.dtype) if self.observe_target else obs

    def _load(self, task: Task) -> None:
        self.target_velocity = float(task.params[0])

    def _task_reward(self, info: dict[str, Any]) -> tuple[float, float]:
        task_term = -abs(float(info["x_velocity"]) - self.target_velocity)
        return task_term + float(info["reward_ctrl"]), task_term


class HalfCheetahDirEnv(MujocoTaskWrapper):
    """HalfCheetah paid d * x_velocity - 0.05 ||a||^2 with d = +1 (forward) or -1 (backward)."""

    family = "halfcheetah-dir"
    num_params = 1

    def _load(self, task: Task) -> None:
        self.direction = float(task.params[0])

    def _task_reward(self, info: dict[str, Any]) -> tuple[float, float]:
        task_term = self.direction * float(info["x_velocity"])
        return task_term + float(info["reward_ctrl"]), task_term


def _ant_costs(info: dict[str, Any]) -> float:
    """Ant-v5's survive bonus minus its control and contact costs (the signed `info` terms)."""
    return (
        float(info["reward_survive"]) + float(info["reward_ctrl"]) + float(info["reward_contact"])
    )


class AntDirEnv(MujocoTaskWrapper):
    """Ant paid d * x_velocity + survive - ctrl - contact with d = +1 or -1 along x."""

    family = "ant-dir"
    num_params = 1

    def _load(self, task: Task) -> None:
        self.direction = float(task.params[0])

    def _task_reward(self, info: dict[str, Any]) -> tuple[float, float]:
        task_term = self.direction * float(info["x_velocity"])
        return task_term + _ant_costs(info), task_term


class AntGoalEnv(MujocoTaskWrapper):
    """Ant paid -||xy - goal||_1 + survive - ctrl - contact."""

    family = "ant-goal"
    num_params = 2

    def _load(self, task: Task) -> None:
        self.goal = (float(task.params[0]), float(task.params[1]))

    def _task_reward(self, info: dict[str, Any]) -> tuple[float, float]:
        gx, gy = self.goal
        task_term = -(abs(float(info["x_position"]) - gx) + abs(float(info["y_position"]) - gy))
        return task_term + _ant_costs(info), task_term


class _MujocoFamily(SeededFamily):
    """Task sampling and env construction shared by the MuJoCo families.

    Subclasses (frozen dataclasses with a `horizon` field) set `name`, `env_id`, `wrapper` and
    define `draw_params(rng)` and optionally `env_kwargs()` (kwargs for `gymnasium.make`).
    """

    name: ClassVar[str]
    env_id: ClassVar[str]
    wrapper: ClassVar[type[MujocoTaskWrapper]]
    vector_env_class: ClassVar[str]  # its class in metaray.tasks.mujoco_batched
    horizon: int

    @property
    def max_episode_steps(self) -> int:
        return self.horizon

    def make_env(self, task: Task | None = None) -> MujocoTaskWrapper:
        """A single env; without a task it runs train task 0 until `set_task`."""
        env = gym.make(self.env_id, max_episode_steps=self.horizon, **self.env_kwargs())
        return self.wrapper(env, task if task is not None else self.task("train", 0), **self.wrapper_kwargs())

    def wrapper_kwargs(self) -> dict[str, Any]:
        return {}

    def make_vector_env(self, tasks: Sequence[Task], envs_per_task: int = 1, seed: int | None = None) -> Any:
        """All slots stepped together (`metaray.tasks.mujoco_batched`): the same observations and
        rewards as `make_env` envs side by side with the same seeds, at a fraction of the cost."""
        from metaray.tasks import mujoco_batched

        vector_class = getattr(mujoco_batched, self.vector_env_class)
        return vector_class(tasks, envs_per_task, seed, horizon=self.horizon, env_kwargs=self.env_kwargs(),
                            **self.wrapper_kwargs())


def _draw_direction(rng: np.random.Generator) -> tuple[float, ...]:
    return (1.0 if rng.random() < 0.5 else -1.0,)


DIRECTION_TRAIN_TASKS = 50  # the length of a direction family's fixed train set (as Meta-World's 50 goals)


class _DirectionTrainTasks:
    """The fixed train set of a forward/backward family: forward and backward alternating.

    PEARL's ant-fwd-back and cheetah-fwd-back train on exactly the two directions. A fixed set
    drawn at random is unbalanced more often than not at small sizes: the 10 train ids PEARL's
    ant-dir config drew were 9 backward and 1 forward, and PEARL learned to run backward whatever
    the task (benchmarks/README.md, "PEARL"). The first 2k tasks of this list are k of each.
    """

    def train_tasks(self) -> list[Task]:
        """Distinct train tasks, forward, backward, forward, …, each direction's in id order (the
        fixed-set scheduler cycles through them; PEARL takes its first `num_train_tasks`)."""
        by_direction: dict[float, list[Task]] = {1.0: [], -1.0: []}
        task_id, half = 0, DIRECTION_TRAIN_TASKS // 2
        while min(len(tasks) for tasks in by_direction.values()) < half:
            task = self.task("train", task_id)  # type: ignore[attr-defined]
            by_direction[task.params[0]].append(task)
            task_id += 1
        return [task for pair in zip(by_direction[1.0][:half], by_direction[-1.0][:half], strict=True) for task in pair]


@dataclass(frozen=True)
class HalfCheetahVelFamily(_MujocoFamily):
    """HalfCheetah-v5 target velocity v* ~ U[0,2], reward -|v - v*| - 0.05|a|^2, horizon 200 (Finn et al. 2017).

    Task params: (v*,). The control cost is HalfCheetah-v5's own, built with
    `ctrl_cost_weight=0.05`, read from `info["reward_ctrl"]`. `observe_target: true` appends v*
    to the observation (for training the task-conditioned expert, not for meta-RL).
    `expert(task)` is the shipped expert (`metaray/tasks/experts/`), which demonstrates the
    tasks for adversarial imitation.
    """

    horizon: int = 200
    low: float = 0.0
    high: float = 2.0
    observe_target: bool = False

    name: ClassVar[str] = "halfcheetah-vel"
    env_id: ClassVar[str] = HALFCHEETAH_ID
    wrapper: ClassVar[type[MujocoTaskWrapper]] = HalfCheetahVelEnv
    vector_env_class: ClassVar[str] = "HalfCheetahVelVectorEnv"

    def __post_init__(self) -> None:
        check_int("HalfCheetahVelFamily", "horizon", self.horizon)
        check_float("HalfCheetahVelFamily", "low", self.low)
        check_float("HalfCheetahVelFamily", "high", self.high)
        if not self.low < self.high:
            raise ValueError(
                f"HalfCheetahVelFamily: low must be < high, got low={self.low} high={self.high}"
            )
        limit = HALFCHEETAH_MAX_TARGET_SPEED
        if self.low < -limit or self.high > limit:
            raise ValueError(
                f"HalfCheetahVelFamily: target velocities must lie in [-{limit:g}, {limit:g}] m/s "
                f"(faster than a HalfCheetah runs), got low={self.low} high={self.high}"
            )
        if not isinstance(self.observe_target, bool):
            raise ValueError(f"HalfCheetahVelFamily: observe_target must be true or false, got {self.observe_target!r}")

    def draw_params(self, rng: np.random.Generator) -> tuple[float, ...]:
        return (float(rng.uniform(self.low, self.high)),)

    def env_kwargs(self) -> dict[str, Any]:
        return {"ctrl_cost_weight": HALFCHEETAH_CTRL_COST}

    def wrapper_kwargs(self) -> dict[str, Any]:
        return {"observe_target": self.observe_target}

    def expert(self, task: Task) -> Callable[[np.ndarray], np.ndarray]:
        """The shipped velocity-conditioned expert on `task` (mean action; one obs or a batch)."""
        act = self.batched_expert([task])

        def on_task(obs: np.ndarray) -> np.ndarray:
            obs = np.asarray(obs)
            return act(obs[None])[0] if obs.ndim == 1 else act(obs)

        return on_task

    def batched_expert(self, tasks: list[Task]) -> Callable[[np.ndarray], np.ndarray]:
        """The expert on observations [N, obs_dim], row i on tasks[i] (or all on one task)."""
        from metaray.tasks.experts import load_expert

        policy = load_expert("halfcheetah-vel")
        targets = np.array([[float(t.params[0])] for t in tasks])

        def act(obs: np.ndarray) -> np.ndarray:
            if self.observe_target:
                return policy.act(obs)
            column = np.broadcast_to(targets, (len(obs), 1)).astype(obs.dtype)
            return policy.act(np.concatenate([obs, column], axis=1))

        return act


@dataclass(frozen=True)
class HalfCheetahDirFamily(_DirectionTrainTasks, _MujocoFamily):
    """HalfCheetah-v5 forward or backward (d = +-1), reward d*v - 0.05|a|^2, horizon 200 (Finn et al. 2017).

    Task params: (d,), +1 or -1 with p=0.5 each. The control cost is HalfCheetah-v5's own, built with
    `ctrl_cost_weight=0.05`, read from `info["reward_ctrl"]`.
    """

    horizon: int = 200

    name: ClassVar[str] = "halfcheetah-dir"
    env_id: ClassVar[str] = HALFCHEETAH_ID
    wrapper: ClassVar[type[MujocoTaskWrapper]] = HalfCheetahDirEnv
    vector_env_class: ClassVar[str] = "HalfCheetahDirVectorEnv"

    def __post_init__(self) -> None:
        check_int("HalfCheetahDirFamily", "horizon", self.horizon)

    def draw_params(self, rng: np.random.Generator) -> tuple[float, ...]:
        return _draw_direction(rng)

    def env_kwargs(self) -> dict[str, Any]:
        return {"ctrl_cost_weight": HALFCHEETAH_CTRL_COST}


@dataclass(frozen=True)
class AntDirFamily(_DirectionTrainTasks, _MujocoFamily):
    """Ant-v5 forward or backward along x (d = +-1), reward d*v_x + survive - costs, horizon 200 (ProMP).

    Task params: (d,). Like ProMP's ant-rand-direc, the direction is +1 or -1 along the x axis
    (1D, p=0.5 each), not a 2D unit vector. The survive bonus, control cost (0.5|a|^2) and
    contact cost are Ant-v5's defaults, read from `info`; the episode terminates when the ant is
    unhealthy (torso height outside [0.2, 1.0]), as Ant-v5 does. Observations exclude the x/y
    position (Ant-v5's default) and include the clipped contact forces.
    """

    horizon: int = 200

    name: ClassVar[str] = "ant-dir"
    env_id: ClassVar[str] = ANT_ID
    wrapper: ClassVar[type[MujocoTaskWrapper]] = AntDirEnv
    vector_env_class: ClassVar[str] = "AntDirVectorEnv"

    def __post_init__(self) -> None:
        check_int("AntDirFamily", "horizon", self.horizon)

    def draw_params(self, rng: np.random.Generator) -> tuple[float, ...]:
        return _draw_direction(rng)


@dataclass(frozen=True)
class AntGoalFamily(_MujocoFamily):
    """Ant-v5 to a hidden goal in a disk of radius 3, reward -L1 distance + survive - costs, horizon 200 (ProMP).

    Task params: (goal_x, goal_y), drawn as ProMP's AntRandGoal: angle ~ U[0, 2pi),
    r = radius * sqrt(U[0,1)). The goal is not observed: observations exclude the x/y position
    (`exclude_current_positions_from_observation=True`, Ant-v5's default), so the task is learned
    from the reward, as in ProMP. The survive bonus, control cost and contact cost are Ant-v5's
    defaults read from `info` (ProMP used a control cost weight of 0.1 here, Ant-v5 uses 0.5);
    the episode terminates when the ant is unhealthy, as Ant-v5 does.
    """

    horizon: int = 200
    radius: float = 3.0

    name: ClassVar[str] = "ant-goal"
    env_id: ClassVar[str] = ANT_ID
    wrapper: ClassVar[type[MujocoTaskWrapper]] = AntGoalEnv
    vector_env_class: ClassVar[str] = "AntGoalVectorEnv"

    def __post_init__(self) -> None:
        check_int("AntGoalFamily", "horizon", self.horizon)
        check_float("AntGoalFamily", "radius", self.radius)
        if self.radius <= 0:
            raise ValueError(f"AntGoalFamily: radius must be > 0, got {self.radius!r}")
        if self.radius > ANT_MAX_GOAL_RADIUS:
            raise ValueError(
                f"AntGoalFamily: radius must be <= {ANT_MAX_GOAL_RADIUS:g} m (what the ant walks in a "
                f"1000-step Ant-v5 episode), got {self.radius!r}"
            )

    def draw_params(self, rng: np.random.Generator) -> tuple[float, ...]:
        angle = rng.uniform(0.0, 2.0 * np.pi)
        r = self.radius * np.sqrt(rng.uniform(0.0, 1.0))
        return (float(r * np.cos(angle)), float(r * np.sin(angle)))

    def env_kwargs(self) -> dict[str, Any]:
        return {"exclude_current_positions_from_observation": True}
