"""Exact checkpoint/resume: in serial mode N iterations in one go equal k + `--resume` + N - k,
bit for bit (weights, optimizer, scheduler, worker and learner RNG, RL² trials in flight), for a
stream algorithm (RL², whose workers carry trials across calls and across checkpoints) and a
meta-batch one (MAML, with the scheduler), whether the straight run checkpointed at k or not and
whether the stop was the end of `--iterations k` or an interrupt; a checkpoint interrupted while
being written leaves the previous one usable."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import TINY_RL2
from safetensors.numpy import load_file

from metaray.actors import RolloutWorker
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
# a learned inner optimizer (issue 30): its weights travel with the policy, its Adam state with the learner's
MAML_LSTM = {**MAML, "maml": {**MAML["maml"], "inner_optimizer": "lstm", "num_inner_steps": 2}}
# a user's own inner optimizer (examples/per_tensor_sgd.py), named in the config
MAML_USERS = {**MAML, "maml": {**MAML["maml"], "inner_optimizer": "examples.per_tensor_sgd:PerTensorSGD",
                               "inner_optimizer_kwargs": {"max_scale": 4.0}}}
# meta adversarial imitation: MAML's loop plus demos drawn by the worker and the discriminator's Adam
ADV = {**MAML, "algo": "adversarial", "maml": None,
       "adversarial": {"meta_batch_size": 4, "episodes_per_task": 3, "hidden_sizes": [16], "disc_hidden_sizes": [8],
                       "disc_inner_steps": 3, "num_demos": 2, "num_query_demos": 2}}
RL2 = {**TINY_RL2, "iterations": 4, "checkpoint": {"every": 2, "keep": 3}, "metrics": {"tensorboard": False}}
# Goals next to where one full-speed diagonal step lands: many episodes end early, so RL² slots
# are at different steps of their trials whenever a sampling call returns.
RL2_NAV = {**RL2, "task": {"family": "point-nav", "kwargs": {"horizon": 10, "goal_low": 0.09, "goal_high": 0.1}},
           "rl2": {**TINY_RL2["rl2"], "episodes_per_trial": 2}}


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in rows]


def train(config: Path, run: Path, *args: str) -> None:
    assert main(["train", str(config), "--serial", "--run-dir", str(run), *args]) == 0


@pytest.mark.parametrize("base", [RL2, MAML, MAML_LSTM, MAML_USERS, ADV],
                         ids=["rl2", "maml", "maml-lstm-inner-optimizer", "maml-users-inner-optimizer", "adversarial"])
def test_resumed_serial_run_equals_the_uninterrupted_one_bit_for_bit(base, tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({k: v for k, v in base.items() if v is not None}))
    train(config, tmp_path / "straight")
    train(config, tmp_path / "resumed", "--iterations", "2")
    train(config, tmp_path / "resumed", "--iterations", "4", "--resume")

    straight, resumed = read_progress(tmp_path / "straight"), read_progress(tmp_path / "resumed")
    assert [r["iteration"] for r in resumed] == [1, 2, 3, 4]
    assert comparable(resumed) == comparable(straight)
    a = load_file(str(latest_checkpoint(tmp_path / "straight") / "learner.safetensors"))
    b = load_file(str(latest_checkpoint(tmp_path / "resumed") / "learner.safetensors"))
    assert a.keys() == b.keys() and any(k.startswith("optimizer/") for k in a) == (base is not MAML)
    assert any("inner_optimizer" in k for k in a) == (base in (MAML_LSTM, MAML_USERS))
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    sa = json.loads((latest_checkpoint(tmp_path / "straight") / "state.json").read_text())
    sb = json.loads((latest_checkpoint(tmp_path / "resumed") / "state.json").read_text())
    assert sa["scheduler"] == sb["scheduler"] and sa["workers"] == sb["workers"]


@pytest.mark.parametrize("base", [RL2, RL2_NAV, MAML], ids=["rl2-bandit", "rl2-point-nav", "maml"])
def test_resume_from_a_checkpoint_the_straight_run_never_wrote_is_exact(base, tmp_path):
    """Stopped after k=3 of N=5 iterations (the end-of-run checkpoint, one the straight run with
    checkpoint.every=5 never writes), then resumed: the same run, row for row and tensor for
    tensor. RL² workers keep their trials in flight through the checkpoint."""
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({**base, "iterations": 5, "checkpoint": {"every": 5, "keep": 3}}))
    train(config, tmp_path / "straight")
    train(config, tmp_path / "resumed", "--iterations", "3")
    train(config, tmp_path / "resumed", "--iterations", "5", "--resume")

    straight, resumed = read_progress(tmp_path / "straight"), read_progress(tmp_path / "resumed")
    assert [r["iteration"] for r in resumed] == [1, 2, 3, 4, 5]
    assert comparable(resumed) == comparable(straight)
    a, b = latest_checkpoint(tmp_path / "straight"), latest_checkpoint(tmp_path / "resumed")
    assert a.name == b.name == "iter-000005"
    ta, tb = load_file(str(a / "learner.safetensors")), load_file(str(b / "learner.safetensors"))
    assert ta.keys() == tb.keys()
    for key in ta:  # weights, optimizer, learner and worker random state, RL² trials in flight
        assert np.array_equal(ta[key], tb[key]), key
    sa, sb = (json.loads((c / "state.json").read_text()) for c in (a, b))
    assert sa["scheduler"] == sb["scheduler"] and sa["workers"] == sb["workers"]


@pytest.mark.parametrize("base, call", [(RL2_NAV, "sample"), (MAML, "collect")], ids=["rl2", "maml"])
def test_a_run_interrupted_while_sampling_resumes_into_the_uninterrupted_run(base, call, tmp_path, monkeypatch):
    """Ctrl-C lands while a worker samples (its state has moved past the last completed
    iteration, whose checkpoint is written on the way out): the resumed run is still the same run."""
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({**base, "iterations": 4, "checkpoint": {"every": 4, "keep": 3}}))
    train(config, tmp_path / "straight")
    real, calls = getattr(RolloutWorker, call), []

    def interrupted(self, *args):
        out = real(self, *args)  # the sampler's state moves on; the result is never seen
        calls.append(1)
        if len(calls) == 5:  # in the third iteration
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(RolloutWorker, call, interrupted)
    assert main(["train", str(config), "--serial", "--run-dir", str(tmp_path / "resumed")]) == 130
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path / "resumed").name == "iter-000002"
    train(config, tmp_path / "resumed", "--resume")

    assert comparable(read_progress(tmp_path / "resumed")) == comparable(read_progress(tmp_path / "straight"))
    a = load_file(str(latest_checkpoint(tmp_path / "straight") / "learner.safetensors"))
    b = load_file(str(latest_checkpoint(tmp_path / "resumed") / "learner.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


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
