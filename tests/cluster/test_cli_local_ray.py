"""`metaray train` in local mode: the command starts its own Ray instance, as the README does."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
METARAY = [sys.executable, "-m", "metaray.cli"]


def test_quickstart_config_in_local_ray_then_eval(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run(
        [*METARAY, "train", str(ROOT / "configs" / "quickstart.yaml"), "--run-dir", str(run), "--iterations", "2",
         "--set", "rl2.trials_per_update=256", "--set", "eval.num_tasks=50"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 workers (started local Ray at" in proc.stdout
    rows = [json.loads(line) for line in (run / "progress.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2] and rows[-1]["workers_alive"] == 2
    ev = subprocess.run([*METARAY, "eval", str(run), "--json"], capture_output=True, text=True, timeout=120)
    assert ev.returncode == 0, ev.stderr
    result = json.loads(ev.stdout)
    assert result["num_tasks"] == 50 and 0 <= result["mean_return"] <= 10


def test_user_family_by_module_path_runs_on_ray_workers(tmp_path):
    """A family named 'module:Class' from the user's working directory, no change to metaray."""
    shutil.copy(ROOT / "tests" / "tasks" / "user_family_helper.py", tmp_path / "my_tasks.py")
    config = {
        "algo": "rl2", "iterations": 2, "task": {"family": "my_tasks:CoinFamily", "kwargs": {"bias": 0.5}},
        "rl2": {"episodes_per_trial": 2, "hidden_size": 8, "slots_per_worker": 8, "trials_per_update": 16},
    }
    (tmp_path / "coin.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.run([*METARAY, "train", "coin.yaml", "--run-dir", "run"], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "progress.jsonl").read_text().splitlines()]
    assert rows[-1]["iteration"] == 2
    assert rows[-1]["env_steps_total"] >= 2 * 16 * 2 * 3  # 2 updates x 16 trials x 2 episodes x 3 steps


FAILING_RULE = '''
import torch
from metaray.learner.maml import InnerOptimizer


class Rule(InnerOptimizer):
    def __init__(self, shapes, inner_lr):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(float(inner_lr)))

    def update(self, params, grads, losses, memory):
        raise ValueError("my rule failed")
'''


@pytest.mark.parametrize("mode", [["--serial"], []], ids=["serial", "local-ray"])
def test_an_error_in_the_users_own_code_is_one_line_naming_where(tmp_path, mode):
    """A user's inner optimizer that raises on the rollout workers: one line with the user's file,
    line, function and message (from the Ray task's remote traceback too), exit 1, no run
    directory left (was: a traceback, or a Ray error line without the message)."""
    (tmp_path / "my_rule.py").write_text(FAILING_RULE)
    config = {"algo": "maml", "iterations": 2, "task": {"family": "point-nav", "kwargs": {"horizon": 5}},
              "maml": {"inner_optimizer": "my_rule:Rule", "meta_batch_size": 2, "episodes_per_task": 2, "hidden_sizes": [4]}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.run([*METARAY, "train", "cfg.yaml", "--run-dir", "run", *mode], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    line = 1 + FAILING_RULE.splitlines().index('        raise ValueError("my rule failed")')
    assert last == (f"metaray train: error in your code at {tmp_path / 'my_rule.py'}:{line} (update): ValueError: my rule "
                    "failed (METARAY_DEBUG=1 shows the traceback)"), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()
