"""Resuming from the command line as a user would: a failed resume changes nothing, a run resumes
with its own config, a damaged newest checkpoint is skipped (kept aside) by resume and eval."""

from __future__ import annotations

import importlib
import json
import socket
import sys
from pathlib import Path

import pytest
import yaml

from metaray.cli import main
from metaray.cluster.checkpoint import latest_checkpoint, list_checkpoints, read_progress
from tests.conftest import TINY_RL2


def tiny_run(tmp_path: Path, iterations: int = 2) -> tuple[Path, Path]:
    cfg = {**TINY_RL2, "iterations": iterations, "checkpoint": {"every": 1, "keep": 3}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(["train", str(path), "--serial", "--run-dir", str(run)]) == 0
    return path, run


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_a_failed_resume_leaves_the_run_directory_unchanged(tmp_path, capsys):
    path, run = tiny_run(tmp_path)
    before = snapshot(run)
    with socket.socket() as busy:  # the metrics port is taken: the resume fails after loading the checkpoint
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["train", str(path), "--serial", "--resume", "--run-dir", str(run), "--iterations", "5",
                     "--metrics-port", str(port), "--set", "metrics.host=127.0.0.1"])
    assert code == 2 and "metrics.port: cannot serve" in capsys.readouterr().err
    after = snapshot(run)
    assert after.keys() == before.keys() and all(after[k] == before[k] for k in before if k != "driver.json")
    assert yaml.safe_load((run / "config.yaml").read_text())["iterations"] == 2


