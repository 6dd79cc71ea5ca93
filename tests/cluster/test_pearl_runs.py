"""PEARL through `metaray train/eval` in --serial: exact resume with the replay saved, a warm
start without it, and bad input refused at start with one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from metaray.cli import main
from metaray.cluster.checkpoint import latest_checkpoint, read_progress


@pytest.fixture
def tiny(pearl_config: Path) -> Path:
    return pearl_config


def train(config: Path, run_dir: Path, *extra: str) -> int:
    return main(["train", str(config), "--serial", "--run-dir", str(run_dir), *extra])


def checkpoint_tensors(run_dir: Path, prefix: str) -> dict[str, np.ndarray]:
    tensors = load_file(str(latest_checkpoint(run_dir) / "learner.safetensors"))
    return {k: v for k, v in tensors.items() if k.startswith(prefix)}


def same_rows(a: list[dict], b: list[dict]) -> None:
    timing = {"wall_time_s", "env_steps_per_s", "learner_step_s", "sample_s_mean", "sampling_s"}
    for x, y in zip(a, b, strict=True):
        assert {k: v for k, v in x.items() if k not in timing} == {k: v for k, v in y.items() if k not in timing}


def test_a_resumed_run_with_its_replay_continues_exactly(tiny, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train(tiny, straight) == 0
    assert train(tiny, resumed, "--iterations", "3") == 0
    replay = checkpoint_tensors(resumed, "replay/")
    assert any(k.startswith("replay/rl/") for k in replay) and any(k.startswith("replay/context/") for k in replay)
    assert train(tiny, resumed, "--resume") == 0
    a, b = checkpoint_tensors(straight, "policy/"), checkpoint_tensors(resumed, "policy/")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    rows = read_progress(straight)
    assert rows[-1]["grad_steps_total"] > 0 and "critic_loss" in rows[-1]
    same_rows(rows, read_progress(resumed))


def test_without_the_replay_a_resume_starts_with_empty_buffers(tiny, tmp_path):
    run = tmp_path / "run"
    assert train(tiny, run, "--iterations", "3", "--set", "checkpoint.replay_buffer=false") == 0
    assert checkpoint_tensors(run, "replay/") == {}
    assert train(tiny, run, "--resume", "--set", "checkpoint.replay_buffer=false") == 0
    rows = read_progress(run)
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[3]["replay_transitions"] < rows[2]["replay_transitions"]  # a warm start: buffers refill
    assert rows[3]["env_steps_total"] > rows[2]["env_steps_total"]


def test_eval_reports_the_adaptation_curve(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(tiny, run, "--iterations", "3") == 0
    assert main(["eval", str(run)]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["num_tasks"] == 5 and len(result["episode_return_means"]) == 2
    assert result["return_pre"] == pytest.approx(result["episode_return_means"][0], abs=1e-3)
    assert all(len(t["episode_returns"]) == 2 for t in result["tasks"])
    # `metaray plot` adds the adaptation curve as a fourth panel
    import matplotlib.image

    assert main(["plot", str(run), "-o", str(tmp_path / "with.png")]) == 0
    (run / "eval.json").unlink()
    assert main(["plot", str(run), "-o", str(tmp_path / "without.png")]) == 0
    with_curve, without = (matplotlib.image.imread(tmp_path / n) for n in ("with.png", "without.png"))
    assert with_curve.shape[1] > without.shape[1] * 1.25


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["BANDIT"], "algo pearl needs a continuous (Box) action space"),
        (["--set", "pearl.buffer_size_per_task=2000000000"],
         "pearl.buffer_size_per_task: 4 tasks x 2000000000 transitions x 29 B"),
        (["--set", "pearl.meta_batch=9"], "pearl.meta_batch: 9 tasks per step but only 4 train tasks"),
        (["--set", "pearl.nope=1"], "pearl.nope: unknown key"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tiny, tmp_path, extra, fragment):
    work = tmp_path / "work"
    work.mkdir()
    if extra == ["BANDIT"]:  # a family with discrete actions
        tiny.write_text(tiny.read_text().replace("{family: point-nav, kwargs: {horizon: 8}}", "{family: bandit}"))
        extra = []
    proc = subprocess.run([sys.executable, "-m", "metaray.cli", "train", str(tiny), "--serial", *extra],
                          capture_output=True, text=True, cwd=work, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], proc.stderr
    assert list(work.iterdir()) == []


def test_pearl_learns_to_use_the_context_on_point_nav(tmp_path):
    """The shipped point-nav config, 30 updates (9,000 env steps, about a minute): episodes acting
    on the posterior over the task's context come to beat those acting on the prior, and their
    return rises. (Seeded, serial: the same numbers on every run of this machine kind.)"""
    config = Path(__file__).resolve().parents[2] / "configs" / "pearl-point-nav.yaml"
    run = tmp_path / "run"
    assert train(config, run, "--iterations", "30", "--set", "checkpoint.every=100") == 0
    rows = read_progress(run)
    prior = np.mean([r["return_prior"] for r in rows[15:]])
    post = np.mean([r["return_post"] for r in rows[15:]])
    first = np.mean([r["return_post"] for r in rows[:10]])
    assert post > prior + 1.5, (prior, post)  # measured: -11.6 prior, -7.3 posterior
    assert post > first + 1.5, (first, post)  # measured: -10.4 over the first 10 updates
