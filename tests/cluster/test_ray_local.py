"""The runtime on a real local Ray instance: actors, object store, parameter server."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from metaray.actors import RolloutWorker
from metaray.cluster.checkpoint import read_progress
from metaray.cluster.config import ConfigError, load_config
from metaray.cluster.runtime import RayRuntime
from metaray.cluster.trainer import Trainer
from metaray.learner.learner import Learner
from metaray.tasks import make_family, make_vector_env

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("ray_local")


def test_rl2_trains_on_two_ray_workers(tiny_config, tmp_path):
    config = load_config(tiny_config, ["iterations=4"])
    runtime = RayRuntime(address=None)  # joins the module's instance
    run = tmp_path / "run"
    run.mkdir()
    trainer = Trainer(config, run, runtime)
    last = trainer.run()
    rows = read_progress(run)
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4]
    assert last["policy_version"] == 4 and last["workers_alive"] == 2
    assert rows[-1]["env_steps_total"] >= 4 * config.rl2.trials_per_update * config.rl2.episodes_per_trial
    assert json.loads((run / "checkpoints" / "iter-000004" / "state.json").read_text())["iteration"] == 4
    ps_stats = runtime.get(trainer.ps.stats.remote())
    assert ps_stats == {"version": 4, "publishes": 5, "stale_publishes": 0}  # v0 + 4 updates
    # two separate worker processes, each fetching a version only when it is new
    pids = {runtime.get(w.sample.options(num_returns=2).remote(1)[1])["pid"] for w in trainer.pool.workers.values()}
    assert len(pids) == 2


@pytest.mark.parametrize("memory", ["lstm", "snail", "mann"])
def test_every_memory_trains_on_ray_workers(tiny_config, tmp_path, memory):
    config = load_config(tiny_config, ["iterations=2", f"rl2.memory={memory}", "rl2.context_length=5"])
    trainer = Trainer(config, tmp_path, RayRuntime(address=None))
    trainer.run()
    rows = read_progress(tmp_path)
    assert [r["iteration"] for r in rows] == [1, 2] and all(np.isfinite(r["policy_loss"]) for r in rows)


def test_workers_share_one_object_store_copy_per_version(ray_local, tiny_config):
    config = load_config(tiny_config)
    runtime = RayRuntime(address=None)
    ps, variables = runtime.parameter_server()
    family = make_family("bandit", {"num_arms": 3})
    probe = make_vector_env(family, family.sample(1, np.random.default_rng(0)), seed=0)
    spaces = probe.single_observation_space, probe.single_action_space
    learner = runtime.spawn(Learner, "rl2", config.rl2.model_dump(), *spaces, variables, 0, "cpu", 1)
    assert runtime.get(learner.get_version.remote()) == 0  # v0 published at start
    v0, (ref_a,) = ray_local.get(ps.latest.remote(-1))
    _, (ref_b,) = ray_local.get(ps.latest.remote(-1))
    assert v0 == 0 and ref_a == ref_b  # one object-store copy, handed out by reference
    workers = [runtime.spawn(RolloutWorker, i, "rl2", config.rl2.model_dump(), "bandit", {"num_arms": 3}, i, variables)
               for i in range(2)]
    assert runtime.get([w.sync_weights.remote() for w in workers]) == [0, 0]
    assert runtime.get([w.sync_weights.remote() for w in workers]) == [0, 0]  # nothing newer: no fetch
    assert [s["weight_fetches"] for s in runtime.get([w.stats.remote() for w in workers])] == [1, 1]
    fetched = ray_local.get(ref_a)
    local = variables.latest(-1)[1]
    assert all(np.array_equal(fetched[k], local[k]) for k in fetched)
    # a stale publish is rejected and counted
    assert ray_local.get(ps.publish.remote(0, [ref_a])) is False
    assert ray_local.get(ps.stats.remote())["stale_publishes"] == 1


def test_batches_older_than_max_policy_lag_are_dropped(tiny_config, tmp_path):
    config = load_config(tiny_config, ["iterations=4", "rl2.max_policy_lag=0", "rl2.sync=false"])
    trainer = Trainer(config, tmp_path, RayRuntime(address=None))
    trainer.run()
    rows = read_progress(tmp_path)
    assert len(rows) == 4
    assert all(r["policy_lag_max"] == 0 for r in rows)  # nothing stale reached the learner
    assert rows[-1]["dropped_batches_total"] == trainer.counters["dropped_batches_total"] > 0  # asynchronous: some were


def test_sync_workers_wait_for_each_update_so_no_batch_is_stale(tiny_config, tmp_path):
    config = load_config(tiny_config, ["iterations=4", "rl2.max_policy_lag=0", "rl2.sync=true"])
    Trainer(config, tmp_path, RayRuntime(address=None)).run()
    rows = read_progress(tmp_path)
    assert len(rows) == 4 and all(r["policy_lag_max"] == 0 for r in rows)
    assert rows[-1]["dropped_batches_total"] == 0  # nothing sampled with old weights, nothing wasted


def test_cuda_learner_without_a_gpu_is_a_clear_error(tiny_config, tmp_path):
    config = load_config(tiny_config, ["learner.device=cuda"])
    with pytest.raises(ConfigError, match="learner.device: 'cuda' asked for, but the cluster has no GPU"):
        Trainer(config, tmp_path, RayRuntime(address=None))


# a learned rule (lstm) and a user's own, imported by name on the Ray workers (issue 30)
@pytest.mark.parametrize("inner_optimizer", ["sgd", "lstm", "examples.per_tensor_sgd:PerTensorSGD"])
def test_maml_meta_iterations_on_two_ray_workers(tmp_path, inner_optimizer):
    config = load_config(ROOT / "configs" / "maml-trpo-point-nav.yaml",
                         ["iterations=2", "maml.meta_batch_size=4", "maml.episodes_per_task=4", "checkpoint.every=1",
                          f"maml.inner_optimizer={inner_optimizer}"])
    trainer = Trainer(config, tmp_path, RayRuntime(address=None))
    last = trainer.run()
    rows = read_progress(tmp_path)
    assert [r["iteration"] for r in rows] == [1, 2]
    for row in rows:
        assert {"return_pre", "return_post", "sampling_s", "learner_step_s"} <= set(row)
        assert row["return_pre"] < 0 and row["return_post"] < 0 and row["policy_lag_max"] == 0  # sync: never stale
    # 4 tasks x 4 episodes x (pre + post) x 100 steps at most, per iteration
    assert 0 < last["env_steps_total"] <= 2 * 4 * 4 * 2 * 100
    state = json.loads((tmp_path / "checkpoints" / "iter-000002" / "state.json").read_text())
    assert "scheduler" in state and state["policy_version"] == 2
    if inner_optimizer != "sgd":  # the learned rule was trained and travelled to the workers
        assert all(row["inner_lr_grad_norm"] > 0 for row in rows)
        weights = load_file(str(tmp_path / "checkpoints" / "iter-000002" / "learner.safetensors"))
        assert any(k.startswith("policy/inner_optimizer.") for k in weights)


@pytest.mark.parametrize("sync", [True, False])
def test_pearl_trains_on_two_ray_workers_with_its_replay_in_the_learner(pearl_config, tmp_path, sync):
    config = load_config(pearl_config, ["iterations=4", "workers.num_workers=2", f"pearl.sync={str(sync).lower()}",
                                "checkpoint.every=2"])
    trainer = Trainer(config, tmp_path / "run", RayRuntime(address=None))
    last = trainer.run()
    rows = read_progress(tmp_path / "run")
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4] and last["workers_alive"] == 2
    # the learner holds every transition it learned from (no ring is full yet) and learns once warm;
    # async: a batch that arrived after the last update, or was too old, is counted but not learned
    held, sampled = rows[-1]["replay_transitions"], rows[-1]["env_steps_total"]
    assert held == sampled if sync else 0 < held <= sampled
    assert rows[-1]["grad_steps_total"] > 0 and np.isfinite(rows[-1]["critic_loss"])
    if sync:
        assert all(r["policy_lag_max"] <= 1 for r in rows)  # rounds straddling an update: one version
    state = json.loads((tmp_path / "run" / "checkpoints" / "iter-000004" / "state.json").read_text())
    assert set(state["replay"]["rl"]) and set(state["replay"]["context"]) <= set(state["replay"]["rl"])


def test_without_an_address_ray_address_is_joined_and_nothing_else(ray_local, tmp_path):
    """No --address: RAY_ADDRESS (what `ray job submit` sets) is joined, num_cpus and all; a Ray
    instance merely running on the machine is not (ray.init(None) would join one started with
    `ray start` and then refuse num_cpus: the bench failed so beside a leftover instance)."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    probe = ("import ray; from metaray.cluster.runtime import RayRuntime; r = RayRuntime(None, num_cpus=1); "
             "print(int(ray.cluster_resources()['CPU']), r.started_here)")
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    joined = subprocess.run([sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert joined.returncode == 0, joined.stderr[-2000:]
    assert joined.stdout.split()[-2:] == ["4", "False"]  # the module's 4-CPU instance, not a new 1-CPU one

    # a stale `ray start` record (what a killed `ray start` leaves in Ray's temp dir) is not followed
    ray_tmp = Path(tempfile.mkdtemp(prefix="mr", dir="/tmp"))  # short: Ray's socket paths have a length limit
    try:
        (ray_tmp / "ray").mkdir()
        (ray_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:9")
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": str(ray_tmp)}
        own = subprocess.run([sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True,
                             timeout=120)
        assert own.returncode == 0, own.stderr[-2000:]
        assert own.stdout.split()[-2:] == ["1", "True"]
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
