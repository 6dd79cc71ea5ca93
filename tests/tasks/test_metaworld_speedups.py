"""Meta-World with `speedups` returns the same bits as Meta-World without, on every v3 env."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from metaworld.policies import ENV_POLICY_MAP
from metaworld.sawyer_xyz_env import SawyerXYZEnv
from scipy.spatial.transform import Rotation

from metaray.tasks import TaskFamilyError, make_family
from metaray.tasks import metaworld_speedups as speedups
from metaray.tasks.metaworld import benchmark

STEPS = 250


@pytest.fixture(autouse=True)
def _originals_after():
    yield
    speedups.uninstall()


def expert_episode(env_class: type, task: Any, on: bool, reward_version: str = "v2") -> tuple[np.ndarray, list, list]:
    """Meta-World's scripted expert (it grasps and pushes, so contacts count), goal shown to it."""
    speedups.set_speedups(on)
    if on:  # the episode's env gets its model from the compile cache, not from the XML
        env_class(reward_function_version=reward_version).close()
    env = env_class(reward_function_version=reward_version)
    env.set_task(task)
    env._partially_observable = False  # the expert reads the goal from the observation
    env.seed(0)
    obs, _ = env.reset()
    expert = ENV_POLICY_MAP[task.env_name]()
    noise = np.random.default_rng(0).normal(0, 0.1, (STEPS, 4))
    observations, rewards, infos = [obs], [], []
    for t in range(STEPS):
        obs, reward, _, _, info = env.step(np.clip(expert.get_action(obs) + noise[t], -1, 1))
        observations.append(obs)
        rewards.append(reward)
        infos.append(info)
    env.close()
    return np.array(observations), rewards, infos


def test_every_v3_env_steps_the_same_bits_with_and_without():
    bench = benchmark("ML45", None, 0)
    classes = {**bench.train_classes, **bench.test_classes}
    assert len(classes) == 50
    touches: dict[str, int] = {}
    fast_touching = speedups.touching_object

    def counting(self: Any, geom_id: int) -> bool:
        touched = fast_touching(self, geom_id)
        touches[type(self).__name__] = touches.get(type(self).__name__, 0) + touched
        return touched

    tasks = {t.env_name: t for t in bench.train_tasks + bench.test_tasks}
    for name, env_class in classes.items():
        reference = expert_episode(env_class, tasks[name], on=False)
        assert speedups.install()
        SawyerXYZEnv.touching_object = counting
        fast = expert_episode(env_class, tasks[name], on=True)
        assert np.array_equal(fast[0], reference[0]), name
        assert fast[1] == reference[1], name
        assert fast[2] == reference[2], name
        speedups.uninstall()
    # the contact path ran with contacts: the grasping experts held their objects
    assert sum(touches.values()) > 1000
    assert touches["SawyerPickPlaceEnvV3"] > 50


@pytest.mark.parametrize("name", ["pick-place-v3", "push-v3", "coffee-push-v3"])
def test_the_v1_rewards_too(name):
    bench = benchmark("ML45", None, 0)
    env_class = {**bench.train_classes, **bench.test_classes}[name]
    task = next(t for t in bench.train_tasks if t.env_name == name)
    reference = expert_episode(env_class, task, on=False, reward_version="v1")
    fast = expert_episode(env_class, task, on=True, reward_version="v1")
    assert np.array_equal(fast[0], reference[0]) and fast[1] == reference[1] and fast[2] == reference[2]


