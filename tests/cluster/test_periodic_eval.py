"""`eval.every`: held-out evaluation while training. It scores what `metaray eval` would score at
that iteration, lands in progress.jsonl and RUN_DIR/evals/, and leaves the training itself
untouched (the same steps, bit for bit, as a run without it)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from conftest import TINY_RL2
from safetensors.numpy import load_file

from metaray.cli import main
from metaray.cluster.checkpoint import latest_checkpoint, read_progress

TIME_KEYS = {"wall_time_s", "env_steps_per_s", "sample_s_mean", "learner_step_s", "sampling_s"}
MAML = {
    "algo": "maml", "seed": 5, "iterations": 4, "task": {"family": "point-nav", "kwargs": {"horizon": 20}},
    "workers": {"num_workers": 2}, "checkpoint": {"every": 2, "keep": 3}, "metrics": {"tensorboard": False},
    "eval": {"num_tasks": 6},
    "maml": {"meta_batch_size": 4, "episodes_per_task": 3, "hidden_sizes": [16]},
}
RL2 = {**TINY_RL2, "iterations": 4, "checkpoint": {"every": 2, "keep": 3}, "metrics": {"tensorboard": False},
       "eval": {"num_tasks": 6}}


@pytest.mark.parametrize("base", [MAML, RL2], ids=["maml", "rl2"])
def test_held_out_evaluation_while_training_scores_like_metaray_eval_and_changes_nothing(base, tmp_path, capsys):
    for name, every in (("plain", 0), ("evaluated", 3)):
        config = tmp_path / f"{name}.yaml"
        # the evaluated run also scores each task against its expert and random actions (eval.normalise)
        config.write_text(yaml.safe_dump({**base, "eval": {**base["eval"], "every": every, "normalise": every > 0}}))
        assert main(["train", str(config), "--serial", "--run-dir", str(tmp_path / name)]) == 0
    plain, evaluated = read_progress(tmp_path / "plain"), read_progress(tmp_path / "evaluated")
    # every 3 iterations and at the last (4)
    assert [r["iteration"] for r in evaluated if "heldout_mean_return" in r] == [3, 4]
    assert sorted(p.name for p in (tmp_path / "evaluated" / "evals").iterdir()) == ["iter-000003.json", "iter-000004.json"]
    assert all(np.isfinite(r["heldout_normalised_score"]) for r in evaluated if "heldout_mean_return" in r)
    strip = TIME_KEYS | {"heldout_mean_return", "heldout_return_pre", "heldout_eval_s", "heldout_normalised_score"}
    assert [{k: v for k, v in r.items() if k not in strip} for r in evaluated] == \
        [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in plain]
    a = load_file(str(latest_checkpoint(tmp_path / "plain") / "learner.safetensors"))
    b = load_file(str(latest_checkpoint(tmp_path / "evaluated") / "learner.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    # the last one is what `metaray eval` says of the final checkpoint: same weights, same tasks
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "evaluated"), "--json"]) == 0
    by_eval = json.loads(capsys.readouterr().out)
    last = json.loads((tmp_path / "evaluated" / "evals" / "iter-000004.json").read_text())
    assert last["mean_return"] == by_eval["mean_return"] == evaluated[-1]["heldout_mean_return"]
    assert last["normalised_score"] == by_eval["normalised_score"] == evaluated[-1]["heldout_normalised_score"]
    assert [t for t in last["tasks"]] == by_eval["tasks"] and last["env_steps_total"] == evaluated[-1]["env_steps_total"]
    first = json.loads((tmp_path / "evaluated" / "evals" / "iter-000003.json").read_text())
    assert first["iteration"] == 3 and first["env_steps_total"] == evaluated[2]["env_steps_total"]
    if base is MAML:  # continuous returns: the policy moved between the two
        assert first["mean_return"] != last["mean_return"]
    # `metaray plot` draws the held-out points with the training curves
    assert main(["plot", str(tmp_path / "evaluated")]) == 0 and (tmp_path / "evaluated" / "curves.png").stat().st_size > 0


def test_eval_every_must_not_be_negative(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({**MAML, "eval": {"every": -1}}))
    assert main(["train", str(config), "--serial", "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "eval.every" in err and "Traceback" not in err and not (tmp_path / "run").exists()
