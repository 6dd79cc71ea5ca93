"""Fault tolerance with injected faults (the `faulty` task family), the way RLlib tests it: envs
that raise, return NaN or hang; worker processes that die; workers that stall; a dead worker
found by the health probe. Env-level faults run in one process; process-level ones on a real
local Ray instance."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
import torch
import yaml

from metaray.cli import main
from metaray.cluster.checkpoint import latest_checkpoint, read_progress
from metaray.cluster.config import load_config
from metaray.cluster.runtime import RayRuntime
from metaray.cluster.trainer import Trainer, TrainingError
from metaray.learner import maml, rl2
from metaray.tasks import generic, make_family, make_vector_env

TINY_MAML = {
    "algo": "maml", "seed": 1, "iterations": 3,
    "task": {"family": "faulty", "kwargs": {"horizon": 20}},
    "workers": {"num_workers": 2, "restart_delay_s": 0.0},
    "checkpoint": {"every": 1, "keep": 2},
    "metrics": {"tensorboard": False},
    "maml": {"meta_batch_size": 4, "episodes_per_task": 2, "hidden_sizes": [16]},
}


def config_file(tmp_path, base=TINY_MAML, **kwargs):
    cfg = yaml.safe_load(yaml.safe_dump(base))
    cfg["task"]["kwargs"].update(kwargs)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def guard():
    saved = (generic.GUARD.step_timeout_s, generic.GUARD.max_recreate)
    generic.ENV_FAILURES.clear()
    yield generic.GUARD
    generic.GUARD.step_timeout_s, generic.GUARD.max_recreate = saved


# ----------------------------------------------------------------------------- env level
@pytest.mark.parametrize("fault, reason", [("raise_rate", "exception"), ("nan_rate", "non-finite"),
                                           ("hang_rate", "hang")])
def test_a_failing_env_is_rebuilt_its_episode_flagged_and_the_slot_goes_on(fault, reason, guard):
    guard.step_timeout_s = 0.05
    family = make_family("faulty", {fault: 0.05, "hang_s": 0.5, "horizon": 1000})
    env = make_vector_env(family, family.sample(3, np.random.default_rng(0)), seed=0)
    env.reset()
    flagged = 0
    for _ in range(100):
        obs, reward, terminated, truncated, info = env.step(np.full((3, 2), 0.01, np.float32))
        assert np.isfinite(obs).all() and np.isfinite(reward).all()
        if "env_failure" in info:
            failed = info["env_failure"]
            assert (truncated[failed]).all() and (reward[failed] == 0).all()
            flagged += int(failed.sum())
    assert flagged > 3
    assert dict(generic.ENV_FAILURES) == {reason: flagged}


def test_an_env_that_cannot_reset_ends_in_env_failure(guard):
    guard.max_recreate = 2
    family = make_family("faulty", {"reset_raise_rate": 1.0})
    with pytest.raises(generic.EnvFailure, match="failed 3 times in a row"):
        make_vector_env(family, family.sample(1, np.random.default_rng(0)), seed=0).reset()


def test_maml_drops_failed_episodes_and_its_update_stays_finite(guard):
    family = make_family("faulty", {"raise_rate": 0.01, "nan_rate": 0.01, "horizon": 20})
    config = maml.MAMLConfig(meta_batch_size=4, episodes_per_task=8, hidden_sizes=[16])
    sampler = maml.MAMLSampler(family, config, 1, seed=0)
    policy = maml.make_policy(sampler.env.single_observation_space, sampler.env.single_action_space, config)
    sampler.set_weights(0, maml.get_weights(policy))
    results = sampler.collect(family.sample(4, np.random.default_rng(1)), 0)
    masks = np.stack([r.stages["inner_0"].mask for r in results] + [r.stages["post"].mask for r in results])
    dropped = int((~masks.any(-1)).sum())
    assert dropped == sampler.dropped_episodes > 0
    assert all(np.isfinite(r.metrics["return_pre"]) and np.isfinite(r.metrics["return_post"]) for r in results)
    stats = maml.MAMLLearner(policy, config, torch.device("cpu"), 0).update(results)
    assert np.isfinite(stats["meta_loss"]) and np.isfinite(stats["grad_norm"])
    assert all(torch.isfinite(p).all() for p in policy.parameters())


def test_rl2_restarts_a_trial_cut_by_an_env_failure(guard):
    family = make_family("faulty", {"raise_rate": 0.01, "horizon": 10})
    config = rl2.RL2Config(episodes_per_trial=2, hidden_size=8)
    sampler = rl2.RL2Sampler(family, config, slots=8, seed=0)
    policy = rl2.RL2Policy(sampler.spec, config)
    sampler.set_weights(0, rl2.get_weights(policy))
    batch, info = sampler.sample(40)
    assert sampler.dropped_trials > 0 and sum(generic.ENV_FAILURES.values()) >= sampler.dropped_trials
    # every returned trial is whole: two episodes of the fixed horizon (the goal is rarely hit)
    lengths = batch.mask.sum(1)
    assert ((batch.dones.sum(1) == 2) & (lengths <= 20)).all()
    assert np.isfinite(batch.obs).all()


def test_serial_run_with_failing_envs_completes_and_counts_them(tmp_path, capsys):
    path = config_file(tmp_path, raise_rate=0.005, nan_rate=0.005)
    assert main(["train", str(path), "--serial", "--run-dir", str(tmp_path / "run")]) == 0
    rows = read_progress(tmp_path / "run")
    assert [r["iteration"] for r in rows] == [1, 2, 3]
    last = rows[-1]
    assert last["env_failures_total"] > 0 and last["dropped_episodes_total"] > 0
    assert last["worker_restarts_total"] == 0 and np.isfinite(last["return_post"])


def test_tasks_whose_episodes_all_fail_leave_the_iteration_return_finite(tmp_path, capsys):
    """One episode per task and 3% failures per step: about half the episodes are dropped, so some
    tasks have no return at all; the iteration's return is the mean over the tasks that have one."""
    cfg = yaml.safe_load(yaml.safe_dump(TINY_MAML))
    cfg["maml"].update(meta_batch_size=8, episodes_per_task=1)
    cfg["task"]["kwargs"].update(raise_rate=0.03)
    cfg["iterations"] = 2
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--serial", "--run-dir", str(tmp_path / "run")]) == 0
    rows = read_progress(tmp_path / "run")
    assert rows[-1]["dropped_episodes_total"] >= 4  # of 32 episodes (2 iterations x 8 tasks x 2 stages), ~15 expected
    assert all(np.isfinite(r["return_pre"]) and np.isfinite(r["return_post"]) for r in rows)


