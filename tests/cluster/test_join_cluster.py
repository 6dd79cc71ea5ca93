"""`metaray train --address auto` joins a cluster started with `ray start`, as operators run it.

Ray 2.60 turns token auth on by default: clients of a `ray start` cluster need RAY_AUTH_MODE=token
and the cluster's token (in ~/.ray/ or RAY_AUTH_TOKEN), which `ray start --head` writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import free_port, kill_processes_of

RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture(scope="module")
def ray_head():
    temp_dir = tempfile.mkdtemp(prefix="mr-", dir="/tmp")
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    subprocess.run(
        [RAY, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=3",
         f"--temp-dir={temp_dir}", "--include-dashboard=false", "--disable-usage-stats"],
        check=True, capture_output=True, env=env, timeout=120,
    )
    yield f"127.0.0.1:{port}", env
    kill_processes_of(temp_dir)


def test_train_joins_running_cluster_with_address_auto(ray_head, tiny_config, tmp_path):
    address, env = ray_head
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "metaray.cli", "train", str(tiny_config), "--address", "auto", "--run-dir", str(run)],
        capture_output=True, text=True, timeout=300, env={**env, "RAY_ADDRESS": address},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    port = address.rsplit(":", 1)[1]
    assert "joined Ray cluster at " in proc.stdout and f":{port})" in proc.stdout  # not a new local one
    rows = [json.loads(line) for line in (run / "progress.jsonl").read_text().splitlines()]
    assert rows[-1]["iteration"] == 3 and rows[-1]["workers_alive"] == 2


MAML_LONG = {
    "algo": "maml", "seed": 0, "iterations": 40, "task": {"family": "point-nav", "kwargs": {"horizon": 50}},
    "workers": {"num_workers": 2, "restart_delay_s": 0.5}, "checkpoint": {"every": 1000},
    "metrics": {"tensorboard": False},
    "maml": {"meta_batch_size": 8, "episodes_per_task": 8, "hidden_sizes": [32]},
}


def wait_for(predicate, timeout_s: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"training exited with {proc.returncode} while waiting for {what}: {proc.stdout.read()[-2000:]}")
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}")


def progress(run: Path) -> list[dict]:
    from metaray.cluster.checkpoint import read_progress

    return read_progress(run)


def test_losing_a_node_mid_run_restarts_its_workers_and_the_run_completes(ray_head, tmp_path):
    """A second node joins the head; workers spread over both; the second node's raylet is killed
    mid-run (on one machine `ray stop` would stop both nodes)."""
    address, env = ray_head
    node_dir = tempfile.mkdtemp(prefix="mr2-", dir="/tmp")
    subprocess.run([RAY, "start", f"--address={address}", "--num-cpus=2", "--node-ip-address=127.0.0.1",
                    f"--temp-dir={node_dir}", "--disable-usage-stats"],
                   check=True, capture_output=True, env=env, timeout=120)
    try:
        config = tmp_path / "cfg.yaml"
        config.write_text(yaml.safe_dump(MAML_LONG))
        run = tmp_path / "run"
        proc = subprocess.Popen([sys.executable, "-m", "metaray.cli", "train", str(config), "--address", "auto",
                                 "--run-dir", str(run)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**env, "RAY_ADDRESS": address})
        wait_for(lambda: len(progress(run)) >= 3, 180, "three iterations", proc)
        raylets = [int(p) for p in subprocess.run(["pgrep", "-f", f"raylet.*{node_dir}"], capture_output=True,
                                                  text=True).stdout.split()]
        assert raylets, "the second node's raylet was not found"
        for pid in raylets:
            os.kill(pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:]
        rows = progress(run)
        assert [r["iteration"] for r in rows] == list(range(1, 41))  # every iteration accounted for
        assert all(r["num_tasks"] == 8 for r in rows)
        assert rows[-1]["worker_restarts_total"] >= 1
        assert rows[-1]["workers_alive"] + rows[-1]["workers_pending"] == 2  # replacements join in the background
    finally:
        for pid in map(int, subprocess.run(["pgrep", "-f", node_dir], capture_output=True, text=True).stdout.split()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def start_local_run(tmp_path, workers):
    """`metaray train` of a long MAML run in local mode (its own Ray instance), in a subprocess."""
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({**MAML_LONG, "iterations": 100000, "workers": workers}))
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    proc = subprocess.Popen([sys.executable, "-m", "metaray.cli", "train", str(config), "--run-dir", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    return run, proc, env


def test_scale_resizes_a_running_local_job_and_status_shows_it(tmp_path):
    run, proc, env = start_local_run(tmp_path, {"num_workers": 1, "max_workers": 3})
    metaray = [sys.executable, "-m", "metaray.cli"]
    try:
        wait_for(lambda: progress(run), 120, "the first iteration", proc)
        up = subprocess.run([*metaray, "scale", str(run), "--workers", "3"], capture_output=True, text=True,
                            env=env, timeout=120)
        assert up.returncode == 0 and "rollout workers 1 -> 3" in up.stdout, up.stderr[-2000:]
        wait_for(lambda: progress(run)[-1]["workers_alive"] == 3, 120, "3 workers", proc)
        too_many = subprocess.run([*metaray, "scale", str(run), "--workers", "4"], capture_output=True, text=True,
                                  env=env, timeout=120)
        assert too_many.returncode == 2 and "at most workers.max_workers=3" in too_many.stderr
        down = subprocess.run([*metaray, "scale", str(run), "--workers", "1"], capture_output=True, text=True,
                              env=env, timeout=120)
        assert down.returncode == 0
        wait_for(lambda: progress(run)[-1]["workers_alive"] == 1, 120, "1 worker", proc)
        status = subprocess.run([*metaray, "status", str(run), "--json"], capture_output=True, text=True, timeout=60)
        assert json.loads(status.stdout)["workers_alive"] == 1 and json.loads(status.stdout)["state"] == "running"
    finally:
        proc.send_signal(signal.SIGTERM)  # handled like Ctrl-C: checkpoint, exit
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-2000:]
    driver = json.loads((run / "driver.json").read_text())
    assert driver["state"] == "interrupted" and (run / "checkpoints").is_dir()
    rows = progress(run)
    assert [r["iteration"] for r in rows] == list(range(1, len(rows) + 1))


def test_scale_refuses_serial_and_finished_runs(tiny_config, tmp_path):
    run = tmp_path / "run"
    metaray = [sys.executable, "-m", "metaray.cli"]
    subprocess.run([*metaray, "train", str(tiny_config), "--serial", "--run-dir", str(run)], check=True,
                   capture_output=True, timeout=300)
    done = subprocess.run([*metaray, "scale", str(run), "--workers", "3"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "is not running (state: finished)" in done.stderr
    driver = json.loads((run / "driver.json").read_text())
    (run / "driver.json").write_text(json.dumps({**driver, "state": "running"}))
    serial = subprocess.run([*metaray, "scale", str(run), "--workers", "3"], capture_output=True, text=True, timeout=60)
    assert serial.returncode == 2 and "runs without Ray (--serial)" in serial.stderr
    assert len(serial.stderr.strip().splitlines()) == 1


def test_scale_past_the_local_instances_cpus_is_refused_with_what_to_set(tmp_path):
    """Local mode sizes its Ray instance for the run: one worker + the learner on 2 CPUs. A second
    worker would wait for a CPU forever, so `scale` refuses it and says what to set instead."""
    run, proc, env = start_local_run(tmp_path, {"num_workers": 1})
    metaray = [sys.executable, "-m", "metaray.cli"]
    try:
        wait_for(lambda: progress(run), 120, "the first iteration", proc)
        cpus = max(os.cpu_count() or 1, 2)  # what `metaray train` gives a local instance for 1 worker + learner
        fit = cpus - 1
        refused = subprocess.run([*metaray, "scale", str(run), "--workers", str(fit + 1)], capture_output=True,
                                 text=True, env=env, timeout=120)
        assert refused.returncode == 2, refused.stdout
        assert refused.stderr.strip().endswith(
            f"the run's local Ray instance has {cpus} CPUs, so at most {fit} rollout workers fit beside the learner "
            f"(1 CPU); start the run with workers.max_workers: {fit + 1} to size it for {fit + 1}")
        status = json.loads(subprocess.run([*metaray, "status", str(run), "--json"], capture_output=True, text=True,
                                           timeout=60).stdout)
        assert status["workers_target"] == 1 and status["workers_pending"] == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
