"""The batched MuJoCo families (`metaray.tasks.mujoco_batched`) against their reference, gymnasium's
v5 envs side by side (`GymTaskVectorEnv` over `family.make_env`): same seeds and actions give the
same observations, rewards, terminations and resets, whole episodes long, task switches included;
a checkpointed state resumes exactly; a slot whose physics goes non-finite is reset and counted."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from metaray.tasks import make_family, make_vector_env
from metaray.tasks.generic import ENV_FAILURES, GymTaskVectorEnv
from metaray.tasks.mujoco_batched import MujocoVectorEnv

FAMILIES = {
    "halfcheetah-vel": {"horizon": 30},
    "halfcheetah-dir": {"horizon": 30},
    "ant-dir": {"horizon": 30},
    "ant-goal": {"horizon": 30},
}


def pair(name: str, kwargs: dict, slots: int = 4, seed: int = 11, **extra):
    family = make_family(name, {**kwargs, **extra})
    tasks = family.sample(slots, np.random.default_rng(3))
    batched = make_vector_env(family, tasks, seed=seed)
    reference = GymTaskVectorEnv(family, tasks, seed=seed)
    return family, batched, reference


def random_actions(env, rng: np.random.Generator, dtype=np.float32) -> np.ndarray:
    space = env.single_action_space
    return rng.uniform(space.low, space.high, size=(env.num_envs, *space.shape)).astype(dtype)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_batched_steps_equal_gymnasiums_envs_over_whole_episodes(name):
    family, batched, reference = pair(name, FAMILIES[name])
    assert isinstance(batched, MujocoVectorEnv)
    assert batched.single_observation_space == reference.single_observation_space
    assert batched.single_action_space == reference.single_action_space
    obs_b, _ = batched.reset()
    obs_r, _ = reference.reset()
    np.testing.assert_array_equal(obs_b, obs_r)
    rng = np.random.default_rng(0)
    switch = family.sample(batched.num_envs, np.random.default_rng(9))
    resets = 0
    for t in range(75):  # two and a half episodes: autoresets (and Ant's early ends) included
        if t == 40:  # a new task per slot, taking effect at each slot's next reset
            for slot, task in enumerate(switch):
                batched.set_task(slot, task)
                reference.set_task(slot, task)
        actions = random_actions(batched, rng, np.float32 if t % 2 else np.float64)
        out_b, out_r = batched.step(actions), reference.step(actions)
        for got, want in zip(out_b[:4], out_r[:4], strict=True):
            np.testing.assert_array_equal(got, want)
        done = out_r[2] | out_r[3]
        assert ("final_obs" in out_b[4]) == bool(done.any())
        if done.any():
            resets += 1
            np.testing.assert_array_equal(out_b[4]["final_obs"][done], out_r[4]["final_obs"][done])
    assert resets >= 2


def test_observe_target_appends_the_target_velocity():
    _, batched, reference = pair("halfcheetah-vel", FAMILIES["halfcheetah-vel"], observe_target=True)
    obs_b, _ = batched.reset()
    obs_r, _ = reference.reset()
    np.testing.assert_array_equal(obs_b, obs_r)
    assert np.array_equal(obs_b[:, -1], [t.params[0] for t in batched.tasks])


@pytest.mark.parametrize("name", ["halfcheetah-vel", "ant-goal"])
def test_a_saved_state_resumes_the_same_trajectory(name):
    family, env, _ = pair(name, FAMILIES[name])
    rng = np.random.default_rng(1)
    env.reset()
    for _ in range(12):
        env.step(random_actions(env, rng))
    meta, arrays = env.get_state()
    future = [random_actions(env, rng) for _ in range(40)]
    expected = [env.step(a) for a in future]
    fresh = make_vector_env(family, family.sample(env.num_envs, np.random.default_rng(0)), seed=99)
    fresh.set_state(meta, arrays)
    for actions, want in zip(future, expected, strict=True):
        got = fresh.step(actions)
        for g, w in zip(got[:4], want[:4], strict=True):
            np.testing.assert_array_equal(g, w)


def test_a_slot_whose_physics_goes_non_finite_is_reset_counted_and_dropped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MuJoCo writes its warning to MUJOCO_LOG.TXT in the working directory
    _, env, _ = pair("halfcheetah-vel", FAMILIES["halfcheetah-vel"])
    env.reset()
    before = ENV_FAILURES["non-finite"]
    env.datas[2].qvel[0] = np.nan
    obs, rewards, terminated, truncated, infos = env.step(np.zeros((env.num_envs, 6), np.float32))
    assert infos["env_failure"].tolist() == [False, False, True, False]
    assert truncated[2] and not terminated[2] and rewards[2] == 0.0
    assert np.isfinite(obs).all() and np.isfinite(infos["final_obs"]).all() and np.isfinite(rewards).all()
    assert ENV_FAILURES["non-finite"] == before + 1
    assert np.isfinite(env.datas[2].qvel).all()  # reset, and it goes on
    obs, rewards, *_ , infos = env.step(np.zeros((env.num_envs, 6), np.float32))
    assert "env_failure" not in infos and np.isfinite(obs).all()


def test_wrong_action_shapes_are_refused():
    _, env, _ = pair("ant-dir", FAMILIES["ant-dir"])
    env.reset()
    with pytest.raises(ValueError, match=r"actions must have shape \(4, 8\)"):
        env.step(np.zeros((4, 6)))


def test_an_unhealthy_ant_ends_its_episode_as_gymnasiums_does():
    """Ant-v5's health check (torso height in [0.2, 1.0]): terminated, no survive bonus, reset."""
    _, batched, reference = pair("ant-goal", FAMILIES["ant-goal"])
    batched.reset()
    reference.reset()
    model = reference.envs[1].unwrapped.model
    for data in (batched.datas[1], reference.envs[1].unwrapped.data):
        data.qpos[2] = 1.6  # the torso lifted out of the healthy range
        mujoco.mj_forward(model, data)
    batched._read_all()  # the batched env's copy of the slots' state
    actions = np.zeros((batched.num_envs, 8), np.float32)
    out_b, out_r = batched.step(actions), reference.step(actions)
    for got, want in zip(out_b[:4], out_r[:4], strict=True):
        np.testing.assert_array_equal(got, want)
    assert out_b[2].tolist() == [False, True, False, False]
    np.testing.assert_array_equal(out_b[4]["final_obs"][1], out_r[4]["final_obs"][1])
