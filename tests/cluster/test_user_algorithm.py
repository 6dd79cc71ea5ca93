"""The algorithm contract from outside: a user's own algorithm (examples/reinforce.py) runs through
the unchanged runtime (serial and local Ray) and `metaray eval`; a malformed `algo` or a class
missing part of the contract is one clear line; a run written before the contract existed
still resumes, exactly."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from metaray.cli import main
from metaray.cluster.checkpoint import read_progress
from metaray.core import AlgorithmError, get_algorithm

ROOT = Path(__file__).resolve().parents[2]
METARAY = [sys.executable, "-m", "metaray.cli"]
USER_ALGO = "examples.reinforce:Reinforce"
SMALL = {"tasks_per_iteration": 4, "episodes_per_task": 2, "hidden_sizes": [8], "lr": 0.05}


def user_config(tmp_path: Path, iterations: int, **algo_settings) -> Path:
    config = {"algo": USER_ALGO, "seed": 1, "iterations": iterations, "task": {"family": "point-nav"},
              "workers": {"num_workers": 2}, "checkpoint": {"every": iterations}, "eval": {"num_tasks": 8},
              "metrics": {"tensorboard": False}, "algo_settings": {**SMALL, **algo_settings}}
    path = tmp_path / "reinforce.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_user_algorithm_trains_serially_then_evaluates(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # `examples` is importable from the repository root
    run = tmp_path / "run"
    assert main(["train", str(user_config(tmp_path, 12)), "--serial", "--run-dir", str(run)]) == 0
    rows = read_progress(run)
    assert [r["iteration"] for r in rows] == list(range(1, 13))
    assert all(r["return_pre"] == r["return_post"] for r in rows)  # no adaptation: one stage
    assert {"loss", "grad_norm", "policy_version", "env_steps_total"} <= set(rows[-1])
    first, last = sum(r["return_post"] for r in rows[:3]) / 3, sum(r["return_post"] for r in rows[-3:]) / 3
    assert last > first + 20  # the initial Gaussian policy wanders off; REINFORCE pulls it towards the goals
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["algo"] == USER_ALGO and result["num_tasks"] == 8 and result["iteration"] == 12
    assert result["mean_return"] == pytest.approx(sum(t["return_post"] for t in result["tasks"]) / 8)


def test_user_algorithm_runs_on_local_ray_workers(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run([*METARAY, "train", str(user_config(tmp_path, 2)), "--run-dir", str(run)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 workers (started local Ray at" in proc.stdout
    rows = read_progress(run)
    assert [r["iteration"] for r in rows] == [1, 2] and rows[-1]["workers_alive"] == 2
    # both Ray workers ran tasks: 4 tasks x 2 episodes x at most 100 steps per iteration
    assert 0 < rows[-1]["env_steps_total"] <= 2 * 4 * 2 * 100


@pytest.mark.parametrize(("algo", "expected"), [
    ("ppo", "unknown algo 'ppo' (known: rl2, maml, adversarial, pearl, or 'package.module:ClassName')"),
    ("no_such_module:Algo", "cannot import algorithm module 'no_such_module'"),
    (":Algo", "must be a built-in name"),
    ("examples.reinforce:Nope", "module 'examples.reinforce' has no attribute 'Nope'"),
    ("examples.reinforce:make_policy", "is not a class"),
    ("examples.reinforce:ReinforceConfig", "lacks name, mode, Config, make_policy, make_sampler, make_learner, evaluate, loop_spec"),
])
def test_malformed_algo_is_one_line(tmp_path, monkeypatch, capsys, algo, expected):
    monkeypatch.chdir(ROOT)
    config = yaml.safe_load(user_config(tmp_path, 1).read_text())
    config["algo"] = algo
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path), "--serial", "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "run").exists()


def test_a_class_missing_part_of_the_contract_is_named(tmp_path, monkeypatch):
    (tmp_path / "half_algo.py").write_text(textwrap.dedent("""
        from pydantic import BaseModel

        class Settings(BaseModel):
            lr: float = 0.1

        class NoLearner:
            name, mode, Config = "half", "meta-batch", Settings
            def make_policy(self, *a): ...
            def make_sampler(self, *a): ...
            def evaluate(self, *a): ...
            def loop_spec(self, *a): ...

        class BadMode(NoLearner):
            mode = "sync"
            def make_learner(self, *a): ...

        class BadConfig(BadMode):
            mode, Config = "stream", dict
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(AlgorithmError, match=r"algorithm 'half_algo:NoLearner' lacks make_learner \(see metaray.core.Algorithm\)"):
        get_algorithm("half_algo:NoLearner")
    with pytest.raises(AlgorithmError, match="mode must be one of meta-batch, stream, got 'sync'"):
        get_algorithm("half_algo:BadMode")
    with pytest.raises(AlgorithmError, match="Config must be a pydantic BaseModel class"):
        get_algorithm("half_algo:BadConfig")


