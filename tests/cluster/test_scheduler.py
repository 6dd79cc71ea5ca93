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