def test_quaternions_equal_scipys_bit_for_bit():
    assert speedups.install()
    matrices = list(Rotation.random(20000, random_state=0).as_matrix())
    # each of the four cases and their ties: identity, half turns about each axis, 120° about the diagonal
    matrices += [np.eye(3), np.diag([1.0, -1.0, -1.0]), np.diag([-1.0, 1.0, -1.0]), np.diag([-1.0, -1.0, 1.0]),
                 np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])]
    for m in matrices:
        assert np.array_equal(speedups.ExactRotation.from_matrix(m).as_quat(), Rotation.from_matrix(m).as_quat())
    # what it does not compute itself goes to scipy: not orthogonal (orthogonalised), a stack, det < 0 (refused)
    skewed = np.eye(3) + 1e-3
    assert np.array_equal(speedups.ExactRotation.from_matrix(skewed).as_quat(), Rotation.from_matrix(skewed).as_quat())
    stack = np.stack(matrices[:3])
    assert np.array_equal(speedups.ExactRotation.from_matrix(stack).as_quat(), Rotation.from_matrix(stack).as_quat())
    with pytest.raises(ValueError, match="determinant"):
        speedups.ExactRotation.from_matrix(-np.eye(3))
    broken = np.full((3, 3), np.nan)  # a simulation gone bad: whatever scipy does with it
    try:
        expected = Rotation.from_matrix(broken).as_quat()
    except Exception as err:  # noqa: BLE001 - the same error, whatever it is
        with pytest.raises(type(err)):
            speedups.ExactRotation.from_matrix(broken)
    else:
        assert np.array_equal(speedups.ExactRotation.from_matrix(broken).as_quat(), expected, equal_nan=True)


def test_install_and_uninstall_swap_metaworlds_own_functions():
    import metaworld.envs.sawyer_pick_place_v3 as pick_place

    touching, observation = SawyerXYZEnv.touching_object, SawyerXYZEnv._get_curr_obs_combined_no_goal
    assert "_initialize_simulation" not in vars(SawyerXYZEnv)  # gymnasium's MujocoEnv's, inherited
    assert speedups.install() and speedups.install()  # idempotent
    assert SawyerXYZEnv.touching_object is speedups.touching_object
    assert SawyerXYZEnv._get_curr_obs_combined_no_goal is speedups.curr_obs_combined_no_goal
    assert SawyerXYZEnv._initialize_simulation is speedups.initialize_simulation
    assert pick_place.Rotation is speedups.ExactRotation
    speedups.uninstall()
    speedups.uninstall()
    assert SawyerXYZEnv.touching_object is touching and pick_place.Rotation is Rotation
    assert SawyerXYZEnv._get_curr_obs_combined_no_goal is observation
    assert "_initialize_simulation" not in vars(SawyerXYZEnv)
    # the family's setting decides, when a slot builds its env
    for on in (True, False):
        env = make_family("metaworld-ml1", {"env_name": "pick-place-v3", "horizon": 5, "speedups": on}).make_env()
        assert speedups.installed() is on
        env.close()


def test_speedups_must_be_a_boolean():
    with pytest.raises(TaskFamilyError, match="speedups must be true or false") as err:
        make_family("metaworld-ml1", {"speedups": "yes"})
    assert "\n" not in str(err.value)


def test_an_env_from_the_compile_cache_has_its_own_model_equal_to_a_compiled_one():
    from metaworld.envs.sawyer_push_v3 import SawyerPushEnvV3

    compiled = SawyerPushEnvV3()  # speedups off: its own compile
    assert speedups.install()
    first, second = SawyerPushEnvV3(), SawyerPushEnvV3()  # the first compiles into the cache, the second copies
    for env in (first, second):
        for field in ("body_pos", "geom_size", "site_pos", "mesh_vert", "actuator_ctrlrange", "opt"):
            a, b = getattr(env.model, field), getattr(compiled.model, field)
            assert (np.array_equal(a, b) if isinstance(a, np.ndarray) else str(a) == str(b)), field
    second.model.body_pos[1, 0] += 1.0  # each env's model is its own
    assert first.model.body_pos[1, 0] != second.model.body_pos[1, 0]
    assert SawyerPushEnvV3().model.body_pos[1, 0] == compiled.model.body_pos[1, 0]
    for env in (compiled, first, second):
        env.close()
