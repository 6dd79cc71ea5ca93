"""Finding a task family by its config name: a built-in name or "package.module:ClassName"."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from metaray.plugins import PluginError, check_settings, first_line, import_class
from metaray.tasks.bandit import BanditFamily
from metaray.tasks.base import Task, TaskFamily, TaskVectorEnv
from metaray.tasks.faulty import FaultyFamily
from metaray.tasks.generic import GymTaskVectorEnv
from metaray.tasks.metaworld import (
    MetaWorldML1Family,
    MetaWorldML10Family,
    MetaWorldML45Family,
)
from metaray.tasks.mujoco import (
    AntDirFamily,
    AntGoalFamily,
    HalfCheetahDirFamily,
    HalfCheetahVelFamily,
)
from metaray.tasks.point_nav import PointNavFamily
from metaray.tasks.tabular_mdp import TabularMDPFamily

FAMILIES: dict[str, type] = {
    BanditFamily.name: BanditFamily,
    PointNavFamily.name: PointNavFamily,
    TabularMDPFamily.name: TabularMDPFamily,
    HalfCheetahVelFamily.name: HalfCheetahVelFamily,
    HalfCheetahDirFamily.name: HalfCheetahDirFamily,
    AntDirFamily.name: AntDirFamily,
    AntGoalFamily.name: AntGoalFamily,
    MetaWorldML1Family.name: MetaWorldML1Family,
    MetaWorldML10Family.name: MetaWorldML10Family,
    MetaWorldML45Family.name: MetaWorldML45Family,
    FaultyFamily.name: FaultyFamily,
}

_REQUIRED = ("name", "max_episode_steps", "sample", "make_env")


class TaskFamilyError(ValueError):
    """A task family that cannot be found, imported or built; the message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def _resolve(name: str) -> type:
    if name in FAMILIES:
        return FAMILIES[name]
    if ":" not in name:
        known = ", ".join(sorted(FAMILIES))
        raise TaskFamilyError(
            f"unknown task family {name!r} (known: {known}, or 'package.module:ClassName')"
        )
    try:
        return import_class(name, "task family", f"task family {name!r} must look like 'package.module:ClassName'")
    except PluginError as error:
        raise TaskFamilyError(str(error)) from None


def make_family(name: str, kwargs: Mapping[str, Any] | None = None) -> TaskFamily:
    """Build the family a config names, with its kwargs; every failure is a TaskFamilyError."""
    if not isinstance(name, str) or not name:
        raise TaskFamilyError(f"task.family must be a non-empty string, got {name!r}")
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise TaskFamilyError(f"task.kwargs must be a mapping of names to values, got {kwargs!r}")
    cls = _resolve(name)
    try:
        check_settings(cls, kwargs, "task.kwargs")
    except PluginError as error:
        raise TaskFamilyError(str(error)) from None
    try:
        family = cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise TaskFamilyError(f"task.kwargs: {first_line(error)}") from None
    missing = [attr for attr in _REQUIRED if not hasattr(family, attr)]
    if missing:
        raise TaskFamilyError(f"{cls.__name__} is not a task family: it lacks {', '.join(missing)}")
    return family


def make_vector_env(
    family: TaskFamily, tasks: Sequence[Task], envs_per_task: int = 1, seed: int | None = None,
    info_keys: Collection[str] | None = None,
) -> TaskVectorEnv:
    """The family's natively batched env when it has one, else its `make_env` envs side by side.

    `info_keys` limits the per-slot info keys the `make_env` path batches (None: all of them);
    natively batched envs report their own small infos whatever it says."""
    fast = getattr(family, "make_vector_env", None)
    if fast is None:
        return GymTaskVectorEnv(family, tasks, envs_per_task=envs_per_task, seed=seed, info_keys=info_keys)
    env = fast(tasks, envs_per_task=envs_per_task, seed=seed)
    if not isinstance(env, TaskVectorEnv):
        raise TaskFamilyError(
            f"{type(family).__name__}.make_vector_env returned a {type(env).__name__}, "
            "not a metaray.tasks.TaskVectorEnv"
        )
    return env


TASK_FIELDS = ("family", "split", "task_id", "params")


def check_family(family: TaskFamily) -> None:
    """Exercise the whole task-family contract once, as the runtime will: a task of each split,
    one env of it built, reset and stepped. TaskFamilyError names the first gap in one line
    (instead of a traceback deep inside a worker)."""
    cls = type(family).__name__
    steps = getattr(family, "max_episode_steps", None)
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 1:
        raise TaskFamilyError(f"{cls}.max_episode_steps must be a positive int, got {steps!r}")
    tasks = [_one_task(family, split) for split in ("train", "test")]
    try:
        env = make_vector_env(family, tasks[:1], seed=0)
        env.reset(seed=0)
        env.step(np.stack([env.single_action_space.sample() for _ in range(env.num_envs)]))
        env.close()
    except TaskFamilyError:
        raise
    except Exception as error:  # a user's env may fail in any way
        raise TaskFamilyError(f"{cls}: building, resetting and stepping an env of task {tasks[0].task_id} failed: "
                              f"{type(error).__name__}: {first_line(error)}") from None


def _one_task(family: TaskFamily, split: str) -> Task:
    cls = type(family).__name__
    for n in (1, 3):  # the runtime asks for one task and for many (a meta-batch, held-out tasks)
        try:
            tasks = list(family.sample(n, np.random.default_rng(0), split))
        except Exception as error:
            raise TaskFamilyError(f"{cls}.sample({n}, rng, {split!r}) failed: {type(error).__name__}: {first_line(error)}") from None
        if len(tasks) != n:
            raise TaskFamilyError(f"{cls}.sample({n}, rng, {split!r}) returned {len(tasks)} tasks, not {n}")
    for task in tasks:
        _check_task(cls, task, split)
    return tasks[0]


def _check_task(cls: str, task: Any, split: str) -> None:
    missing = [field for field in TASK_FIELDS if not hasattr(task, field)]
    if missing:
        raise TaskFamilyError(f"{cls}.sample returns {type(task).__name__} tasks without {', '.join(missing)}: return "
                              "metaray.tasks.Task(family, split, task_id, params) values")
    if not isinstance(task.task_id, (int, np.integer)) or isinstance(task.task_id, bool):
        raise TaskFamilyError(f"{cls}.sample: task_id must be an int, got {task.task_id!r}")
    if task.split != split:
        raise TaskFamilyError(f"{cls}.sample(n, rng, {split!r}) returned a task of split {task.split!r}")
    try:
        hash(task)
    except TypeError:
        raise TaskFamilyError(f"{cls}.sample returns unhashable tasks ({type(task).__name__}); tasks are small frozen values") from None


def list_families() -> list[tuple[str, str]]:
    """(name, one-line description) of each built-in family, for `metaray tasks`; a family that
    needs a pip extra not installed here says so."""
    rows = []
    for name, cls in sorted(FAMILIES.items()):
        doc = inspect.getdoc(cls) or ""
        line = doc.splitlines()[0] if doc else ""
        extra = getattr(cls, "extra", None)
        if extra and importlib.util.find_spec(extra) is None:
            line += f" [needs pip install 'metaray[{extra}]']"
        rows.append((name, line))
    return rows
