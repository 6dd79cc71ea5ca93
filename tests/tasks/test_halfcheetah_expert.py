"""The shipped halfcheetah-vel expert: it loads without pickle and demonstrates the tasks.

Real MuJoCo rollouts of the file in metaray/tasks/experts/, as adversarial imitation uses it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from metaray.tasks import Task, make_family, make_vector_env
from metaray.tasks.experts import ExpertError, expert_path, load_expert


def rollout(family, task, act):
    env = family.make_env(task)
    obs, _ = env.reset(seed=0)
    total, velocities, done = 0.0, [], False
    while not done:
        obs, reward, terminated, truncated, info = env.step(act(obs))
        total += reward
        velocities.append(info["x_velocity"])
        done = terminated or truncated
    return total, np.asarray(velocities)


def test_observe_target_appends_the_target_velocity():
    family = make_family("halfcheetah-vel", {"horizon": 5, "observe_target": True})
    env = family.make_env(Task("halfcheetah-vel", "test", 0, (1.25,)))
    obs, _ = env.reset(seed=0)
    assert env.observation_space.shape == (18,) and env.observation_space.contains(obs)
    assert obs[-1] == 1.25
    env.get_wrapper_attr("set_task")(Task("halfcheetah-vel", "test", 1, (0.5,)))
    assert env.step(np.zeros(6))[0][-1] == 1.25  # the running episode keeps its task
    assert env.reset(seed=0)[0][-1] == 0.5
    # the default hides the target, as meta-RL needs; the vector env follows the family
    assert make_family("halfcheetah-vel", {}).make_env().observation_space.shape == (17,)
    vec = make_vector_env(family, family.sample(2, np.random.default_rng(0), "test"), seed=0)
    assert vec.single_observation_space.shape == (18,)


@pytest.mark.parametrize("target", [0.5, 1.5])
def test_shipped_expert_tracks_the_target_velocity(target):
    meta = load_expert("halfcheetah-vel").metadata
    assert meta["family"] == "halfcheetah-vel" and "observe_target: true" in meta["config"]
    family = make_family("halfcheetah-vel", {"horizon": 200})
    task = Task("halfcheetah-vel", "test", 0, (target,))
    expert_return, velocity = rollout(family, task, family.expert(task))
    zero_return, _ = rollout(family, task, lambda obs: np.zeros(6, np.float32))
    assert abs(velocity[-100:].mean() - target) < 0.3
    assert expert_return > zero_return + 0.5 * 200 * target  # far better than standing still
    # batched and single observations give the same actions
    obs = np.random.default_rng(0).normal(size=(4, 17))
    act = family.expert(task)
    np.testing.assert_allclose(act(obs), np.stack([act(o) for o in obs]), atol=1e-6)
    assert (np.abs(act(obs)) <= 1).all()


def test_bad_expert_files_give_one_line_errors(tmp_path):
    with pytest.raises(ExpertError, match="is missing"):
        load_expert("halfcheetah-vel", tmp_path / "absent.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ExpertError, match="not a safetensors file"):
        load_expert("halfcheetah-vel", junk)
    other = tmp_path / "other.safetensors"
    save_file({"w": np.zeros(2, np.float32)}, str(other), metadata={"family": json.dumps("point-nav")})
    with pytest.raises(ExpertError, match="not an expert for 'halfcheetah-vel'"):
        load_expert("halfcheetah-vel", other)
    assert expert_path("halfcheetah-vel").name == "halfcheetah-vel.safetensors"