def test_user_algorithm_settings_are_validated_by_its_config(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    path = user_config(tmp_path, 1, lr=-1.0)
    assert main(["train", str(path), "--serial", "--run-dir", str(tmp_path / "run")]) == 2
    assert "algo_settings.lr: input should be greater than 0 (got -1.0)" in capsys.readouterr().err


def test_a_run_written_before_the_algorithm_contract_resumes_exactly(tmp_path, capsys):
    """tests/data/maml-run-afd66b3 was trained for 2 iterations by commit afd66b3 (before the
    contract); the same code ran 3 iterations uninterrupted (…-uninterrupted-progress.jsonl).
    Resumed here, iteration 3 must be what the old code computed."""
    run = tmp_path / "run"
    shutil.copytree(ROOT / "tests" / "data" / "maml-run-afd66b3", run)
    assert main(["train", str(ROOT / "tests" / "data" / "maml-run-afd66b3.yaml"), "--serial", "--resume",
                 "--run-dir", str(run), "--iterations", "3"]) == 0
    resumed = read_progress(run)
    lines = (ROOT / "tests" / "data" / "maml-run-afd66b3-uninterrupted-progress.jsonl").read_text().splitlines()
    uninterrupted = [json.loads(line) for line in lines]
    assert [r["iteration"] for r in resumed] == [1, 2, 3]
    for key in ("return_pre", "return_post", "grad_norm", "env_steps_total", "policy_version"):
        assert resumed[2][key] == uninterrupted[2][key], key
    # the surrogate and KL after the step: since issue 27 the line search computes the inner
    # steps by the hand-written backward pass instead of autograd (same θ, float32 rounding)
    for key in ("meta_loss", "kl"):
        assert resumed[2][key] == pytest.approx(uninterrupted[2][key], rel=1e-5), key


def variant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, original: str, replacement: str, iterations: int) -> tuple[Path, str]:
    """examples/reinforce.py with `original` replaced (a user's mistake), as its own module (one per
    test case: modules and algorithms are cached by name), and a config naming it."""
    source = (ROOT / "examples" / "reinforce.py").read_text()
    assert original in source
    module = f"my_reinforce_{tmp_path.name}"
    (tmp_path / f"{module}.py").write_text(source.replace(original, replacement))
    monkeypatch.syspath_prepend(str(tmp_path))
    config = yaml.safe_load(user_config(tmp_path, iterations).read_text())
    config["algo"] = f"{module}:Reinforce"
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, module


@pytest.mark.parametrize(("returned", "written"), [
    ('{"loss": loss, "grad_norm": grad_norm, "steps": np.int64(3), "ok": True}',  # tensors and numpy scalars: numbers
     {"loss": float, "grad_norm": float, "steps": int, "ok": float}),
    ('{"loss": loss.item(), "note": "diverged"}', None),
    ('[loss.item()]', None),
])
def test_an_algorithms_statistics_become_numbers_or_are_refused_in_one_line(tmp_path, monkeypatch, capsys, returned, written):
    """update() should return numbers; one-element tensors and numpy scalars are taken as such,
    anything else stops the run in one line naming the key (was: a traceback from the JSON of the
    progress row, and a run directory left half-written)."""
    original = 'return {"loss": loss.item(), "grad_norm": float(grad_norm), "num_tasks": float(len(results))}'
    path, module = variant(tmp_path, monkeypatch, original, f"return {returned}", 2)
    run = tmp_path / "run"
    code = main(["train", str(path), "--serial", "--run-dir", str(run)])
    if written is not None:
        assert code == 0
        row = read_progress(run)[-1]
        assert {k: type(row[k]) for k in written} == written
        return
    assert code == 2 and not run.exists()
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("metaray train: error: algorithm 'reinforce': update() returned ")
    assert ("'note': 'diverged', not a number" in err) if "note" in returned else ("a list, not a dict of numbers" in err)