def test_resume_without_a_config_uses_the_runs_own(tmp_path, capsys):
    path, run = tiny_run(tmp_path)
    changed = yaml.safe_load(path.read_text())
    changed["checkpoint"]["every"] = 5
    other = tmp_path / "changed.yaml"
    other.write_text(yaml.safe_dump(changed))
    capsys.readouterr()
    assert main(["train", str(other), "--serial", "--resume", "--run-dir", str(run), "--iterations", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "checkpoint.every (1 in the run, 5 now)" in err and f"metaray train --resume --run-dir {run}" in err
    assert len(err.splitlines()) == 1
    assert main(["train", "--serial", "--resume", "--run-dir", str(run), "--iterations", "3"]) == 0
    out = capsys.readouterr().out
    assert "resuming from checkpoints/iter-000002 (iteration 2); dropped 0 progress rows after it" in out
    assert [r["iteration"] for r in read_progress(run)] == [1, 2, 3]
    assert yaml.safe_load((run / "config.yaml").read_text())["iterations"] == 3
    assert main(["train", "--serial"]) == 2
    assert "train needs a config file (or --resume --run-dir DIR" in capsys.readouterr().err


def test_resume_may_change_how_faults_are_handled_but_not_what_is_computed(tmp_path, capsys):
    path, run = tiny_run(tmp_path)
    assert main(["train", str(path), "--serial", "--resume", "--run-dir", str(run), "--iterations", "3",
                 "--set", "workers.max_worker_restarts=7", "--set", "workers.task_timeout_s=5",
                 "--set", "workers.unplaceable_timeout_s=60"]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())["workers"]
    assert (saved["max_worker_restarts"], saved["task_timeout_s"], saved["unplaceable_timeout_s"]) == (7, 5.0, 60.0)
    capsys.readouterr()
    assert main(["train", str(path), "--serial", "--resume", "--run-dir", str(run), "--iterations", "4",
                 "--set", "workers.num_workers=3"]) == 2
    assert "workers.num_workers (2 in the run, 3 now)" in capsys.readouterr().err


def test_a_damaged_newest_checkpoint_is_skipped_kept_aside_and_named(tmp_path, capsys):
    path, run = tiny_run(tmp_path, iterations=3)
    newest = latest_checkpoint(run)
    assert newest.name == "iter-000003"
    weights = newest / "learner.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # torn by a crash or a full disk
    capsys.readouterr()
    assert main(["eval", str(run), "--json", "--num-tasks", "5"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["checkpoint"] == "iter-000002" and result["iteration"] == 2
    assert "skipped checkpoint iter-000003: " in captured.err and "damaged weights file" in captured.err
    assert newest.exists()  # eval reads, it does not move anything
    assert main(["train", str(path), "--serial", "--resume", "--run-dir", str(run), "--iterations", "4"]) == 0
    out = capsys.readouterr().out
    assert "skipped checkpoint iter-000003: " in out and "moved to checkpoints/damaged/iter-000003" in out
    assert "resuming from checkpoints/iter-000002 (iteration 2); dropped 1 progress rows after it" in out
    assert (run / "checkpoints" / "damaged" / "iter-000003" / "state.json").is_file()  # kept, not deleted
    assert [p.name for p in list_checkpoints(run)][-1] == "iter-000004"
    assert [r["iteration"] for r in read_progress(run)] == [1, 2, 3, 4]


@pytest.mark.parametrize("damage", ["state", "all"])
def test_resume_with_no_checkpoint_that_loads_is_one_line(tmp_path, capsys, damage):
    path, run = tiny_run(tmp_path)
    for ckpt in list_checkpoints(run):
        (ckpt / "state.json").write_text("{not json")
        if damage == "all":
            (ckpt / "learner.safetensors").write_bytes(b"")
    before = (run / "progress.jsonl").read_bytes()
    capsys.readouterr()
    assert main(["train", str(path), "--serial", "--resume", "--run-dir", str(run), "--iterations", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("has no checkpoint that loads (damaged ones were moved to checkpoints/damaged/)")
    assert (run / "progress.jsonl").read_bytes() == before


# ------------------------------------------------------------------ item 2: interrupt checkpoints


def committed_state(run: Path, iteration: int) -> tuple[dict, dict]:
    from metaray.cluster.checkpoint import load_checkpoint

    return load_checkpoint(run / "checkpoints" / f"iter-{iteration:06d}")


@pytest.mark.parametrize("where", ["after a batch arrived", "inside the learner's update"])
def test_an_interrupt_mid_iteration_checkpoints_the_last_completed_one(tmp_path, where):
    """Serial RL²: the interrupt lands after iteration 2 while iteration 3 is under way. The
    checkpoint must be iteration 2 as it was: its counters match progress row 2, the learner is
    version 2 with iteration 2's weights (not half an update), the scheduler as it was."""
    from metaray.cluster.checkpoint import load_checkpoint
    from metaray.cluster.config import load_config
    from metaray.cluster.runners import make_runner
    from metaray.cluster.runtime import SerialRuntime

    cfg = {**TINY_RL2, "iterations": 5, "checkpoint": {"every": 1, "keep": 5}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    run.mkdir()
    runner = make_runner(load_config(path), run, SerialRuntime())
    regular: dict = {}  # iteration 2's checkpoint as written when it ended (the interrupt writes it again)

    def interrupt() -> None:
        regular.update({k: v.copy() for k, v in committed_state(run, 2)[0].items()})
        raise KeyboardInterrupt

    if where == "after a batch arrived":
        receive = runner._receive

        def interrupted_receive(*args):
            receive(*args)
            if runner.counters["iteration"] == 2:
                interrupt()

        runner._receive = interrupted_receive
    else:
        learner = runner.learner.obj
        update = learner.impl.update

        def interrupted_update(payloads):
            stats = update(payloads)  # the weights and the optimizer have moved...
            if learner.version == 2:
                interrupt()  # ...but the update never completed
            return stats

        learner.impl.update = interrupted_update
    with pytest.raises(KeyboardInterrupt):
        runner.run()
    rows = read_progress(run)
    assert [r["iteration"] for r in rows] == [1, 2]
    tensors, state = load_checkpoint(latest_checkpoint(run))  # written on the interrupt, over it
    assert state["iteration"] == 2 and state["policy_version"] == 2 and state["learner"]["version"] == 2
    for key in ("env_steps_total", "episodes_total", "wall_time_s"):
        assert state[key] == pytest.approx(rows[-1][key], abs=1e-3), key
    policy = [k for k in tensors if k.startswith(("policy/", "optimizer/"))]
    assert policy and all((tensors[k] == regular[k]).all() for k in policy)


RULE = '''
import torch
from metaray.learner.maml import InnerOptimizer


class Rule(InnerOptimizer):
    def __init__(self, shapes, inner_lr):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(float(inner_lr)))
        EXTRA

    def update(self, params, grads, losses, memory):
        return {k: p - self.scale * grads[k] for k, p in params.items()}
'''


def test_a_checkpoint_that_no_longer_fits_the_users_code_is_one_line_and_changes_nothing(tmp_path, monkeypatch, capsys):
    """A user's inner optimizer gained a parameter after the run was written: resume and eval
    say which weights are missing, in one line, and leave the run as it was (was: a traceback
    from the learner's load_state_dict, or a RayTaskError)."""
    module = tmp_path / "metaray_test_users_rule.py"
    module.write_text(RULE.replace("EXTRA", "pass"))
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = {"algo": "maml", "seed": 0, "iterations": 1, "task": {"family": "point-nav", "kwargs": {"horizon": 5}},
           "checkpoint": {"every": 1}, "eval": {"num_tasks": 2},
           "maml": {"inner_optimizer": "metaray_test_users_rule:Rule", "meta_batch_size": 2, "episodes_per_task": 2,
                    "hidden_sizes": [4]}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(["train", str(path), "--serial", "--run-dir", str(run)]) == 0
    before = snapshot(run)
    module.write_text(RULE.replace("EXTRA", "self.momentum = torch.nn.Parameter(torch.zeros(()))"))
    monkeypatch.delitem(sys.modules, "metaray_test_users_rule")
    importlib.invalidate_caches()
    capsys.readouterr()
    assert main(["train", "--serial", "--resume", "--run-dir", str(run), "--iterations", "2"]) == 2
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("missing inner_optimizer.momentum" in line for line in err), err
    assert "its weights do not fit the policy this config builds" in err[0]
    after = snapshot(run)
    assert after.keys() == before.keys() and all(after[k] == before[k] for k in before if k != "driver.json")
