"""Meta-World ML1/ML10/ML45 families on the real metaworld envs, and episode success end to end."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import gymnasium as gym
import metaworld
import numpy as np
import pytest
from metaworld.policies import SawyerReachV3Policy

from metaray.cli import main
from metaray.cluster.checkpoint import read_progress
from metaray.core import get_algorithm
from metaray.tasks import Task, TaskFamilyError, make_family, make_vector_env, step_success
from metaray.tasks.metaworld import (
    MetaWorldML1Family,
    MetaWorldML10Family,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def ml1() -> MetaWorldML1Family:
    return MetaWorldML1Family(env_name="reach-v3")


def goal_of(env: Any) -> np.ndarray:
    return np.array(env._env._target_pos, copy=True)


def expert_action(expert: SawyerReachV3Policy, obs: np.ndarray, env: Any) -> np.ndarray:
    """Meta-World's scripted policy reads the goal from the observation, where ML1 hides it."""
    seen = np.array(obs, copy=True)
    seen[-3:] = goal_of(env)
    return expert.get_action(seen).astype(np.float32)


def test_ml1_splits_are_metaworlds_own_train_and_test_tasks(ml1):
    bench = metaworld.ML1("reach-v3", seed=0)  # a second, independent build with the same seed
    for split, reference in (("train", bench.train_tasks), ("test", bench.test_tasks)):
        tasks = ml1.sample(50, np.random.default_rng(1), split)
        assert sorted(t.task_id for t in tasks) == list(range(50))  # every task once
        for task in tasks:
            assert ml1.metaworld_task(task).data == reference[task.task_id].data
    train = {t.data for t in bench.train_tasks}
    assert not train & {t.data for t in bench.test_tasks}  # disjoint goals
    # the goal an env runs is the benchmark task's goal, different across the splits
    env = ml1.make_env(ml1.task("train", 7))
    env.reset()
    train_goal = goal_of(env)
    env.set_task(ml1.task("test", 7))
    env.reset()
    assert not np.allclose(goal_of(env), train_goal)


def test_sampling_beyond_the_split_uses_every_task_evenly(ml1):
    tasks = ml1.sample(120, np.random.default_rng(0), "train")
    counts = Counter(t.task_id for t in tasks)
    assert set(counts) == set(range(50)) and set(counts.values()) <= {2, 3}
    assert ml1.sample(0, np.random.default_rng(0)) == []
    assert [t.task_id for t in ml1.train_tasks()] == list(range(50))  # the fixed-set scheduler's list
    assert ml1.task("test", 4) == ml1.task("test", 4) and ml1.task("test", 4).split == "test"
    with pytest.raises(ValueError, match=r"task_id must be in \[0, 50\)"):
        ml1.task("train", 50)


def test_episodes_are_500_steps_truncated_never_terminated_and_hide_the_goal(ml1):
    env = ml1.make_env(ml1.task("train", 3))
    obs, _ = env.reset(seed=0)
    assert obs.shape == (39,) and obs.dtype == np.float64
    rng = np.random.default_rng(0)
    for t in range(1, 501):
        obs, reward, terminated, truncated, info = env.step(rng.uniform(-1, 1, 4).astype(np.float32))
        assert np.isfinite(reward) and not terminated and truncated == (t == 500)
        assert "success" in info
    assert np.all(obs[-3:] == 0.0)  # ML1 hides the goal
    obs, _ = env.reset()  # and the next episode starts afresh
    assert not env.step(np.zeros(4, np.float32))[3]


def test_horizon_shortens_episodes_in_the_vector_env():
    family = MetaWorldML1Family(env_name="reach-v3", horizon=30)
    env = make_vector_env(family, family.sample(2, np.random.default_rng(0)), envs_per_task=1, seed=0)
    env.reset()
    for t in range(1, 31):
        _, _, terminated, truncated, infos = env.step(np.zeros((2, 4), np.float32))
        assert not terminated.any() and truncated.all() == (t == 30)
    assert infos["_final_obs"].all()
    env.close()