TINY_STREAM = {  # RL² and PEARL sample whole trials until enough finish: a trial never finishes here
    "rl2": {"algo": "rl2", "rl2": {"episodes_per_trial": 2, "hidden_size": 8, "slots_per_worker": 8, "trials_per_update": 16}},
    "pearl": {"algo": "pearl"},
}


@pytest.mark.parametrize("algo", ["maml", "rl2", "pearl"])
def test_an_env_failing_at_every_step_stops_the_run_in_one_line_not_silently(algo, tmp_path, capsys):
    """Every episode dropped: the meta-batch run stops after workers.max_dropped_iterations
    iterations with a checkpoint; a stream run (whose sampler returns once too many trials of a
    call were dropped, instead of stepping forever) after as many rounds of calls. Was: a MAML run
    "training" on nothing with NaN returns to the end, exit 0; an RL² or PEARL run hanging."""
    cfg = yaml.safe_load(yaml.safe_dump(TINY_MAML))
    cfg["task"]["kwargs"].update(raise_rate=1.0)
    cfg["iterations"] = 6
    if algo != "maml":
        del cfg["maml"]
        cfg.update(TINY_STREAM[algo])
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(["train", str(path), "--serial", "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    what = "iterations" if algo == "maml" else "rounds of sampling calls"
    assert len(err) == 1 and err[0].startswith(f"metaray train: error: every episode of the last 3 {what} was dropped "
                                               "for env failures (last: exception: InjectedFault;"), err
    assert "(workers.max_dropped_iterations=3)" in err[0]
    if algo == "maml":
        assert [r["iteration"] for r in read_progress(run)] == [1, 2, 3] and latest_checkpoint(run).name == "iter-000003"
    else:
        assert "no iteration had completed" in err[0] and not run.exists()


# ----------------------------------------------------------------------------- process level
@pytest.fixture(scope="module")
def runtime(ray_local):
    return RayRuntime(address=None)  # joins the module's instance


def train(runtime, path, tmp_path, overrides=()):
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    trainer = Trainer(load_config(path, list(overrides)), run, runtime)
    return trainer, run


def test_a_worker_process_that_dies_is_restarted_and_its_tasks_rerun(runtime, tmp_path, capfd):
    path = config_file(tmp_path, crash_once_file=str(tmp_path / "crashed"))
    trainer, run = train(runtime, path, tmp_path)
    trainer.run()
    log = run / "driver.log"
    deadline = time.monotonic() + 60  # Ray's message about the death arrives on its own thread
    while "[ray]" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "[ray] A worker died" in log.read_text()  # Ray's own ~750-character line goes to the log,
    assert re.search(r"\[metaray\] rollout worker \d failed", log.read_text())
    shown = capfd.readouterr().out
    assert "(raylet)" not in shown and re.search(r"rollout worker \d failed", shown)  # ... one line of ours to the display
    rows = read_progress(run)
    assert (tmp_path / "crashed").exists()  # the crash happened
    assert [r["iteration"] for r in rows] == [1, 2, 3]  # every iteration accounted for
    assert all(r["num_tasks"] == 4 for r in rows)  # ... with its whole task set
    assert rows[-1]["worker_restarts_total"] == 1  # its replacement joins in the background:
    assert rows[-1]["workers_alive"] + rows[-1]["workers_pending"] == 2  # alive, or on its way
    assert rows[-1]["tasks_requeued_total"] == 2  # the dead worker's share of the meta-batch


def test_rl2_worker_death_is_survived(runtime, tmp_path):
    rl2_cfg = {"algo": "rl2", "seed": 2, "iterations": 3,
               "task": {"family": "faulty", "kwargs": {"horizon": 5}},
               "workers": {"num_workers": 2, "restart_delay_s": 0.0}, "metrics": {"tensorboard": False},
               "rl2": {"episodes_per_trial": 2, "hidden_size": 8, "slots_per_worker": 8, "trials_per_update": 16}}
    path = config_file(tmp_path, rl2_cfg, crash_once_file=str(tmp_path / "crashed"))
    trainer, run = train(runtime, path, tmp_path)
    trainer.run()
    rows = read_progress(run)
    assert (tmp_path / "crashed").exists()
    assert [r["iteration"] for r in rows] == [1, 2, 3] and rows[-1]["worker_restarts_total"] == 1


def test_when_restarts_run_out_the_run_stops_with_a_checkpoint(runtime, tmp_path):
    # every worker process dies after 400 env steps: iteration 1 completes (160 steps per worker)
    path = config_file(tmp_path, crash_every_steps=400)
    trainer, run = train(runtime, path, tmp_path, ["iterations=50", "workers.max_worker_restarts=1"])
    with pytest.raises(TrainingError, match=r"after 1 restarts \(workers.max_worker_restarts=1\); "
                                            r"a checkpoint was written \(iter-\d+\), continue with --resume"):
        trainer.run()
    assert latest_checkpoint(run) is not None
    assert read_progress(run)[-1]["worker_restarts_total"] >= 1


def test_the_health_probe_replaces_a_worker_killed_between_iterations(runtime, ray_local, tmp_path):
    path = config_file(tmp_path)
    trainer, run = train(runtime, path, tmp_path, ["iterations=2"])
    ray_local.kill(trainer.pool.handle(1), no_restart=True)
    trainer.run()
    rows = read_progress(run)
    assert [r["iteration"] for r in rows] == [1, 2]
    assert rows[0]["worker_restarts_total"] == 1 and rows[0]["tasks_requeued_total"] == 0  # found before dispatch


def test_a_stalled_worker_s_tasks_are_reissued_and_the_first_result_wins(runtime, tmp_path):
    path = config_file(tmp_path, hang_once_file=str(tmp_path / "hung"), hang_s=6.0)
    trainer, run = train(runtime, path, tmp_path, ["iterations=2", "workers.task_timeout_s=1",
                                                   "workers.env_step_timeout_s=null"])
    trainer.run()
    rows = read_progress(run)
    assert (tmp_path / "hung").exists()
    assert [r["iteration"] for r in rows] == [1, 2] and all(r["num_tasks"] == 4 for r in rows)
    assert rows[-1]["tasks_reissued_total"] == 2
    assert rows[-1]["duplicate_results_total"] == 1  # the stalled copy, discarded
    assert rows[-1]["worker_restarts_total"] == 0


def release(ray_local, *trainers):
    """Kill the actors of runners that stopped (a stopped driver's process takes them along),
    so the module's Ray instance has its CPUs for the next test."""
    for t in trainers:
        for handle in [*t.pool.workers.values(), *(h for h, _ in t.pool.pending.values()), t.learner, t.ps, t.control]:
            if handle is not None:
                ray_local.kill(handle)


class KillWorkerAfter:
    """An observer that kills a rollout worker for good once an iteration is recorded."""

    def __init__(self, ray_local, trainer, iteration: int, slot: int = 1):
        self.ray, self.trainer, self.iteration, self.slot = ray_local, trainer, iteration, slot

    def observe(self, record):
        if record["iteration"] == self.iteration:
            handle = self.trainer.pool.handle(self.slot)
            deadline = time.monotonic() + 60
            while True:  # until Ray knows it is dead (its calls then fail); a call racing the kill may still answer
                self.ray.kill(handle, no_restart=True)
                try:
                    self.ray.get(handle.ping.remote(), timeout=30)
                except Exception:
                    break
                assert time.monotonic() < deadline, "the killed worker still answers"

    def close(self):
        pass


def test_restarts_running_out_between_iterations_still_checkpoint_the_last_iteration(runtime, ray_local, tmp_path):
    """The health probe before iteration 3 finds a killed worker with no restarts left: the run
    stops with iteration 2 checkpointed (checkpoint.every would not have written one) and resumes."""
    path = config_file(tmp_path)
    trainer, run = train(runtime, path, tmp_path, ["iterations=4", "checkpoint.every=10", "workers.max_worker_restarts=0"])
    trainer.observers.insert(0, KillWorkerAfter(ray_local, trainer, iteration=2))
    with pytest.raises(TrainingError, match=r"after 0 restarts \(workers.max_worker_restarts=0\); "
                                            r"a checkpoint was written \(iter-000002\), continue with --resume"):
        trainer.run()
    assert latest_checkpoint(run).name == "iter-000002" and len(read_progress(run)) == 2
    release(ray_local, trainer)
    resumed = Trainer(load_config(path, ["iterations=4", "checkpoint.every=10"]), run, runtime, resume=True)
    resumed.run()
    release(ray_local, resumed)
    assert [r["iteration"] for r in read_progress(run)] == [1, 2, 3, 4]


def test_an_unexpected_error_in_the_driver_checkpoints_before_the_traceback(runtime, ray_local, tmp_path):
    class Broken:
        def observe(self, record):
            if record["iteration"] == 2:
                raise ZeroDivisionError("a bug")

        def close(self):
            pass

    path = config_file(tmp_path)
    trainer, run = train(runtime, path, tmp_path, ["iterations=4", "checkpoint.every=10"])
    trainer.observers.insert(0, Broken())
    with pytest.raises(ZeroDivisionError):
        trainer.run()
    release(ray_local, trainer)
    assert latest_checkpoint(run).name == "iter-000002"


def test_an_interrupt_while_the_learner_actor_updates_checkpoints_the_completed_iteration(runtime, ray_local, tmp_path):
    """On Ray the learner actor finishes an update the driver stopped waiting for: the interrupt
    checkpoint still holds the last completed iteration's learner (version = iteration)."""
    from metaray.cluster.checkpoint import load_checkpoint

    path = config_file(tmp_path)
    trainer, run = train(runtime, path, tmp_path, ["iterations=5", "checkpoint.every=10"])
    update = trainer._update

    def interrupted(batches):
        if trainer.counters["iteration"] == 2:
            ray_local.get(trainer.learner.update.remote(*batches))  # the actor is now at version 3
            raise KeyboardInterrupt
        return update(batches)

    trainer._update = interrupted
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    release(ray_local, trainer)
    rows = read_progress(run)
    _, state = load_checkpoint(latest_checkpoint(run))
    assert [r["iteration"] for r in rows] == [1, 2] and latest_checkpoint(run).name == "iter-000002"
    assert state["learner"]["version"] == state["policy_version"] == rows[-1]["policy_version"] == 2
    assert state["env_steps_total"] == rows[-1]["env_steps_total"]


def test_a_worker_in_restart_backoff_does_not_hold_up_the_others(runtime, ray_local, tmp_path):
    """Worker 1 is killed after iteration 1 and its replacement waits out a 30 s backoff: the
    next iterations run on worker 0 alone, each with its whole task set, instead of waiting."""
    path = config_file(tmp_path)
    trainer, run = train(runtime, path, tmp_path, ["iterations=4", "workers.restart_delay_s=30"])
    trainer.observers.insert(0, KillWorkerAfter(ray_local, trainer, iteration=1))
    trainer.run()
    release(ray_local, trainer)
    rows = read_progress(run)
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4] and all(r["num_tasks"] == 4 for r in rows)
    assert [r["workers_alive"] for r in rows] == [2, 1, 1, 1]
    assert [r["workers_pending"] for r in rows] == [0, 1, 1, 1]  # the replacement, in backoff
    assert rows[1]["worker_restarts_total"] == 1  # counted in the row of the iteration it happened in
    assert rows[-1]["tasks_requeued_total"] == 0  # found by the probe before the tasks went out


def test_a_stream_run_samples_on_while_a_replacement_waits(runtime, ray_local, tmp_path):
    rl2_cfg = {"algo": "rl2", "seed": 2, "iterations": 8, "task": {"family": "bandit", "kwargs": {"num_arms": 3}},
               "workers": {"num_workers": 2, "restart_delay_s": 30.0}, "metrics": {"tensorboard": False},
               "rl2": {"episodes_per_trial": 5, "hidden_size": 8, "slots_per_worker": 8, "trials_per_update": 8}}
    path = config_file(tmp_path, rl2_cfg)
    trainer, run = train(runtime, path, tmp_path)
    trainer.observers.insert(0, KillWorkerAfter(ray_local, trainer, iteration=1))
    trainer.run()
    release(ray_local, trainer)
    rows = read_progress(run)
    assert [r["iteration"] for r in rows] == list(range(1, 9))  # batches in flight at the kill may come first,
    assert rows[-1]["worker_restarts_total"] == 1  # then the failure is seen, and the rest come from worker 0
    assert rows[-1]["workers_alive"] == 1 and rows[-1]["workers_pending"] == 1
