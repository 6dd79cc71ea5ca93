"""The MuJoCo task families: rewards recomputed from the v5 envs' info, tasks, splits, vector env.

Real MuJoCo envs with short episodes, to keep the file fast.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from metaray.tasks import FAMILIES, Task, TaskFamily, TaskFamilyError, make_family
from metaray.tasks.generic import GymTaskVectorEnv
from metaray.tasks.mujoco import (
    AntDirFamily,
    AntGoalFamily,
    HalfCheetahDirFamily,
    HalfCheetahVelFamily,
)

NAMES = ["halfcheetah-vel", "halfcheetah-dir", "ant-dir", "ant-goal"]
CLASSES = {
    "halfcheetah-vel": HalfCheetahVelFamily,
    "halfcheetah-dir": HalfCheetahDirFamily,
    "ant-dir": AntDirFamily,
    "ant-goal": AntGoalFamily,
}
SHAPES = {  # (observation, action)
    "halfcheetah-vel": ((17,), (6,)),
    "halfcheetah-dir": ((17,), (6,)),
    "ant-dir": ((105,), (8,)),
    "ant-goal": ((105,), (8,)),
}
# Two tasks per family with clearly different parameters.
TASK_PARAMS = {
    "halfcheetah-vel": [(0.5,), (1.5,)],
    "halfcheetah-dir": [(1.0,), (-1.0,)],
    "ant-dir": [(1.0,), (-1.0,)],
    "ant-goal": [(2.0, 1.0), (-1.0, -2.5)],
}


INFO_TERMS = ["x_velocity", "x_position", "reward_ctrl"]
TERMS = {
    "halfcheetah-vel": INFO_TERMS,
    "halfcheetah-dir": INFO_TERMS,
    "ant-dir": [*INFO_TERMS, "y_position", "reward_survive", "reward_contact"],
    "ant-goal": [*INFO_TERMS, "y_position", "reward_survive", "reward_contact"],
}


def two_tasks(name: str) -> list[Task]:
    return [Task(name, "train", i, params) for i, params in enumerate(TASK_PARAMS[name])]


def task_term(name: str, params: tuple[float, ...], info: dict) -> float:
    """The task-specific reward term, from the env's info."""
    if name == "halfcheetah-vel":
        return -abs(info["x_velocity"] - params[0])
    if name in ("halfcheetah-dir", "ant-dir"):
        return params[0] * info["x_velocity"]
    gx, gy = params
    return -(abs(info["x_position"] - gx) + abs(info["y_position"] - gy))


def expected_reward(name: str, params: tuple[float, ...], info: dict, action: np.ndarray) -> float:
    """The documented formula, with the control cost recomputed from the action."""
    a = np.asarray(action, dtype=np.float64)
    if name.startswith("halfcheetah"):
        return task_term(name, params, info) - 0.05 * float(np.sum(a * a))
    ctrl = 0.5 * float(np.sum(a * a))  # Ant-v5's default control cost weight
    return task_term(name, params, info) + info["reward_survive"] - ctrl + info["reward_contact"]


@pytest.fixture(params=NAMES)
def name(request) -> str:
    return request.param


def test_registered_with_one_line_docs(name):
    cls = FAMILIES[name]
    assert cls is CLASSES[name] and cls.name == name
    family = make_family(name, {"horizon": 7})
    assert isinstance(family, TaskFamily) and family.max_episode_steps == 7
    doc = cls.__doc__.strip().splitlines()[0]
    assert ("HalfCheetah-v5" if name.startswith("halfcheetah") else "Ant-v5") in doc


def test_spaces_and_observation_dtype(name):
    family = make_family(name, {"horizon": 5})
    env = family.make_env()
    obs_shape, act_shape = SHAPES[name]
    assert isinstance(env.observation_space, gym.spaces.Box)
    assert env.observation_space.shape == obs_shape
    assert env.observation_space.dtype == np.float64
    assert env.action_space.shape == act_shape
    obs, _ = env.reset(seed=0)
    assert obs.dtype == env.observation_space.dtype and obs in env.observation_space
    obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
    assert obs.dtype == env.observation_space.dtype and obs.shape == obs_shape
    assert isinstance(reward, float)
    assert type(terminated) is bool and type(truncated) is bool
    env.close()