def test_scripted_expert_succeeds_and_success_is_read_from_every_step():
    family = MetaWorldML1Family(env_name="reach-v3", horizon=150)
    tasks = family.sample(3, np.random.default_rng(0), "test")
    env = make_vector_env(family, tasks, seed=0)
    expert = SawyerReachV3Policy()
    obs, _ = env.reset()
    episode_success = np.zeros(3, bool)
    for t in range(150):
        actions = np.stack([expert_action(expert, o, slot.env) for o, slot in zip(obs, env.envs, strict=True)])
        obs, _, _, truncated, infos = env.step(actions)
        success = step_success(infos, 3)
        assert success is not None
        episode_success |= success
        if t == 149:  # the expert stays on the goal: the last step's success comes from final_info
            assert truncated.all() and "success" not in infos and success.all()
    assert episode_success.all()
    env.close()
    # a random policy on the same goals does not succeed on every step
    env = make_vector_env(family, tasks, seed=0)
    env.reset()
    _, _, _, _, infos = env.step(np.zeros((3, 4), np.float32))
    assert not step_success(infos, 3).all()
    env.close()


def test_terminate_on_success_ends_the_episode_on_success():
    family = MetaWorldML1Family(env_name="reach-v3", terminate_on_success=True)
    env = family.make_env(family.task("test", 0))
    obs, _ = env.reset()
    expert = SawyerReachV3Policy()
    steps = 0
    while steps < 500:
        obs, _, terminated, truncated, info = env.step(expert_action(expert, obs, env))
        steps += 1
        if terminated:
            break
    assert terminated and not truncated and info["success"] == 1.0 and steps < 500


def test_ml10_has_its_train_and_held_out_classes_and_slots_switch_class_at_reset():
    family = MetaWorldML10Family(horizon=20)
    train = family.sample(500, np.random.default_rng(0), "train")
    test = family.sample(250, np.random.default_rng(0), "test")
    train_classes = {family.metaworld_task(t).env_name for t in train}
    test_classes = {family.metaworld_task(t).env_name for t in test}
    assert len(train_classes) == 10 and len(test_classes) == 5 and not train_classes & test_classes
    assert len({t.task_id for t in train}) == 500 and len({t.task_id for t in test}) == 250
    # every class shares one observation and action space, so one policy runs them all
    spaces = {(repr(c().observation_space), repr(c().action_space)) for c in family.env_classes().values()}
    assert len(spaces) == 1
    first = next(t for t in train if family.metaworld_task(t).env_name == "reach-v3")
    other = next(t for t in test if family.metaworld_task(t).env_name != "reach-v3")
    env = family.make_env(first)
    env.reset()
    env.set_task(other)
    env.step(np.zeros(4, np.float32))
    assert type(env._env).__name__ == type(family.env_classes()["reach-v3"]()).__name__  # not before the reset
    env.reset()
    assert type(env._env) is family.env_classes()[family.metaworld_task(other).env_name]
    for t in range(1, 21):
        assert env.step(np.zeros(4, np.float32))[3] == (t == 20)


def test_ml45_builds_its_45_train_and_5_test_classes():
    family = make_family("metaworld-ml45", {"horizon": 5})
    assert len(family.split_tasks("train")) == 2250 and len(family.split_tasks("test")) == 250
    assert len({t.env_name for t in family.split_tasks("train")}) == 45
    task = family.sample(1, np.random.default_rng(0), "test")[0]
    env = make_vector_env(family, [task], seed=0)
    env.reset()
    for _ in range(5):
        _, reward, _, truncated, _ = env.step(np.zeros((1, 4), np.float32))
    assert truncated.all() and np.isfinite(reward).all()
    env.close()


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"env_name": "reach-v9"}, "unknown env_name 'reach-v9'"),
    ({"horizon": 501}, "horizon must be <= 500"),
    ({"seed": -1}, "seed must be an integer >= 0"),
    ({"goal": 1}, "unexpected keyword 'goal'"),
    ({"reward_version": "v3"}, "reward_version must be one of v2, v1"),
])
def test_bad_family_kwargs_are_one_line_errors(kwargs, fragment):
    with pytest.raises(TaskFamilyError, match=fragment) as err:
        make_family("metaworld-ml1", kwargs)
    assert "\n" not in str(err.value)


def test_the_reward_version_reaches_the_env_and_changes_the_reward():
    """Meta-World's v1 and v2 reward functions differ (Meta-World+): the family's reward_version
    builds the env with it; the same actions from the same state earn different rewards."""
    rewards = {}
    for version in ("v1", "v2"):
        env = make_family("metaworld-ml1", {"env_name": "reach-v3", "reward_version": version}).make_env()
        assert env._env.reward_function_version == version
        env.reset(seed=0)
        rewards[version] = [env.step(np.full(4, 0.5, np.float32))[1] for _ in range(5)]
        env.close()
    assert not np.allclose(rewards["v1"], rewards["v2"])


# ---------------------------------------------------------------------------------- success


