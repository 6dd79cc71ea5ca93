import numpy as np
import pytest

from metaray.cluster.scheduler import TaskScheduler
from metaray.tasks import make_family


def test_uniform_draws_train_tasks_reproducibly_and_requeues_first():
    family = make_family("point-nav")
    a, b = TaskScheduler(family, seed=1), TaskScheduler(family, seed=1)
    batch = a.next_batch(5)
    assert batch == b.next_batch(5)
    assert all(t.split == "train" for t in batch)
    a.requeue(batch[:2])
    again = a.next_batch(4)
    assert again[:2] == batch[:2] and len(again) == 4
    assert not {t.task_id for t in again[2:]} & {t.task_id for t in batch}


def test_state_round_trip_gives_the_same_next_tasks():
    family = make_family("bandit")
    s = TaskScheduler(family, seed=3)
    s.next_batch(3)
    state = s.get_state()
    expected = s.next_batch(4)
    t = TaskScheduler(family, seed=99)
    t.set_state(state)
    assert t.next_batch(4) == expected


def test_assign_balances_and_keeps_every_task():
    tasks = make_family("bandit").sample(7, np.random.default_rng(0))
    parts = TaskScheduler.assign(tasks, 3)
    assert sorted(len(p) for p in parts) == [2, 2, 3]
    assert sorted(t.task_id for p in parts for t in p) == sorted(t.task_id for t in tasks)


def test_unknown_strategy():
    with pytest.raises(ValueError, match="unknown strategy 'nope'"):
        TaskScheduler(make_family("bandit"), 0, strategy="nope")


def test_fixed_set_cycles_one_list_of_train_tasks_and_resumes_its_position():
    family = make_family("point-nav")
    s = TaskScheduler(family, seed=1, strategy="fixed-set", fixed_set_size=5)
    first, second, third = s.next_batch(3), s.next_batch(3), s.next_batch(4)
    fixed = s.fixed
    assert len({t.task_id for t in fixed}) == 5 and all(t.split == "train" for t in fixed)
    assert first + second + third == [fixed[i % 5] for i in range(10)]  # in order, wrapping around
    state = s.get_state()
    t = TaskScheduler(family, seed=1, strategy="fixed-set", fixed_set_size=5)
    t.set_state(state)
    assert t.next_batch(2) == s.next_batch(2)
    other = TaskScheduler(family, seed=2, strategy="fixed-set", fixed_set_size=5)
    with pytest.raises(ValueError, match="fixed task set differs"):
        other.set_state(state)


def test_fixed_set_uses_the_family_s_own_train_tasks():
    class Family:
        name, max_episode_steps = "own", 10

        def __init__(self):
            self.inner = make_family("bandit")

        def train_tasks(self):
            return self.inner.sample(3, np.random.default_rng(7))

        def sample(self, n, rng, split="train"):
            raise AssertionError("fixed-set must not draw")

    s = TaskScheduler(Family(), seed=0, strategy="fixed-set")
    assert [t.task_id for t in s.next_batch(4)] == [t.task_id for t in Family().train_tasks()] + [s.fixed[0].task_id]


def test_balance_evens_out_expected_cost_from_observed_env_steps():
    family = make_family("bandit")
    tasks = family.sample(5, np.random.default_rng(0))
    s = TaskScheduler(family, seed=0)
    for task, steps in zip(tasks, [100, 10, 10, 10, 10], strict=True):
        s.observe(task.task_id, env_steps=steps)
    parts = s.balance(tasks, 2)
    assert parts == [[tasks[0]], tasks[1:]]  # 100 vs 40: the long task alone
    assert s.balance(family.sample(4, np.random.default_rng(9)), 2) == TaskScheduler.assign(
        family.sample(4, np.random.default_rng(9)), 2)  # unseen tasks: equal cost, round robin
    assert TaskScheduler.assign(tasks, 2) == [tasks[0::2], tasks[1::2]]