def test_reward_matches_formula_from_info(name):
    family = make_family(name, {"horizon": 50})
    task = family.sample(1, np.random.default_rng(0))[0]
    env = family.make_env(task)
    env.reset(seed=1)
    rng = np.random.default_rng(2)
    for _ in range(8):
        action = rng.uniform(-1, 1, size=env.action_space.shape).astype(np.float32)
        _, reward, _, _, info = env.step(action)
        assert reward == pytest.approx(expected_reward(name, task.params, info, action), rel=1e-5)
        assert info["reward_task"] == pytest.approx(task_term(name, task.params, info))
        # the wrapped env's own reward is kept
        costs = info["reward_ctrl"] + info.get("reward_contact", 0.0)
        survive = info.get("reward_survive", 0.0)
        assert info["env_reward"] == pytest.approx(info["reward_forward"] + survive + costs)
    env.close()


def test_set_task_takes_effect_at_next_reset(name):
    family = make_family(name, {"horizon": 50})
    first, second = two_tasks(name)
    # an extra wrapper outside: set_task is still reachable
    env = gym.wrappers.RecordEpisodeStatistics(family.make_env(first))
    set_task = env.get_wrapper_attr("set_task")
    env.reset(seed=0)
    action = np.zeros(env.action_space.shape, dtype=np.float32)
    set_task(second)
    for _ in range(2):
        _, _, _, _, info = env.step(action)
        assert info["reward_task"] == pytest.approx(task_term(name, first.params, info))
    assert env.get_wrapper_attr("task") == first
    env.reset()
    assert env.get_wrapper_attr("task") == second
    _, reward, _, _, info = env.step(action)
    assert info["reward_task"] == pytest.approx(task_term(name, second.params, info))
    assert reward == pytest.approx(expected_reward(name, second.params, info, action), rel=1e-5)
    with pytest.raises(ValueError, match="family"):
        set_task(Task("point-nav", "train", 0, (0.0, 0.0)))
    env.close()


def test_make_env_without_task_runs_train_task_zero(name):
    family = make_family(name)
    env = family.make_env()
    assert env.get_wrapper_attr("task") == family.task("train", 0)
    env.close()


def test_splits_disjoint_and_reproducible(name):
    family = make_family(name)
    train = family.sample(40, np.random.default_rng(3))
    assert train == family.sample(40, np.random.default_rng(3))
    test = family.sample(40, np.random.default_rng(3), split="test")
    assert test == family.sample(40, np.random.default_rng(3), split="test")
    assert {t.split for t in train} == {"train"} and {t.split for t in test} == {"test"}
    assert not set(train) & set(test)
    assert len({t.task_id for t in train}) == 40
    # the same ids give other parameters in the other split
    assert [t.task_id for t in train] == [t.task_id for t in test]
    assert [t.params for t in train] != [t.params for t in test]
    params = np.array([t.params for t in train + test])
    if name == "halfcheetah-vel":
        assert params.min() >= 0.0 and params.max() <= 2.0
        assert not {t.params for t in train} & {t.params for t in test}
    elif name == "ant-goal":
        assert np.all(np.linalg.norm(params, axis=1) <= 3.0)
        assert not {t.params for t in train} & {t.params for t in test}
    else:
        assert set(params[:, 0].tolist()) == {-1.0, 1.0}
        assert 20 <= int((params[:, 0] > 0).sum()) <= 60  # p = 0.5 over 80 tasks
    with pytest.raises(ValueError, match="split"):
        family.sample(2, np.random.default_rng(0), split="val")


