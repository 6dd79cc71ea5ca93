import numpy as np
import pytest

from metaray.cluster import scheduler as scheduler_module
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


def test_expert_return_runs_the_family_expert_on_the_true_reward():
    from metaray.cluster.scheduler import expert_return

    family = make_family("point-nav")
    task = family.sample(1, np.random.default_rng(0))[0]
    distance = float(np.linalg.norm(np.array(task.params)))
    ret = expert_return(family, task)
    # the expert walks straight at 0.1 per axis per step: its return is a few steps of -distance
    assert -distance * (distance / 0.1 + 2) < ret < 0


def scored_scheduler(share: float = 0.5) -> tuple[TaskScheduler, list, set[int]]:
    """A regret scheduler that has seen 10 train tasks, two of them with a far worse adapted return."""
    family = make_family("point-nav")
    s = TaskScheduler(family, seed=0, strategy="regret", regret_share=share, regret_temperature=0.3)
    first = s.next_batch(10)  # nothing scored yet: all fresh
    hard = {first[0].task_id, first[1].task_id}
    for task in first:
        s.observe(task.task_id, return_pre=-40.0, return_post=-60.0 if task.task_id in hard else -5.0)
    return s, first, hard


def test_regret_replays_high_regret_train_tasks_and_fills_up_with_fresh_ones():
    s, first, hard = scored_scheduler()
    seen = {t.task_id for t in first}
    for entry in (s.stats[i] for i in seen):  # regret = expert's true return - adapted return
        assert entry["regret"] == pytest.approx(entry["expert_return"] - entry["return_post"])
    counts = {i: 0 for i in seen}
    fresh = 0
    for _ in range(200):
        state = s.get_state()
        batch = s.next_batch(10)
        assert all(t.split == "train" for t in batch) and len({t.task_id for t in batch}) == 10
        replayed = [t for t in batch if t.task_id in seen]
        assert len(replayed) == 5  # regret_share 0.5 of the batch, the rest fresh draws
        fresh += len(batch) - len(replayed)
        for t in replayed:
            counts[t.task_id] += 1
        s.set_state(state)  # rewind: forget the fresh tasks, keep drawing from the same 10 scores
        s.rng.integers(1 << 30)  # ...but a different draw next time
    assert fresh == 1000
    assert min(counts[i] for i in hard) == 200  # the two hardest are (almost) always replayed
    easy = [counts[i] for i in seen - hard]
    assert max(easy) < 200 and sum(easy) == 200 * 3
    s.observe(first[0].task_id, return_post=-5.0)  # it got solved: its regret halves (smoothing 0.5)
    assert s.stats[first[0].task_id]["regret"] < s.stats[first[2].task_id]["regret"] + 30


def test_regret_state_round_trip_keeps_pool_and_scores():
    s, _, _ = scored_scheduler()
    state = s.get_state()
    expected = s.next_batch(6)
    t = TaskScheduler(make_family("point-nav"), seed=5, strategy="regret")
    t.set_state(state)
    assert t.next_batch(6) == expected
    assert t.regret_stats() == s.regret_stats() != {}


def test_regret_needs_an_expert():
    with pytest.raises(ValueError, match="has no expert"):
        TaskScheduler(make_family("halfcheetah-dir"), 0, strategy="regret")


def test_a_regret_run_reports_regret_and_bad_pairings_are_one_line_errors(tmp_path, capsys):
    from pathlib import Path

    from metaray.cli import main
    from metaray.cluster.checkpoint import read_progress

    configs = Path(__file__).resolve().parents[2] / "configs"
    run = tmp_path / "regret"
    assert main(["train", str(configs / "maml-trpo-point-nav.yaml"), "--serial", "--run-dir", str(run), "--iterations", "3",
                 "--set", "scheduler.strategy=regret", "--set", "maml.meta_batch_size=4", "--set", "maml.episodes_per_task=2"]) == 0
    rows = read_progress(run)
    assert "regret_mean" not in rows[0] or rows[0]["regret_mean"] > 0
    assert all(r["regret_max"] >= r["regret_mean"] > 0 for r in rows[1:])
    capsys.readouterr()
    for config, sets, fragment in [
        ("rl2-bandit-n10-k5.yaml", ["scheduler.strategy=regret"], "rl2 draws its own tasks"),
        ("rl2-bandit-n10-k5.yaml", ["scheduler.strategy=fixed-set"], "fixed-set schedules meta-batches"),
        ("promp-halfcheetah-dir.yaml", ["scheduler.strategy=regret"], "has no expert(task)"),
    ]:
        args = ["train", str(configs / config), "--serial", "--run-dir", str(tmp_path / "bad")]
        assert main(args + [a for s in sets for a in ("--set", s)]) == 2
        err = capsys.readouterr().err.strip()
        assert fragment in err and len(err.splitlines()) == 1
        assert not (tmp_path / "bad").exists()


def test_a_task_without_a_return_leaves_its_regret_alone():
    """Every episode of a task dropped after env failures gives a NaN return: no regret update."""
    s, first, hard = scored_scheduler()
    task = first[0].task_id
    before = s.stats[task]["regret"]
    s.observe(task, return_pre=float("nan"), return_post=float("nan"))
    assert s.stats[task]["regret"] == before and s.stats[task]["visits"] == 2
    assert all(np.isfinite(v) for v in s.regret_stats().values())


def test_per_task_statistics_stay_bounded_and_keep_the_tasks_that_come_back(monkeypatch):
    # a continuous family draws a new task every time: the table must not grow with the run
    monkeypatch.setattr(scheduler_module, "STATS_KEPT", 8)
    uniform = TaskScheduler(make_family("point-nav"), seed=0)
    for _ in range(10):
        for task in uniform.next_batch(5):
            uniform.observe(task.task_id, env_steps=100)
    last = uniform.next_batch(5)
    for task in last:
        uniform.observe(task.task_id, env_steps=50)
    assert len(uniform.stats) == 8
    assert list(uniform.stats)[-5:] == [t.task_id for t in last]  # the most recently observed stay
    # the regret pool's tasks are replayed: they keep their scores however many fresh ones come
    s, first, hard = scored_scheduler()
    for _ in range(6):
        for task in s.next_batch(10):
            s.observe(task.task_id, return_post=-5.0)
    assert set(s.pool) <= set(s.stats) and len(s.stats) == len(s.pool) > 8
    assert all("regret" in s.stats[i] for i in hard)
    state = s.get_state()  # the bounded table round-trips in its order (an exact resume)
    again = TaskScheduler(make_family("point-nav"), seed=1, strategy="regret", regret_share=0.5,
                          regret_temperature=0.3)
    again.set_state(state)
    assert list(again.stats.items()) == list(s.stats.items())
    assert [t.task_id for t in again.next_batch(10)] == [t.task_id for t in s.next_batch(10)]
