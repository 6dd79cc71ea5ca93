"""Exact checkpoint/resume: in serial mode N iterations in one go equal N/2 + `--resume` + N/2,
bit for bit (weights, optimizer, scheduler, worker and learner RNG), for a stream algorithm
(RL², whose workers carry trials across calls) and a meta-batch one (MAML, with the scheduler);
a checkpoint interrupted while being written leaves the previous one usable."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import TINY_RL2
from safetensors.numpy import load_file

from metaray.cli import main
from metaray.cluster import checkpoint as ckpt
from metaray.cluster.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    read_progress,
)

TIME_KEYS = {"wall_time_s", "env_steps_per_s", "sample_s_mean", "learner_step_s", "sampling_s"}
MAML = {
    "algo": "maml", "seed": 5, "iterations": 4, "task": {"family": "point-nav", "kwargs": {"horizon": 20}},
    "workers": {"num_workers": 2}, "checkpoint": {"every": 2, "keep": 3}, "metrics": {"tensorboard": False},
    "maml": {"meta_batch_size": 4, "episodes_per_task": 3, "hidden_sizes": [16]},
}
RL2 = {**TINY_RL2, "iterations": 4, "checkpoint": {"every": 2, "keep": 3}, "metrics": {"tensorboard": False}}


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in rows]


def train(config: Path, run: Path, *args: str) -> None:
    assert main(["train", str(config), "--serial", "--run-dir", str(run), *args]) == 0


@pytest.mark.parametrize("base", [RL2, MAML], ids=["rl2", "maml"])
def test_resumed_serial_run_equals_the_uninterrupted_one_bit_for_bit(base, tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(base))
    train(config, tmp_path / "straight")
    train(config, tmp_path / "resumed", "--iterations", "2")
    train(config, tmp_path / "resumed", "--iterations", "4", "--resume")

    straight, resumed = read_progress(tmp_path / "straight"), read_progress(tmp_path / "resumed")
    assert [r["iteration"] for r in resumed] == [1, 2, 3, 4]
    assert comparable(resumed) == comparable(straight)
    a = load_file(str(latest_checkpoint(tmp_path / "straight") / "learner.safetensors"))
    b = load_file(str(latest_checkpoint(tmp_path / "resumed") / "learner.safetensors"))
    assert a.keys() == b.keys() and any(k.startswith("optimizer/") for k in a) == (base is RL2)
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    sa = json.loads((latest_checkpoint(tmp_path / "straight") / "state.json").read_text())
    sb = json.loads((latest_checkpoint(tmp_path / "resumed") / "state.json").read_text())
    assert sa["scheduler"] == sb["scheduler"] and sa["workers"] == sb["workers"]


def test_a_checkpoint_write_killed_halfway_leaves_the_previous_one_usable(tiny_config, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(tiny_config, run, "--iterations", "2", "--set", "checkpoint.every=1")
    before = latest_checkpoint(run)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # as if the process were stopped in the middle of the write

    monkeypatch.setattr(ckpt, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(run, 3, {"x": np.zeros(2)}, {"iteration": 3}, keep=5)
    assert latest_checkpoint(run) == before  # no half-written iter-000003, no temp folder left
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    tensors, state = load_checkpoint(before)
    assert state["iteration"] == 2 and tensors


@pytest.mark.parametrize("damage", ["truncate", "foreign", "pickle"])
def test_a_damaged_or_foreign_checkpoint_is_a_clear_error(tiny_config, tmp_path, damage, capsys):
    run = tmp_path / "run"
    train(tiny_config, run, "--iterations", "2", "--set", "checkpoint.every=1")
    newest = latest_checkpoint(run)
    weights = newest / "learner.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "foreign":
        (newest / "state.json").write_text(json.dumps({"format": "someone-else/9", "iteration": 2}))
    else:  # a pickle where the weights should be: must never be unpickled
        import pickle

        weights.write_bytes(pickle.dumps({"policy/w": np.zeros(3)}))
    with pytest.raises(CheckpointError):
        load_checkpoint(newest)
    assert main(["train", str(tiny_config), "--serial", "--run-dir", str(run), "--iterations", "3", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint" in err[0]
    shutil.rmtree(run)