def test_kwargs_shape_the_tasks():
    vel = HalfCheetahVelFamily(low=3.0, high=4.0).sample(30, np.random.default_rng(0))
    assert all(3.0 <= t.params[0] <= 4.0 for t in vel)
    goals = np.array(
        [t.params for t in AntGoalFamily(radius=0.5).sample(200, np.random.default_rng(0))]
    )
    radii = np.linalg.norm(goals, axis=1)
    assert radii.max() <= 0.5
    assert 0.2 < np.mean(radii <= 0.5 / np.sqrt(2)) < 0.8  # uniform in the disk: half the area


def test_truncation_at_horizon(name):
    family = make_family(name, {"horizon": 5})
    env = family.make_env()
    env.reset(seed=0)
    action = np.zeros(env.action_space.shape, dtype=np.float32)
    for step in range(1, 6):
        _, _, terminated, truncated, _ = env.step(action)
        assert not terminated
        assert truncated == (step == 5)
    env.close()


@pytest.mark.parametrize("horizon", [1, 5])
@pytest.mark.parametrize("ant", ["ant-dir", "ant-goal"])
def test_ant_terminates_when_unhealthy(ant, horizon):
    family = make_family(ant, {"horizon": horizon})
    task = family.sample(1, np.random.default_rng(0))[0]
    env = family.make_env(task)
    env.reset(seed=0)
    inner = env.unwrapped
    qpos = inner.data.qpos.copy()
    qpos[2] = 2.0  # torso far above Ant-v5's healthy range (0.2, 1.0)
    inner.set_state(qpos, inner.data.qvel.copy())
    action = np.zeros(env.action_space.shape, dtype=np.float32)
    _, reward, terminated, truncated, info = env.step(action)
    assert terminated and not truncated  # also on the last allowed step
    assert info["reward_survive"] == 0.0
    assert reward == pytest.approx(expected_reward(ant, task.params, info, action), rel=1e-5)
    env.close()


def test_reference_vector_env_per_slot_tasks_and_reset_mask(name):
    """The gymnasium envs side by side (the reference the batched path is checked against,
    tests/tasks/test_mujoco_batched.py): per-slot tasks, reset masks, SAME_STEP autoreset."""
    family = make_family(name, {"horizon": 3})
    tasks = two_tasks(name)
    env = GymTaskVectorEnv(family, tasks, envs_per_task=2, seed=0)
    assert env.num_envs == 4
    assert env.tasks == [tasks[0], tasks[0], tasks[1], tasks[1]]
    assert env.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    start, _ = env.reset()
    assert start.shape == (4, *SHAPES[name][0]) and start.dtype == np.float64
    rng = np.random.default_rng(0)

    def step_and_check(slot_params):
        actions = rng.uniform(-1, 1, size=env.action_space.shape).astype(np.float32)
        obs, rewards, terminated, truncated, infos = env.step(actions)
        for slot, params in enumerate(slot_params):
            # SAME_STEP: a finished slot's step info is in final_info (its reset info on top)
            done = terminated[slot] or truncated[slot]
            source = infos["final_info"] if done else infos
            info = {key: source[key][slot] for key in TERMS[name]}
            assert rewards[slot] == pytest.approx(
                expected_reward(name, params, info, actions[slot]), rel=1e-5
            )
        return obs, terminated, truncated, infos

    params = [t.params for t in env.tasks]
    step_and_check(params)
    # slot 0 gets the other task: not before its next reset
    env.set_task(0, tasks[1])
    assert env.tasks[0] == tasks[1]
    obs, *_ = step_and_check(params)
    mask = np.array([True, False, False, False])
    after, _ = env.reset(options={"reset_mask": mask})
    np.testing.assert_array_equal(after[~mask], obs[~mask])
    params[0] = tasks[1].params
    # slots 1-3 reach the horizon (3) on this step, slot 0 two steps later
    obs, terminated, truncated, infos = step_and_check(params)
    assert not terminated.any()
    np.testing.assert_array_equal(truncated, ~mask)
    final = infos["final_obs"]
    assert isinstance(final, np.ndarray) and final.shape == obs.shape and final.dtype == obs.dtype
    np.testing.assert_array_equal(infos["_final_obs"], ~mask)
    assert not np.array_equal(final[1:], obs[1:])  # autoreset already started new episodes
    for _ in range(2):
        _, terminated, truncated, _ = step_and_check(params)
    np.testing.assert_array_equal(truncated, mask)
    env.close()


