"""A user's task family written from the README's contract: every gap is found when the run is
configured, in one line naming it, never as a traceback from inside a worker."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from metaray.cli import main

FAMILY = textwrap.dedent("""
    from dataclasses import dataclass

    import gymnasium as gym
    import numpy as np

    from metaray.tasks import Task


    @dataclass(frozen=True)
    class RingTask:  # what a user writes from the README's first lines: no task_id
        goal: float


    class RingEnv(gym.Env):
        observation_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        action_space = gym.spaces.Box(-0.1, 0.1, shape=(2,), dtype=np.float32)

        def __init__(self, task):
            self.task = task

        def set_task(self, task):
            self.task = task

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return np.zeros(2, np.float32), {}

        def step(self, action):
            return np.zeros(2, np.float32), 0.0, False, False, {}


    class NoSetTaskEnv(gym.Env):  # the generic path needs env.set_task(task)
        observation_space, action_space = RingEnv.observation_space, RingEnv.action_space

        def __init__(self, task):
            self.task = task

        reset, step = RingEnv.reset, RingEnv.step


    class RingFamily:
        name, max_episode_steps = "ring", 10

        def sample(self, n, rng, split="train"):
            return [RingTask(float(g)) for g in rng.uniform(0, 1, n)]

        def make_env(self, task=None):
            return RingEnv(task)


    class GoodTasks(RingFamily):
        def sample(self, n, rng, split="train"):
            return [Task("ring", split, int(i), (float(rng.uniform()),)) for i in rng.integers(0, 1000, n)]


    class NoSetTask(GoodTasks):
        def make_env(self, task=None):
            return NoSetTaskEnv(task)


    class BadSteps(GoodTasks):
        max_episode_steps = 0


    class SampleShort(GoodTasks):  # one task fewer than asked, when asked for several
        def sample(self, n, rng, split="train"):
            return super().sample(n, rng, split)[: max(1, n - 1)]


    class SampleRaises(GoodTasks):
        def sample(self, n, rng, split="train"):
            raise KeyError(split)
""")


@pytest.mark.parametrize(("cls", "expected"), [
    ("RingFamily", "RingFamily.sample returns RingTask tasks without family, split, task_id, params: "
                   "return metaray.tasks.Task(family, split, task_id, params) values"),
    ("NoSetTask", "has no set_task(task) method; a task family's make_env must return an env with one"),
    ("BadSteps", "BadSteps.max_episode_steps must be a positive int, got 0"),
    ("SampleRaises", "SampleRaises.sample(1, rng, 'train') failed: KeyError: 'train'"),
    # was: a zip() traceback from the scheduler, at the first meta-batch
    ("SampleShort", "SampleShort.sample(3, rng, 'train') returned 2 tasks, not 3"),
])
def test_a_gap_in_a_users_family_is_one_line_before_anything_starts(tmp_path, monkeypatch, capsys, cls, expected):
    (tmp_path / "ring_tasks.py").write_text(FAMILY)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = {"algo": "maml", "iterations": 1, "task": {"family": f"ring_tasks:{cls}"}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path), "--serial", "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "run").exists()


def test_a_family_that_meets_the_contract_trains(tmp_path, monkeypatch, capsys):
    (tmp_path / "ring_tasks.py").write_text(FAMILY)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = {"algo": "maml", "iterations": 1, "task": {"family": "ring_tasks:GoodTasks"},
              "maml": {"meta_batch_size": 2, "episodes_per_task": 2, "hidden_sizes": [8]}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path), "--serial", "--run-dir", str(tmp_path / "run")]) == 0