class SuccessAtStepEnv(gym.Env):
    """Reports info["success"] on exactly one step (`task.params[0]`, 1-based; 0 = never)."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def __init__(self, task: Task) -> None:
        self.task = task

    def set_task(self, task: Task) -> None:
        self.task = task

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        info = {"success": float(self.t == int(self.task.params[0]))}
        return np.zeros(2, np.float32), 0.0, False, self.t == SuccessAtStepFamily.max_episode_steps, info


class SuccessAtStepFamily:
    """Task k succeeds at step k % 6 of every episode (never when 0; on the last step when 5)."""

    name = "success-at-step"
    max_episode_steps = 5

    def task(self, split: str, task_id: int) -> Task:
        return Task(self.name, split, task_id, (float(task_id % 6),))

    def sample(self, n: int, rng: np.random.Generator, split: str = "train") -> list[Task]:
        return [self.task(split, i) for i in range(n)]

    def make_env(self, task: Task | None = None) -> gym.Env:
        return SuccessAtStepEnv(task or self.task("train", 0))


def test_evaluations_report_success_per_task_exactly():
    family = SuccessAtStepFamily()
    tasks = family.sample(12, np.random.default_rng(0), "test")
    expected = [float(t.params[0] > 0) for t in tasks]
    space = SuccessAtStepEnv.observation_space
    maml = get_algorithm("maml")
    config = maml.Config(meta_batch_size=5, episodes_per_task=3, hidden_sizes=[8])
    rows = maml.evaluate(maml.make_policy(space, space, config), family, tasks, config, 0)
    assert [r["success_rate"] for r in rows] == expected
    assert [r["success_rate_pre"] for r in rows] == expected
    rl2 = get_algorithm("rl2")
    config = rl2.Config(episodes_per_trial=3, hidden_size=8)
    rows = rl2.evaluate(rl2.make_policy(space, space, config), family, tasks, config, 0)
    assert [r["success_rate"] for r in rows] == expected
    assert [r["success_last"] for r in rows] == [bool(e) for e in expected]


def test_families_without_success_report_none():
    point_nav = make_family("point-nav")
    tasks = point_nav.sample(2, np.random.default_rng(0), "test")
    maml = get_algorithm("maml")
    config = maml.Config(meta_batch_size=2, episodes_per_task=2, hidden_sizes=[8])
    env = point_nav.make_env()
    rows = maml.evaluate(maml.make_policy(env.observation_space, env.action_space, config), point_nav, tasks, config, 0)
    assert all("success_rate" not in r for r in rows)


MAML_SMALL = ["maml.meta_batch_size=2", "maml.episodes_per_task=2", "maml.hidden_sizes=[16, 16]"]
RL2_SMALL = ["rl2.slots_per_worker=2", "rl2.trials_per_update=2", "rl2.hidden_size=16"]


@pytest.mark.parametrize(("config", "overrides", "progress_key", "family"), [
    ("maml-trpo-ml1-reach.yaml", MAML_SMALL, "success_rate_post", "metaworld-ml1"),
    ("rl2-ml1-reach.yaml", RL2_SMALL, "success_rate", "metaworld-ml1"),
    ("maml-trpo-ml10.yaml", MAML_SMALL, "success_rate_post", "metaworld-ml10"),
    ("rl2-ml10.yaml", RL2_SMALL, "success_rate", "metaworld-ml10"),
])
def test_meta_world_configs_train_and_eval_writes_success_rate(config, overrides, progress_key, family, tmp_path, capsys):
    """The shipped ML1 and ML10 configs, shrunk: one training iteration, then `metaray eval` on
    held-out tasks (ML10: the 5 held-out env classes) with success per task."""
    run = tmp_path / "run"
    args = ["train", str(CONFIGS / config), "--serial", "--run-dir", str(run), "--iterations", "1",
            "--set", "task.kwargs.horizon=40", "--set", "workers.num_workers=1"]
    for override in overrides:
        args += ["--set", override]
    assert main(args) == 0
    row = read_progress(run)[-1]
    assert 0.0 <= row[progress_key] <= 1.0
    capsys.readouterr()
    assert main(["eval", str(run), "--json", "--num-tasks", "3"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = json.loads((run / "eval.json").read_text())
    assert saved["success_rate"] == result["success_rate"]
    rates = [t["success_rate"] for t in result["tasks"]]
    assert len(rates) == 3 and all(0.0 <= r <= 1.0 for r in rates)
    assert result["success_rate"] == pytest.approx(np.mean(rates))
    assert result["family"] == family and result["split"] == "test"
