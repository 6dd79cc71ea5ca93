"""The MuJoCo families stepped for all slots at once (the fast path of `make_vector_env`).

One `MjData` per slot, each advanced by MuJoCo's own `mj_step` (the C physics, `frame_skip`
substeps per call); observations, rewards, terminations and resets are computed for all slots
with numpy. The result equals gymnasium's v5 env stepped one slot at a time with the same
seeds and actions, to the last bit (tests/tasks/test_mujoco_batched.py): the same MuJoCo calls on
the same state, the same random draws per slot (slot i of a vector env seeded s draws from
`np_random(s + i)`, as gymnasium's SyncVectorEnv seeds its envs).

Why not `mujoco.rollout` over all slots in one call: it starts every call from a cold solver
warm start (it returns no `qacc_warmstart`), and the chaotic contact dynamics turn that 1e-15
difference into a different trajectory within ~50 steps (measured: max |qpos, qvel| difference 8
after 200 steps of HalfCheetah), so it could not be checked against gymnasium's env.

A slot whose physics goes bad (non-finite state or reward, or MuJoCo's own reset of an unstable
simulation, which gymnasium's env does not notice) is reset at once, its step reported truncated
with `info["env_failure"]` (the sampler drops the episode) and counted in `ENV_FAILURES`, as the
gymnasium path does for non-finite steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium.utils import seeding

from metaray.tasks.base import Task
from metaray.tasks.generic import ENV_FAILURES, LAST_ENV_FAILURE
from metaray.tasks.mujoco import MUJOCO_DERIVED as DERIVED  # what a checkpoint keeps as it is
from metaray.tasks.native import BatchedTaskEnv

STATE = mujoco.mjtState.mjSTATE_INTEGRATION
BAD_QPOS, BAD_QVEL, BAD_QACC = (int(w) for w in (mujoco.mjtWarning.mjWARN_BADQPOS, mujoco.mjtWarning.mjWARN_BADQVEL,
                                                   mujoco.mjtWarning.mjWARN_BADQACC))


class MujocoVectorEnv(BatchedTaskEnv):
    """Slots of one gymnasium MuJoCo v5 env (`env_id`, built with `env_kwargs` to read its
    model and settings), stepped together. After each step (or reset) every slot's qpos, qvel
    (and, where the family reads them, its main body's x/y position and contact forces) are
    copied into arrays [N, ...] once; observations and rewards are computed from those.

    Subclasses define `family`, `_task_arrays(task)`, `_observe()` and `_rewards(velocity,
    ctrl_cost)`, and set `body` (the body whose x/y position the velocity is measured on;
    None: qpos[0]) and `contacts` (read `cfrc_ext`, which needs `mj_rnePostConstraint`)."""

    family: ClassVar[str]
    env_id: ClassVar[str]
    body: ClassVar[str | None] = None
    contacts: ClassVar[bool] = False

    def __init__(self, tasks: Sequence[Task], envs_per_task: int = 1, seed: int | None = None, *,
                 horizon: int, num_params: int, env_kwargs: dict[str, Any] | None = None) -> None:
        self._reference = gym.make(self.env_id, **(env_kwargs or {})).unwrapped  # model and settings
        ref = self._reference
        self.model, self.frame_skip, self.dt = ref.model, ref.frame_skip, ref.dt
        super().__init__(tasks, envs_per_task, seed, num_params=num_params, max_episode_steps=horizon,
                         single_observation_space=self._observation_space(ref.observation_space),
                         single_action_space=ref.action_space)
        n, model = self.num_envs, self.model
        self.datas = [mujoco.MjData(model) for _ in range(n)]
        self._warnings = [data.warning.number for data in self.datas]  # live views of MuJoCo's counters
        self._seed_slots(seed)
        self._init_qpos, self._init_qvel = ref.init_qpos.copy(), ref.init_qvel.copy()
        self._noise = float(ref._reset_noise_scale)
        self._ctrl_weight = float(ref._ctrl_cost_weight)
        self._body_id = None if self.body is None else model.body(self.body).id
        self.qpos, self.qvel = np.zeros((n, model.nq)), np.zeros((n, model.nv))
        self.xy = np.zeros((n, 2))
        self.cfrc_ext = np.zeros((n, model.nbody, 6))
        self._state = np.zeros((n, mujoco.mj_stateSize(model, STATE)))
        self._derived = {name: np.zeros((n, *getattr(self.datas[0], name).shape)) for name in DERIVED}
        self._failed = np.zeros(n, dtype=bool)
        self._ctrl_views = [data.ctrl for data in self.datas]  # live views into each MjData
        self._qpos_views = [data.qpos for data in self.datas]
        self._qvel_views = [data.qvel for data in self.datas]
        self._xpos_views = [data.xpos for data in self.datas]
        self._cfrc_views = [data.cfrc_ext for data in self.datas]
        self._xpos = np.zeros((n, model.nbody, 3))

    # ------------------------------------------------------------------ per-family parts
    def _observation_space(self, space: gym.spaces.Box) -> gym.spaces.Box:
        return space

    def _rewards(self, velocity: np.ndarray, ctrl_cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rewards [N], terminated [N]) after the step, from the velocity [N, 1 or 2] and the
        control cost [N] (in the actions' dtype, as gymnasium computes it)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ BatchedTaskEnv
    def _seed_slots(self, seed: int | None) -> None:
        self._rngs = [seeding.np_random(None if seed is None else seed + i)[0] for i in range(self.num_envs)]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        if seed is not None:
            self._seed_slots(seed)
        return super().reset(seed=seed, options=options)

    def _read_all(self) -> None:
        """Copy every slot's state into the arrays observations and rewards are computed from
        (from views of MjData made once)."""
        np.stack(self._qpos_views, out=self.qpos)
        np.stack(self._qvel_views, out=self.qvel)
        if self._body_id is not None:
            np.stack(self._xpos_views, out=self._xpos)
            self.xy[:] = self._xpos[:, self._body_id, :2]
        if self.contacts:
            np.stack(self._cfrc_views, out=self.cfrc_ext)

    def _reset_state(self, mask: np.ndarray) -> None:
        model, nq, nv = self.model, self.model.nq, self.model.nv
        for i in np.flatnonzero(mask):  # gymnasium's MujocoEnv.reset + reset_model, with slot i's draws
            data, rng = self.datas[i], self._rngs[i]
            mujoco.mj_resetData(model, data)
            data.qpos[:] = self._init_qpos + rng.uniform(low=-self._noise, high=self._noise, size=nq)
            data.qvel[:] = self._init_qvel + self._noise * rng.standard_normal(nv)
            mujoco.mj_forward(model, data)
        self._read_all()

    def _transition(self, actions: Any) -> tuple[np.ndarray, np.ndarray]:
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs, self.model.nu):
            raise ValueError(f"actions must have shape ({self.num_envs}, {self.model.nu}), got {actions.shape}")
        model, skip, step = self.model, self.frame_skip, mujoco.mj_step
        before = self.qpos[:, :1].copy() if self._body_id is None else self.xy.copy()
        ctrl = actions.astype(np.float64)  # what MjData.ctrl holds; the control cost stays in the actions' dtype
        # the per-slot loop is the only Python per slot and step: views made once, nothing else
        for data, target, source in zip(self.datas, self._ctrl_views, ctrl, strict=True):
            target[:] = source
            step(model, data, skip)
        if self.contacts:  # what gymnasium's do_simulation adds: cfrc_ext (the state is untouched)
            for data in self.datas:
                mujoco.mj_rnePostConstraint(model, data)
        self._read_all()
        # MuJoCo resets a slot whose state went bad (NaN, huge) on its own and steps on:
        # finite, but not this episode any more. Its counters say so (our resets zero them).
        restarted = np.array([w[BAD_QPOS] or w[BAD_QVEL] or w[BAD_QACC] for w in self._warnings], dtype=bool)
        after = self.qpos[:, :1] if self._body_id is None else self.xy
        velocity = (after - before) / self.dt
        ctrl_cost = self._ctrl_weight * np.sum(np.square(actions), axis=1)
        rewards, terminated = self._rewards(velocity, ctrl_cost)
        self._failed = restarted | ~(np.isfinite(self.qpos).all(1) & np.isfinite(self.qvel).all(1) & np.isfinite(rewards))
        if self._failed.any():  # reset below by the base class: the episode is cut, not ended
            rewards = np.where(self._failed, 0.0, rewards)
            terminated = terminated & ~self._failed
            self._elapsed[self._failed] = self.max_episode_steps - 1
            ENV_FAILURES["non-finite"] += int(self._failed.sum())
            LAST_ENV_FAILURE[0] = "non-finite"
        return rewards, terminated

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        obs, rewards, terminated, truncated, infos = super().step(actions)
        if self._failed.any():
            infos["env_failure"] = self._failed.copy()
            final = infos["final_obs"]
            final[self._failed] = np.nan_to_num(final[self._failed], nan=0.0, posinf=0.0, neginf=0.0)
            self._failed[:] = False
        return obs, rewards, terminated, truncated, infos

    # ------------------------------------------------------------------ state for exact resume
    def _episode_arrays(self) -> dict[str, np.ndarray]:
        return {"physics": self._state, **{f"data/{name}": array for name, array in self._derived.items()}}

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        for i, data in enumerate(self.datas):
            mujoco.mj_getState(self.model, data, self._state[i], STATE)
            for name, array in self._derived.items():
                array[i] = getattr(data, name)
        meta, arrays = super().get_state()
        meta["slot_rngs"] = [rng.bit_generator.state for rng in self._rngs]
        return meta, arrays

    def set_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        super().set_state(meta, arrays)
        for rng, state in zip(self._rngs, meta["slot_rngs"], strict=True):
            rng.bit_generator.state = state
        for i, data in enumerate(self.datas):
            mujoco.mj_setState(self.model, data, self._state[i], STATE)
            for name, array in self._derived.items():
                getattr(data, name)[...] = array[i]
        self._read_all()

    def close_extras(self, **kwargs: Any) -> None:
        reference = getattr(self, "_reference", None)
        if reference is not None:
            reference.close()


class HalfCheetahVectorEnv(MujocoVectorEnv):
    """HalfCheetah-v5 slots; the reward's task term from the x velocity (subclasses)."""

    env_id = "HalfCheetah-v5"

    def _observe(self) -> np.ndarray:
        return np.concatenate((self.qpos[:, 1:], self.qvel), axis=1)

    def _task_term(self, x_velocity: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _rewards(self, velocity: np.ndarray, ctrl_cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        reward_ctrl = (-ctrl_cost).astype(np.float64)
        return self._task_term(velocity[:, 0]) + reward_ctrl, np.zeros(self.num_envs, dtype=bool)


class HalfCheetahVelVectorEnv(HalfCheetahVectorEnv):
    """HalfCheetahVelEnv's tasks: -|v - v*| - ctrl; `observe_target` appends v* to the observation."""

    family = "halfcheetah-vel"

    def __init__(self, tasks: Sequence[Task], envs_per_task: int = 1, seed: int | None = None, *,
                 horizon: int, env_kwargs: dict[str, Any] | None = None, observe_target: bool = False) -> None:
        self.observe_target = observe_target
        super().__init__(tasks, envs_per_task, seed, horizon=horizon, num_params=1, env_kwargs=env_kwargs)

    def _observation_space(self, space: gym.spaces.Box) -> gym.spaces.Box:
        if not self.observe_target:
            return space
        return gym.spaces.Box(np.append(space.low, -np.inf), np.append(space.high, np.inf), dtype=space.dtype)

    def _task_arrays(self, task: Task) -> dict[str, np.ndarray]:
        return {"target": np.array([float(task.params[0])])}

    def _observe(self) -> np.ndarray:
        obs = super()._observe()
        return np.concatenate([obs, self.params["target"]], axis=1) if self.observe_target else obs

    def _task_term(self, x_velocity: np.ndarray) -> np.ndarray:
        return -np.abs(x_velocity - self.params["target"][:, 0])


class HalfCheetahDirVectorEnv(HalfCheetahVectorEnv):
    """HalfCheetahDirEnv's tasks: d * v - ctrl."""

    family = "halfcheetah-dir"

    def __init__(self, tasks: Sequence[Task], envs_per_task: int = 1, seed: int | None = None, *,
                 horizon: int, env_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__(tasks, envs_per_task, seed, horizon=horizon, num_params=1, env_kwargs=env_kwargs)

    def _task_arrays(self, task: Task) -> dict[str, np.ndarray]:
        return {"direction": np.array([float(task.params[0])])}

    def _task_term(self, x_velocity: np.ndarray) -> np.ndarray:
        return self.params["direction"][:, 0] * x_velocity


class AntVectorEnv(MujocoVectorEnv):
    """Ant-v5 slots: survive bonus, control and contact costs and the health check as Ant-v5;
    the task term from the torso's x/y velocity or its position (subclasses)."""

    env_id = "Ant-v5"
    body = "torso"  # Ant-v5's main body
    contacts = True

    def __init__(self, tasks: Sequence[Task], envs_per_task: int = 1, seed: int | None = None, *,
                 horizon: int, num_params: int, env_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__(tasks, envs_per_task, seed, horizon=horizon, num_params=num_params, env_kwargs=env_kwargs)
        ref = self._reference
        if ref._main_body not in (self.body, self.model.body(self.body).id):
            raise ValueError(f"Ant-v5's main body is {ref._main_body!r}, expected {self.body!r}")
        self._contact_weight = float(ref._contact_cost_weight)
        self._contact_range = ref._contact_force_range
        self._healthy_z = ref._healthy_z_range
        self._healthy_reward = float(ref._healthy_reward)
        self._terminate_unhealthy = bool(ref._terminate_when_unhealthy)
        self._skip_xy = bool(ref._exclude_current_positions_from_observation)
        self._with_contacts = bool(ref._include_cfrc_ext_in_observation)

    def _observe(self) -> np.ndarray:
        position = self.qpos[:, 2:] if self._skip_xy else self.qpos
        if not self._with_contacts:
            return np.concatenate((position, self.qvel), axis=1)
        contact = np.clip(self.cfrc_ext, *self._contact_range)[:, 1:].reshape(self.num_envs, -1)
        return np.concatenate((position, self.qvel, contact), axis=1)

    def _task_term(self, velocity: np.ndarray, qpos: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _rewards(self, velocity: np.ndarray, ctrl_cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        qpos, qvel = self.qpos, self.qvel
        low, high = self._healthy_z
        healthy = np.isfinite(qpos).all(1) & np.isfinite(qvel).all(1) & (low <= qpos[:, 2]) & (qpos[:, 2] <= high)
        contact_cost = self._contact_weight * np.sum(np.square(np.clip(self.cfrc_ext, *self._contact_range)), axis=(1, 2))
        costs = (healthy * self._healthy_reward) - ctrl_cost.astype(np.float64) - contact_cost
        terminated = ~healthy if self._terminate_unhealthy else np.zeros(self.num_envs, dtype=bool)
        return self._task_term(velocity, qpos) + costs, terminated


class AntDirVectorEnv(AntVectorEnv):
    """AntDirEnv's tasks: d * v_x + survive - ctrl - contact."""

    family = "ant-dir"

    def __init__(self, tasks: Sequence[Task], envs_per_task: int = 1, seed: int | None = None, *,
                 horizon: int, env_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__(tasks, envs_per_task, seed, horizon=horizon, num_params=1, env_kwargs=env_kwargs)

    def _task_arrays(self, task: Task) -> dict[str, np.ndarray]:
        return {"direction": np.array([float(task.params[0])])}

    def _task_term(self, velocity: np.ndarray, qpos: np.ndarray) -> np.ndarray:
        return self.params["direction"][:, 0] * velocity[:, 0]


class AntGoalVectorEnv(AntVectorEnv):
    """AntGoalEnv's tasks: -||xy - goal||_1 + survive - ctrl - contact."""

    family = "ant-goal"

    def __init__(self, tasks: Sequence[Task], envs_per_task: int = 1, seed: int | None = None, *,
                 horizon: int, env_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__(tasks, envs_per_task, seed, horizon=horizon, num_params=2, env_kwargs=env_kwargs)

    def _task_arrays(self, task: Task) -> dict[str, np.ndarray]:
        return {"goal": np.array([float(task.params[0]), float(task.params[1])])}

    def _task_term(self, velocity: np.ndarray, qpos: np.ndarray) -> np.ndarray:
        return -np.abs(qpos[:, :2] - self.params["goal"]).sum(axis=1)
