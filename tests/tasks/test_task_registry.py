"""Finding families by name, user families as "module:Class", and the one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from metaray.tasks import (
    FAMILIES,
    TaskFamily,
    TaskFamilyError,
    list_families,
    make_family,
    make_vector_env,
)
from metaray.tasks.bandit import BanditFamily
from metaray.tasks.faulty import FaultyFamily
from metaray.tasks.generic import GymTaskVectorEnv
from metaray.tasks.metaworld import MetaWorldML1Family, MetaWorldML10Family, MetaWorldML45Family
from metaray.tasks.mujoco import (
    AntDirFamily,
    AntGoalFamily,
    HalfCheetahDirFamily,
    HalfCheetahVelFamily,
)
from metaray.tasks.native import BatchedTaskEnv
from metaray.tasks.point_nav import PointNavFamily
from metaray.tasks.tabular_mdp import TabularMDPFamily

HERE = Path(__file__).parent
USER_FAMILY = "user_family_helper:CoinFamily"


@pytest.fixture
def user_path(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))


def one_line_error(name, kwargs=None) -> str:
    with pytest.raises(TaskFamilyError) as info:
        make_family(name, kwargs)
    message = str(info.value)
    assert "\n" not in message and message
    return message


def test_builtin_names():
    expected = {
        "bandit": BanditFamily,
        "point-nav": PointNavFamily,
        "tabular-mdp": TabularMDPFamily,
        "halfcheetah-vel": HalfCheetahVelFamily,
        "halfcheetah-dir": HalfCheetahDirFamily,
        "ant-dir": AntDirFamily,
        "ant-goal": AntGoalFamily,
        "metaworld-ml1": MetaWorldML1Family,
        "metaworld-ml10": MetaWorldML10Family,
        "metaworld-ml45": MetaWorldML45Family,
        "faulty": FaultyFamily,
    }
    assert expected == FAMILIES
    family = make_family("tabular-mdp", {"num_states": 4, "episode_length": 3})
    assert family == TabularMDPFamily(num_states=4, episode_length=3)
    assert isinstance(family, TaskFamily)
    assert make_family("bandit").name == "bandit"


def test_list_families_gives_one_line_descriptions():
    rows = list_families()
    assert [name for name, _ in rows] == [
        "ant-dir",
        "ant-goal",
        "bandit",
        "faulty",
        "halfcheetah-dir",
        "halfcheetah-vel",
        "metaworld-ml1",
        "metaworld-ml10",
        "metaworld-ml45",
        "point-nav",
        "tabular-mdp",
    ]
    for _, description in rows:
        assert description and "\n" not in description


def test_builtins_use_the_native_fast_path():
    for name in ("bandit", "point-nav", "tabular-mdp"):  # the MuJoCo families use the generic path
        family = make_family(name)
        env = make_vector_env(family, family.sample(2, np.random.default_rng(0)), envs_per_task=3)
        assert isinstance(env, BatchedTaskEnv) and env.num_envs == 6


def test_unknown_name():
    message = one_line_error("foo")
    assert message == (
        "unknown task family 'foo' (known: ant-dir, ant-goal, bandit, faulty, halfcheetah-dir, "
        "halfcheetah-vel, metaworld-ml1, metaworld-ml10, metaworld-ml45, point-nav, tabular-mdp, "
        "or 'package.module:ClassName')"
    )
    assert issubclass(TaskFamilyError, ValueError)


def test_bad_kwargs():
    assert one_line_error("bandit", {"x": 1}) == (
        "task.kwargs: BanditFamily got an unexpected keyword 'x' (allowed: num_arms)"
    )
    assert "num_arms must be an integer >= 2" in one_line_error("bandit", {"num_arms": 1})
    assert "goal_low" in one_line_error("point-nav", {"goal_low": 2.0})
    assert "task.kwargs" in one_line_error("bandit", ["num_arms"])
    assert "task.family" in one_line_error("")


def test_import_failures(user_path, tmp_path, monkeypatch):
    assert "cannot import" in one_line_error("no_such_module_for_metaray:Family")
    assert "has no attribute" in one_line_error("user_family_helper:Missing")
    assert "not a class" in one_line_error("user_family_helper:NOT_A_CLASS")
    assert "not a task family" in one_line_error("user_family_helper:NotAFamily")
    assert "package.module:ClassName" in one_line_error(":CoinFamily")

    (tmp_path / "broken_family_for_metaray.py").write_text(
        "raise RuntimeError('first line\\nsecond line')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    message = one_line_error("broken_family_for_metaray:Family")
    assert message.endswith("RuntimeError: first line")


def test_user_family_through_the_generic_path(user_path):
    family = make_family(USER_FAMILY, {"bias": 1.0})
    assert isinstance(family, TaskFamily) and family.name == "coin"
    assert "bias must be in [0, 1]" in one_line_error(USER_FAMILY, {"bias": 2.0})
    assert "unexpected keyword 'side'" in one_line_error(USER_FAMILY, {"side": 1})

    heads = family.sample(2, np.random.default_rng(0))  # bias 1: every coin shows side 1
    assert all(t.params == (1.0,) for t in heads)
    env = make_vector_env(family, heads, envs_per_task=2, seed=0)
    assert isinstance(env, GymTaskVectorEnv) and env.num_envs == 4
    obs, _ = env.reset()
    assert obs.shape == (4, 1) and obs.dtype == np.float32

    _, rewards, *_ = env.step(np.array([1, 1, 0, 0]))
    np.testing.assert_array_equal(rewards, [1, 1, 0, 0])

    tails = make_family(USER_FAMILY, {"bias": 0.0}).sample(1, np.random.default_rng(1))[0]
    env.set_task(0, tails)
    _, rewards, terminated, truncated, infos = env.step(np.array([1, 1, 1, 1]))
    np.testing.assert_array_equal(rewards, [1, 1, 1, 1])  # the running episode keeps its task
    assert not (terminated | truncated).any() and "final_obs" not in infos

    _, rewards, terminated, truncated, infos = env.step(np.array([1, 1, 1, 1]))
    assert truncated.all()  # the TimeLimit cut every episode after 3 guesses
    np.testing.assert_array_equal(infos["_final_obs"], [True] * 4)
    np.testing.assert_allclose(infos["final_obs"], np.ones((4, 1)))  # t / 3 after 3 steps
    _, rewards, *_ = env.step(np.array([1, 1, 1, 1]))
    np.testing.assert_array_equal(rewards, [0, 1, 1, 1])  # slot 0 now runs the tails task
    assert env.tasks[0] == tails
    env.close()


def test_fast_path_must_return_a_task_vector_env():
    class Odd(BanditFamily):
        def make_vector_env(self, tasks, envs_per_task=1, seed=None):
            return object()

    family = Odd()
    with pytest.raises(TaskFamilyError, match="TaskVectorEnv"):
        make_vector_env(family, family.sample(1, np.random.default_rng(0)))
