"""Shared fixtures: small configs, and one local Ray instance per test module that asks for it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

ROOT = Path(__file__).resolve().parents[1]

TINY_RL2 = {
    "algo": "rl2",
    "seed": 3,
    "iterations": 3,
    "task": {"family": "bandit", "kwargs": {"num_arms": 3}},
    "workers": {"num_workers": 2},
    "checkpoint": {"every": 2, "keep": 2},
    "eval": {"num_tasks": 20},
    "rl2": {"episodes_per_trial": 5, "hidden_size": 16, "slots_per_worker": 16, "trials_per_update": 32,
            "epochs": 2, "minibatches": 2},
}


def free_port() -> int:
    """A TCP port free on loopback right now (for servers the tests start)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_processes_of(temp_dir: str) -> None:
    """End the Ray processes started with this temp dir (`ray stop` would stop every Ray
    instance on the machine, other tests' included)."""
    import contextlib
    import signal
    import subprocess

    out = subprocess.run(["pgrep", "-f", temp_dir], capture_output=True, text=True).stdout.split()
    for pid in map(int, out):
        if pid != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_RL2))
    return path


PEARL_TINY = """algo: pearl
seed: 0
iterations: 6
task: {family: point-nav, kwargs: {horizon: 8}}
workers: {num_workers: 1}
checkpoint: {every: 3, replay_buffer: true}
eval: {num_tasks: 5}
pearl:
  num_train_tasks: 4
  meta_batch: 2
  batch_size: 16
  context_batch: 8
  hidden_size: 16
  encoder_hidden_size: 16
  prior_episodes: 1
  extra_posterior_episodes: 1
  slots_per_worker: 2
  rounds_per_update: 2
  warmup_steps: 20
  updates_per_step: 0.5
  eval_adaptation_episodes: 1
"""


@pytest.fixture
def pearl_config(tmp_path: Path) -> Path:
    """A PEARL run on point-nav small enough for a test (seconds in --serial)."""
    path = tmp_path / "pearl.yaml"
    path.write_text(PEARL_TINY)
    return path


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance for the whole module (starting one takes seconds)."""
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()