def test_families_pickle(name):
    family = make_family(name, {"horizon": 9})
    clone = pickle.loads(pickle.dumps(family))
    assert clone == family and clone.name == name and clone.max_episode_steps == 9
    rng = np.random.default_rng(0)
    assert clone.sample(3, rng) == family.sample(3, np.random.default_rng(0))


@pytest.mark.parametrize(
    ("cls", "kwargs", "kwarg"),
    [
        (HalfCheetahVelFamily, {"horizon": 0}, "horizon"),
        (HalfCheetahVelFamily, {"horizon": 2.5}, "horizon"),
        (HalfCheetahVelFamily, {"horizon": True}, "horizon"),
        (HalfCheetahVelFamily, {"low": "slow"}, "low"),
        (HalfCheetahVelFamily, {"high": float("nan")}, "high"),
        (HalfCheetahVelFamily, {"low": 2.0, "high": 1.0}, "low"),
        (HalfCheetahDirFamily, {"horizon": -1}, "horizon"),
        (AntDirFamily, {"horizon": None}, "horizon"),
        (AntGoalFamily, {"horizon": 0}, "horizon"),
        (AntGoalFamily, {"radius": 0.0}, "radius"),
        (AntGoalFamily, {"radius": float("inf")}, "radius"),
        # outside the family's physical range: a target no HalfCheetah runs, a goal out of reach
        (HalfCheetahVelFamily, {"low": 0.0, "high": 40.0}, "target velocities"),
        (HalfCheetahVelFamily, {"low": -20.0, "high": 0.0}, "target velocities"),
        (AntGoalFamily, {"radius": 61.0}, "radius must be <= 60 m"),
    ],
)
def test_bad_kwargs_raise_one_line_value_errors(cls, kwargs, kwarg):
    with pytest.raises(ValueError, match=kwarg) as info:
        cls(**kwargs)
    assert "\n" not in str(info.value)
    with pytest.raises(TaskFamilyError, match=kwarg):
        make_family(cls.name, kwargs)


def test_the_edges_of_the_physical_ranges_are_accepted():
    tasks = HalfCheetahVelFamily(low=-15.0, high=15.0).sample(50, np.random.default_rng(0))
    assert all(-15.0 <= t.params[0] <= 15.0 for t in tasks)
    goals = np.array([t.params for t in AntGoalFamily(radius=60.0).sample(50, np.random.default_rng(0))])
    assert np.linalg.norm(goals, axis=1).max() <= 60.0
    assert AntGoalFamily(horizon=5).radius == 3.0  # a short horizon keeps the default goals


def test_unknown_kwarg_is_named():
    with pytest.raises(TaskFamilyError, match="radius"):
        make_family("ant-dir", {"radius": 1.0})


@pytest.mark.parametrize("cls", [HalfCheetahDirFamily, AntDirFamily])
def test_direction_train_set_alternates_forward_and_backward(cls):
    """PEARL's fixed train set and the fixed-set scheduler take this list's head: every even-length
    head is half forward, half backward, of distinct train ids (a random draw of 10 was 9:1)."""
    tasks = cls().train_tasks()
    assert len(tasks) == 50 and len({t.task_id for t in tasks}) == 50
    assert all(t.split == "train" and t.family == cls.name for t in tasks)
    assert [t.params[0] for t in tasks] == [1.0, -1.0] * 25
    assert all(cls().task("train", t.task_id) == t for t in tasks)  # the same tasks `task()` gives


def test_pearl_ant_dir_trains_on_both_directions_equally():
    from metaray.cluster.config import load_config
    from metaray.learner.pearl.sampler import train_task_set

    config = load_config(Path(__file__).resolve().parents[2] / "configs" / "pearl-ant-dir.yaml")
    tasks = train_task_set(make_family(config.task.family, config.task.kwargs), config.algo_config())
    assert sorted(t.params[0] for t in tasks) == [-1.0] * 5 + [1.0] * 5