@pytest.mark.parametrize(("returned", "message"), [
    ('[{"score": 1.0} for r in sampler.collect(tasks, 0)]', "returned rows whose task_id are not the tasks' (8 of 8 have none)"),
    ('[{"task_id": r.task_id, "return_post": "high"} for r in sampler.collect(tasks, 0)]', "has return_post 'high', not a number"),
    ('[{"task_id": r.task_id, **r.metrics} for r in sampler.collect(tasks, 0)][:2]', "returned 2 rows for 8 tasks (one per task)"),
])
def test_evaluation_rows_that_break_the_contract_are_one_line(tmp_path, monkeypatch, capsys, returned, message):
    """evaluate() returns one row per held-out task with its task_id and a numeric headline
    return; otherwise `metaray eval` says so in one line (was: a KeyError or numpy TypeError
    traceback, or, with too few rows, a mean over them reported as over all the tasks)."""
    original = 'return [{"task_id": r.task_id, **r.metrics} for r in sampler.collect(tasks, 0)]'
    path, module = variant(tmp_path, monkeypatch, original, f"return {returned}", 1)
    assert main(["train", str(path), "--serial", "--run-dir", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"metaray eval: error: algorithm '{module}:Reinforce': evaluate()"), err
    assert message in err[0] and not (tmp_path / "run" / "eval.json").exists()


@pytest.mark.parametrize(("returned", "message"), [
    ("LoopSpec(tasks_per_iteration=0)", "algorithm 'reinforce': loop_spec(): LoopSpec.tasks_per_iteration must be an int >= 1, got 0"),
    ('{"tasks_per_iteration": 4}', "algorithm 'reinforce': loop_spec() returned a dict, not a metaray.core.LoopSpec"),
])
def test_a_loop_spec_a_runner_cannot_use_is_one_line_before_anything_starts(tmp_path, monkeypatch, capsys, returned, message):
    """Was: an IndexError in the user's update (0 tasks) or an AttributeError in the runner."""
    original = "return LoopSpec(tasks_per_iteration=config.tasks_per_iteration)"
    path, module = variant(tmp_path, monkeypatch, original, f"return {returned}", 1)
    assert main(["train", str(path), "--run-dir", str(tmp_path / "run")]) == 2  # local Ray asked: refused before it starts
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"metaray train: error: {message}"] and not (tmp_path / "run").exists()


@pytest.mark.parametrize(("returned", "message"), [
    ("results[:1]", r"its sampler's collect\(\) returned 1 results for 2 tasks: one TaskResult per task it was given, "
                    r"with that task's task_id"),  # each of the 2 workers is given 2 of the 4 tasks
    ("None", r"its sampler's collect\(\) returned NoneType, not a list of metaray\.core\.TaskResult"),
])
def test_a_sampler_returning_part_of_the_meta_batch_is_one_line(tmp_path, monkeypatch, capsys, returned, message):
    """Was: training silently on one task of four, or a TypeError traceback."""
    original = '''{"return_pre": ret, "return_post": ret}))
        return results
'''
    path, module = variant(tmp_path, monkeypatch, original, original.replace("return results", f"return {returned}"), 1)
    assert main(["train", str(path), "--serial", "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert re.fullmatch(f"metaray train: error: algorithm 'reinforce': {message}", err[-1]), err
    assert not (tmp_path / "run").exists()
