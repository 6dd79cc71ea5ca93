"""`metaray bench` end to end on local Ray (the smoke suite: 2 tiny configs x 2 seeds), an
interrupted bench resumed without re-running finished trials, and the suite's bad input."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
METARAY = [sys.executable, "-m", "metaray.cli"]
SMOKE = ROOT / "benchmarks" / "suites" / "smoke.yaml"
TRIALS = ["rl2-bandit-seed0", "rl2-bandit-seed1", "maml-point-nav-seed0", "maml-point-nav-seed1", "greedy-seed0",
          "greedy-seed1"]


def _bench(*args: str, tmp: Path) -> list[str]:
    return [*METARAY, "bench", *args, "--results-dir", str(tmp / "results"), "--runs-dir", str(tmp / "runs")]


def _only(pattern: str, where: Path) -> Path:
    found = sorted(where.glob(pattern))
    assert len(found) == 1, found
    return found[0]


def test_an_interrupted_smoke_bench_resumes_without_rerunning_finished_trials_and_reports(tmp_path):
    """Interrupted (Ctrl-C) as soon as a first trial has written its result, then `--resume`: the
    trials finished before keep their runs and results untouched, the rest finish, and the
    report has CIs."""
    proc = subprocess.Popen(_bench(str(SMOKE), tmp=tmp_path), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 400
    results = tmp_path / "results" / "smoke"

    def finished() -> list[Path]:
        return [p for p in results.glob("*/*-seed*.json")]

    while time.monotonic() < deadline and proc.poll() is None and not finished():
        time.sleep(0.2)  # polling for the condition, not sleeping to pass
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    os.killpg(proc.pid, signal.SIGINT)  # the whole process group, as a terminal's Ctrl-C
    first = proc.communicate(timeout=120)[0]
    with contextlib.suppress(ProcessLookupError):  # Ray's agents of that run, if any outlived it
        os.killpg(proc.pid, signal.SIGKILL)
    done_before = sorted(p.stem for p in finished())
    assert 1 <= len(done_before) < len(TRIALS), first[-3000:]

    out_dir = _only("*", results)
    runs_dir = _only("*", tmp_path / "runs" / "smoke")
    before = {name: (out_dir / f"{name}.json").read_bytes() for name in done_before}
    progress = {name: (runs_dir / name / "progress.jsonl").stat().st_mtime_ns for name in done_before
                if not name.startswith("greedy")}

    done = subprocess.run(_bench(str(SMOKE), "--resume", "--max-concurrent", "1", tmp=tmp_path), cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"{len(TRIALS)}/{len(TRIALS)} trials finished" in done.stdout
    # --max-concurrent holds after a restore (Tune's own limit does not survive one): one at a time
    spans = sorted((datetime.strptime(json.loads((runs_dir / f"{n}.commits.json").read_text())[-1]["started"],
                                      "%Y-%m-%dT%H:%M:%S%z").timestamp(), (out_dir / f"{n}.json").stat().st_mtime)
                   for n in TRIALS if n not in done_before)
    assert all(later[0] >= earlier[1] - 1.0 for earlier, later in zip(spans, spans[1:], strict=False)), spans
    for name in done_before:  # finished before the interruption: not trained, evaluated or written again
        assert (out_dir / f"{name}.json").read_bytes() == before[name]
        assert len(json.loads((runs_dir / f"{name}.commits.json").read_text())) == 1
    for name, mtime in progress.items():
        assert (runs_dir / name / "progress.jsonl").stat().st_mtime_ns == mtime

    for name in TRIALS:
        r = json.loads((out_dir / f"{name}.json").read_text())
        assert r["schema_version"] == 1 and r["suite"] == "smoke" and r["run"] + f"-seed{r['seed']}" == name
        assert r["commit"] and isinstance(r["dirty"], bool) and len(r["config_hash"]) == 16
        assert r["machine"]["cores"] >= 1 and r["packages"]["torch"] and r["packages"]["ray"]
        assert r["config"]["seed"] == r["seed"] and r["config"]["eval"]["num_tasks"] == 20
        assert len(r["per_task"]) == 20 and r["score"] == pytest.approx(sum(r["per_task"]) / 20, rel=1e-6)
        if name.startswith("greedy"):  # the classical baseline: evaluated on the same tasks, not trained
            assert r["algo"] == "baseline:greedy" and r["env_steps"] == 0 and r["curve"] == []
            continue
        assert r["env_steps"] > 0 and r["wall_time_s"] > 0 and r["iterations"] == r["config"]["iterations"]
        assert r["curve"] and r["curve"][-1][0] == r["env_steps"]
        load = r["commits"][-1]["load_1m"]  # what else had the machine while the last start trained
        assert load["samples"] >= 2 and 0 <= load["mean"] <= load["max"] and load["cores"] == os.cpu_count()
    # the two seeds of one run share the config hash (the seed is not part of it); the runs do not
    hashes = {name: json.loads((out_dir / f"{name}.json").read_text())["config_hash"] for name in TRIALS}
    assert hashes["rl2-bandit-seed0"] == hashes["rl2-bandit-seed1"] != hashes["maml-point-nav-seed0"]

    report = (out_dir / "report.md").read_text()
    summary = json.loads((out_dir / "report.summary.json").read_text())
    for name in ("rl2-bandit", "maml-point-nav", "greedy"):
        run = summary["runs"][name]
        assert run["seeds"] == [0, 1] and run["tasks"] == 20
        lo, hi = run["mean_ci"]
        assert lo <= run["mean"] <= hi
        assert f"| {name} |" in report
    assert summary["improvements"][0]["b"] == "greedy" and "P(a > b)" in report
    # the baseline and RL² were scored on the same 20 held-out bandits
    rl2, greedy = (json.loads((runs_dir / f"{n}-seed0.eval.json").read_text()) for n in ("rl2-bandit", "greedy"))
    assert [t["task_id"] for t in rl2["tasks"]] == [t["task_id"] for t in greedy["tasks"]] and len(rl2["tasks"]) == 20
    assert (out_dir / "report.png").stat().st_size > 10_000


def _write_suite(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load(SMOKE.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("change, message", [
    ({"epochs": 3}, "epochs: unknown key"),
    ({"runs": [{"name": "a", "config": "configs/nope.yaml"}], "compare": None}, "run 'a': config file not found"),
    ({"runs": [{"name": "a", "config": str(ROOT / "configs/quickstart.yaml"), "set": {"rl2.no_such_key": 1}}],
      "compare": None}, "run 'a': config error: rl2.no_such_key: unknown key"),
    ({"eval": {"metric": "accuracy"}}, "eval.metric"),
    ({"runs": [{"name": "b", "config": str(ROOT / "configs/quickstart.yaml"), "baseline": "psrl"}], "compare": None},
     "run 'b': baseline 'psrl' is not one of algo rl2 on bandit (available: random, greedy"),
    ({"compare": [["rl2-bandit", "ppo"]]}, "compare: 'ppo' is not a run of this suite"),
    ({"seeds": [0, 0]}, "seeds: a seed is listed twice"),
    ({"runs": [{"name": "r", "config": str(ROOT / "configs/quickstart.yaml"), "serial": False}], "compare": None},
     "run 'r': serial: false runs 2 rollout workers; set cpus to at least 2 (got 1)"),
    ({"runs": [{"name": "a b", "config": "configs/quickstart.yaml"}], "compare": None}, "runs.0.name"),
    ({"runs": [{"name": "big", "config": str(ROOT / "configs/quickstart.yaml"), "cpus": 512}], "compare": None},
     "run 'big' asks for 512 CPUs per trial; the Ray cluster has"),
    ({"algo": "rl2", "runs": None, "name": None, "seeds": None, "eval": None, "compare": None},
     "a training config (algo: rl2), not a suite: `metaray train` runs it"),
])
def test_a_bad_suite_is_one_line_and_writes_nothing(tmp_path, change, message):
    suite = _write_suite(tmp_path, **change)
    proc = subprocess.run(_bench(str(suite), tmp=tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("metaray bench: error:") and message in lines[0], proc.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "runs").exists()


def test_resume_with_nothing_to_resume_is_one_line(tmp_path):
    proc = subprocess.run(_bench(str(SMOKE), "--resume", tmp=tmp_path), cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "no interrupted bench of suite 'smoke'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_run_with_serial_false_trains_on_its_own_local_ray_instance(tmp_path):
    """Async sampling and policy lag need actors: such a trial starts its own local Ray (not the
    bench's cluster, whose CPUs it holds) and still writes its result."""
    suite = tmp_path / "ray.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "ray-trial", "seeds": [0], "eval": {"num_tasks": 10},
        "runs": [{"name": "rl2-async", "config": str(ROOT / "configs/quickstart.yaml"), "serial": False, "cpus": 2,
                  "iterations": 2, "set": {"rl2.trials_per_update": 128, "rl2.slots_per_worker": 64, "rl2.sync": False,
                                           "workers.num_workers": 1}}]}))
    done = subprocess.run(_bench(str(suite), tmp=tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = _only("*/rl2-async-seed0.log", tmp_path / "runs" / "ray-trial").read_text()
    assert "1 workers (started local Ray at" in log
    result = json.loads(_only("*/rl2-async-seed0.json", tmp_path / "results" / "ray-trial").read_text())
    assert result["iterations"] == 2 and result["config"]["rl2"]["sync"] is False


def test_a_trial_interrupted_before_its_first_checkpoint_starts_again_and_a_finished_one_is_not_rerun(tmp_path):
    """The run directory of a trial cut short before any checkpoint holds config.yaml and some
    progress but nothing to resume from: the trial trains it again from the start."""
    from metaray.bench.suite import load_suite_data
    from metaray.bench.trial import run_trial, trial_paths

    suite = load_suite_data({"name": "t", "seeds": [0], "eval": {"num_tasks": 10},
                             "runs": [{"name": "rl2", "config": str(ROOT / "configs/quickstart.yaml"), "iterations": 1,
                                       "set": {"rl2.trials_per_update": 64, "rl2.slots_per_worker": 64}}]})
    bench, results = tmp_path / "bench", tmp_path / "results"
    paths = trial_paths(bench, results, "rl2", 0)
    paths["run_dir"].mkdir(parents=True)
    (paths["run_dir"] / "config.yaml").write_text("algo: rl2\n")  # what an interrupted start leaves
    (paths["run_dir"] / "progress.jsonl").write_text('{"iteration": 1}\n')
    paths["commits"].write_text('[{"commit": "0000000000", "dirty": true, "started": "2026-01-01T00:00:00+0000"}]')
    reports: list[dict] = []
    result = run_trial(suite, "rl2", 0, bench, results, report=reports.append)
    assert result["iterations"] == 1 and result["env_steps"] > 0
    assert "--resume" not in paths["log"].read_text()
    assert len(result["commits"]) == 1 and result["commit"] != "0000000000"  # the discarded start is not the run's code
    again = run_trial(suite, "rl2", 0, bench, results, report=reports.append)  # finished: its file, no training
    assert again == result and reports[-1]["done_before"] is True
    assert paths["log"].read_text().count("$ metaray train") == 1


def test_a_sweep_runs_the_grid_over_the_seeds_and_reports(tmp_path):
    cmd = [*METARAY, "sweep", str(ROOT / "configs/quickstart.yaml"), "--seeds", "0", "--grid", "rl2.lr=0.001,0.003",
           "--iterations", "1", "--num-tasks", "10", "--set", "rl2.trials_per_update=64", "--set", "rl2.slots_per_worker=64",
           "--results-dir", str(tmp_path / "results"), "--runs-dir", str(tmp_path / "runs")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = _only("*", tmp_path / "results" / "sweep-quickstart")
    for lr in ("0.001", "0.003"):
        r = json.loads((out / f"lr-{lr}-seed0.json").read_text())
        assert r["config"]["rl2"]["lr"] == float(lr) and r["config"]["rl2"]["trials_per_update"] == 64
        assert r["iterations"] == 1 and len(r["per_task"]) == 10
    assert "| lr-0.001 |" in (out / "report.md").read_text()


@pytest.mark.parametrize("suite", sorted((ROOT / "benchmarks" / "suites").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_suite_validates_with_its_configs(suite):
    """A published table's suite must still load: its configs, overrides, baselines and metric."""
    from metaray.bench.suite import load_suite

    loaded = load_suite(suite)
    assert loaded.name == suite.stem and loaded.runs and loaded.seeds


def test_a_resume_can_lower_the_concurrency_and_raising_it_starts_tunes_bookkeeping_afresh(tmp_path, capsys):
    """Ray Tune restores an experiment's trial generator with the limit it started with: a lower
    --max-concurrent on --resume holds on a restore (the interrupted-bench test checks it end to
    end); a higher one (cores added) needs a new experiment over the same trials, said in one line,
    never silently dropped (that path is the one the --only test takes end to end)."""
    from metaray.bench.runner import CONCURRENCY_FILE, concurrency_on_resume

    (tmp_path / CONCURRENCY_FILE).write_text(json.dumps({"max_concurrent": 2}))
    assert concurrency_on_resume(tmp_path, None) == (2, False) and capsys.readouterr().err == ""
    assert concurrency_on_resume(tmp_path, 1) == (1, False) and capsys.readouterr().err == ""
    assert concurrency_on_resume(tmp_path, 2) == (2, False) and capsys.readouterr().err == ""
    assert concurrency_on_resume(tmp_path, 3) == (3, True)
    assert capsys.readouterr().err.strip() == (
        "metaray bench: --max-concurrent 3 on --resume, more than this bench started with (2): Tune's bookkeeping "
        "of it starts afresh so that 3 run at a time; finished trials stand, interrupted ones continue their run "
        "directories")
    (tmp_path / CONCURRENCY_FILE).write_text(json.dumps({"max_concurrent": None}))  # started unlimited
    assert concurrency_on_resume(tmp_path, 1) == (1, False) and capsys.readouterr().err == ""
    (tmp_path / CONCURRENCY_FILE).unlink()  # a bench from before the limit was recorded
    assert concurrency_on_resume(tmp_path, None) == (None, False)
    assert concurrency_on_resume(tmp_path, 1) == (1, True) and "(an unrecorded limit)" in capsys.readouterr().err


def test_more_trials_at_once_than_the_cores_hold_is_said_in_one_line():
    from metaray.bench.runner import oversubscription_note

    assert oversubscription_note(2, 2, 2) is None and oversubscription_note(1, 2, 8) is None
    line = oversubscription_note(4, 4, 2)
    assert line.startswith("metaray bench: --max-concurrent 4 asks for 4 CPUs on a machine with 2:")
    assert line.endswith("--max-concurrent 2 fits them") and "\n" not in line
    assert oversubscription_note(3, 6, 4).endswith("--max-concurrent 2 fits them")  # trials of 2 CPUs
    assert oversubscription_note(2, 8, 2).startswith("metaray bench: a trial asks for 4 CPUs on a machine with 2:")


def test_a_bench_whose_runs_dir_was_lost_resumes_from_its_result_files(tmp_path):
    """A machine replaced between sittings keeps the committed results but not the runs dir:
    --resume finishes the bench its result files belong to (the finished trials stand, untouched;
    the rest run, with the concurrency asked now), and refuses results of another suite version."""
    suite = tmp_path / "baselines.yaml"
    data = {"name": "baselines", "seeds": [0, 1], "eval": {"num_tasks": 10},
            "runs": [{"name": "greedy", "config": str(ROOT / "configs/quickstart.yaml"), "baseline": "greedy"}]}
    suite.write_text(yaml.safe_dump(data))
    first = subprocess.run(_bench(str(suite), tmp=tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out = _only("*", tmp_path / "results" / "baselines")
    kept = (out / "greedy-seed0.json").read_bytes()
    lost = json.loads((out / "greedy-seed1.json").read_text())
    (out / "greedy-seed1.json").unlink()  # interrupted before this trial finished
    subprocess.run(["rm", "-rf", str(tmp_path / "runs")], check=True)  # and the machine replaced

    again = subprocess.run(_bench(str(suite), "--resume", "--max-concurrent", "2", tmp=tmp_path), cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resuming {out.name} from its result files (1 of 2 trials finished" in again.stderr
    assert "2/2 trials finished" in again.stdout and _only("*", tmp_path / "results" / "baselines") == out
    assert (out / "greedy-seed0.json").read_bytes() == kept
    assert json.loads((out / "greedy-seed1.json").read_text())["score"] == lost["score"]

    subprocess.run(["rm", "-rf", str(tmp_path / "runs")], check=True)
    suite.write_text(yaml.safe_dump({**data, "seeds": [0, 1, 2]}))  # the suite changed since
    changed = subprocess.run(_bench(str(suite), "--resume", tmp=tmp_path), cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
    assert changed.returncode == 2 and len(changed.stderr.strip().splitlines()) == 1, changed.stderr
    assert "holds results of another version of suite 'baselines'" in changed.stderr


def test_only_some_runs_and_seeds_train_now_and_a_plain_resume_trains_the_rest(tmp_path):
    """`--only RUN --only-seeds K` trains that part of a suite into the bench (e.g. the row in doubt
    first); `--resume` without them then trains the other trials of the same bench, leaving the
    finished one untouched. A name or seed the suite does not have: one line, exit 2, nothing written."""
    suite = tmp_path / "baselines.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "baselines", "seeds": [0, 1], "eval": {"num_tasks": 10},
        "runs": [{"name": name, "config": str(ROOT / "configs/quickstart.yaml"), "baseline": name}
                 for name in ("greedy", "thompson")]}))
    for bad, message in ((["--only", "greedy,ucb"], "--only 'ucb': not a run of suite 'baselines' (runs: greedy, thompson)"),
                         (["--only-seeds", "0,7"], "--only-seeds 7: not a seed of suite 'baselines' (seeds: 0, 1)")):
        refused = subprocess.run(_bench(str(suite), *bad, tmp=tmp_path), cwd=ROOT, capture_output=True, text=True,
                                 timeout=120)
        assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [f"metaray bench: error: {message}"], refused.stderr
        assert not (tmp_path / "results").exists() and not (tmp_path / "runs").exists()

    part = subprocess.run(_bench(str(suite), "--only", "greedy", "--only-seeds", "0", tmp=tmp_path), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert part.returncode == 0, part.stdout[-3000:] + part.stderr[-3000:]
    assert "1/1 trials finished (1/4 of the suite)" in part.stdout
    assert "--resume trains the suite's other 3 trials" in part.stdout
    out = _only("*", tmp_path / "results" / "baselines")
    assert sorted(p.name for p in out.glob("*-seed*.json")) == ["greedy-seed0.json"]
    kept = (out / "greedy-seed0.json").read_bytes()

    rest = subprocess.run(_bench(str(suite), "--resume", "--max-concurrent", "1", tmp=tmp_path), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert rest.returncode == 0, rest.stdout[-3000:] + rest.stderr[-3000:]
    assert f"resuming {out.name} over 4 trials" in rest.stderr
    assert "4/4 trials finished;" in rest.stdout
    assert sorted(p.name for p in out.glob("*-seed*.json")) == [
        "greedy-seed0.json", "greedy-seed1.json", "thompson-seed0.json", "thompson-seed1.json"]
    assert (out / "greedy-seed0.json").read_bytes() == kept

    # cores were added: a resume asking more trials at once than the bench started with gets them
    # (Tune's restore would keep 1); a trial whose result is missing trains, the others stand
    lost = json.loads((out / "thompson-seed1.json").read_text())
    (out / "thompson-seed1.json").unlink()
    runs = _only("*", tmp_path / "runs" / "baselines")
    wider = subprocess.run(_bench(str(suite), "--resume", "--max-concurrent", "2", tmp=tmp_path), cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert wider.returncode == 0, wider.stdout[-3000:] + wider.stderr[-3000:]
    assert "--max-concurrent 2 on --resume, more than this bench started with (1)" in wider.stderr
    assert "4/4 trials finished;" in wider.stdout
    assert json.loads((out / "thompson-seed1.json").read_text())["score"] == lost["score"]
    assert (out / "greedy-seed0.json").read_bytes() == kept
    assert json.loads((runs / "concurrency.json").read_text())["max_concurrent"] == 2


def test_a_ctrl_c_of_the_bench_keeps_every_iteration_a_trial_had_completed(tmp_path):
    """A trial's `metaray train` runs under a Ray actor that Tune stops on Ctrl-C; Ray kills a
    worker's children as the worker exits. The training must still checkpoint its last completed
    iteration (it used to lose everything since the last periodic checkpoint)."""
    suite = tmp_path / "long.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "long", "seeds": [0], "eval": {"num_tasks": 5},
        "runs": [{"name": "maml", "config": str(ROOT / "configs/maml-trpo-point-nav.yaml"), "iterations": 500,
                  "set": {"learner.torch_threads": 1, "checkpoint.every": 1000, "metrics.tensorboard": False}}]}))
    proc = subprocess.Popen(_bench(str(suite), tmp=tmp_path), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def progress() -> list[Path]:
        return list((tmp_path / "runs" / "long").glob("*/maml-seed0/progress.jsonl"))

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not (
            progress() and len(progress()[0].read_text().splitlines()) >= 3):
        time.sleep(0.2)  # polling for the condition
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C
    out = proc.communicate(timeout=180)[0]
    run_dir = progress()[0].parent
    deadline = time.monotonic() + 120  # the training stops on its own once its actor is gone
    while time.monotonic() < deadline and json.loads((run_dir / "driver.json").read_text())["state"] == "running":
        time.sleep(0.2)
    last = json.loads(progress()[0].read_text().splitlines()[-1])["iteration"]
    assert json.loads((run_dir / "driver.json").read_text())["state"] == "interrupted", out[-3000:]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir())[-1] == f"iter-{last:06d}"


def test_a_training_runs_at_the_bench_sessions_scheduling_niceness():
    # a training starts in its own session, which with autogroup scheduling is its own scheduling
    # group; it must keep the bench's group niceness, or `nice`d benches take the cores from the
    # machine's other work (found when every trial of a niced bench ran in a group at niceness 0)
    from metaray.bench.trial import autogroup_nice

    if autogroup_nice() is None:
        pytest.skip("this kernel has no autogroup scheduling")
    script = (
        "import subprocess, sys\n"
        "from pathlib import Path\n"
        "from metaray.bench.trial import start_detached\n"
        "Path('/proc/self/autogroup').write_text('7')\n"
        "child = start_detached([sys.executable, '-c', 'print(open(\"/proc/self/autogroup\").read())'],\n"
        "                       stdout=subprocess.PIPE, text=True)\n"
        "print(Path('/proc/self/autogroup').read_text().strip(), '|', child.communicate()[0].strip())\n")
    done = subprocess.run([sys.executable, "-c", script], start_new_session=True, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    parent, child = (part.strip() for part in done.stdout.split("|"))
    assert parent.endswith("nice 7") and child.endswith("nice 7")
    assert parent.split()[0] != child.split()[0]  # its own group (its own session), at the bench's niceness


def test_a_run_is_judged_by_its_own_metric_where_it_names_one(tmp_path):
    """RL² beside MAML on Meta-World score post-adaptation success under different names
    (success_last, success_rate): a run's `metric` replaces the suite's for that run alone."""
    from metaray.bench.suite import SuiteError, load_suite
    from metaray.bench.trial import TrialFailed, run_trial

    quickstart = str(ROOT / "configs" / "quickstart.yaml")
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({
        "name": "metric-per-run", "seeds": [0], "eval": {"num_tasks": 20, "metric": "success_last"},
        "runs": [{"name": "greedy", "config": quickstart, "baseline": "greedy", "metric": "mean_return"},
                 {"name": "thompson", "config": quickstart, "baseline": "thompson"}]}))
    suite = load_suite(path)
    (tmp_path / "results").mkdir()
    result = run_trial(suite, "greedy", 0, tmp_path / "bench", tmp_path / "results")
    assert result["metric"] == "mean_return" and len(result["per_task"]) == 20
    assert result["score"] == pytest.approx(sum(result["per_task"]) / 20)
    with pytest.raises(TrialFailed, match="has no 'success_last'"):  # the suite's metric: bandits report no success
        run_trial(suite, "thompson", 0, tmp_path / "bench", tmp_path / "results")
    path.write_text(yaml.safe_dump({"name": "m", "seeds": [0], "runs": [
        {"name": "a", "config": quickstart, "metric": "accuracy"}]}))
    with pytest.raises(SuiteError, match=r"runs\.0\.metric"):
        load_suite(path)
