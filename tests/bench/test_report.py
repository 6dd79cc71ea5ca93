"""Suites, sweeps and the statistics of `metaray report`, without training anything."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from metaray.bench.report import (
    ReportError,
    aggregate,
    index_markdown,
    load_results,
    log_axes,
    write_report,
)
from metaray.bench.suite import SuiteError, bench_overrides, load_suite, sweep_suite

ROOT = Path(__file__).resolve().parents[2]

BASE = {"schema_version": 1, "suite": "t", "algo": "rl2", "family": "bandit", "metric": "mean_return",
        "commit": "abc", "dirty": False, "date": "2026-12-05", "env_steps": 1000, "wall_time_s": 10.0,
        "machine": {"cores": 2, "cpu": "x", "gpu": None, "memory_gib": 1.0}, "packages": {"torch": "2"},
        "eval": {"split": "test", "num_tasks": 50, "seed": 1}, "curve": [[500, 5.0, 1.0], [1000, 10.0, 2.0]]}


def _results(run: str, seeds: list[int], centre: float, spread: float = 1.0, tasks: int = 50) -> list[dict]:
    out = []
    for seed in seeds:
        rng = np.random.default_rng(seed + 1000 * len(run))
        per_task = (centre + spread * rng.standard_normal(tasks)).tolist()
        out.append({**copy.deepcopy(BASE), "run": run, "seed": seed, "per_task": per_task, "score": float(np.mean(per_task))})
    return out


def test_aggregate_gives_the_mean_iqm_and_intervals_over_seeds_and_tasks():
    results = _results("good", [0, 1, 2], 10.0) + _results("bad", [0, 1, 2], 5.0)
    summary = aggregate(results, compare=[("good", "bad"), ("bad", "good")], reps=500)
    good = summary["runs"]["good"]
    all_scores = np.array([r["per_task"] for r in results if r["run"] == "good"])
    assert good["mean"] == pytest.approx(all_scores.mean())
    lo, hi = good["mean_ci"]
    assert lo < good["mean"] < hi and hi - lo < 1.0  # 150 samples with std 1
    assert good["iqm_ci"][0] < good["iqm"] < good["iqm_ci"][1]
    assert good["seeds"] == [0, 1, 2] and good["tasks"] == 50
    p_good, p_bad = summary["improvements"]
    assert p_good["p"] == pytest.approx(1.0) and p_bad["p"] == pytest.approx(0.0)


def test_one_seed_has_no_interval_and_different_task_sets_fall_back_to_seed_scores():
    summary = aggregate(_results("one", [0], 3.0) + _results("two", [0, 1], 1.0), compare=[("one", "two")], reps=100)
    assert summary["runs"]["one"]["mean_ci"] is None and summary["runs"]["two"]["mean_ci"] is not None
    assert summary["improvements"][0]["p"] == pytest.approx(1.0) and summary["improvements"][0]["ci"] is None
    mixed = _results("m", [0], 3.0, tasks=50) + _results("m", [1], 3.0, tasks=40)
    assert aggregate(mixed, reps=100)["runs"]["m"]["tasks"] == 1


def test_report_files_and_bad_result_files(tmp_path, capsys):
    for r in _results("a", [0, 1], 1.0) + _results("b", [0, 1], 2.0):
        (tmp_path / f"{r['run']}-seed{r['seed']}.json").write_text(json.dumps(r))
    (tmp_path / "notes.json").write_text("{}")  # not a result: skipped
    paths = write_report([tmp_path], compare=[("b", "a")])
    text = paths["markdown"].read_text()
    assert "| a | rl2 / bandit | 2 |" in text  # results without a benchmark field: the family and "| b | a |" in text
    assert paths["plot"].stat().st_size > 10_000
    assert len(load_results([tmp_path])) == 4  # the report's own summary is not read back as a result

    from metaray.cli import main  # a misspelt run in --compare: one line, the report not rewritten
    before = paths["markdown"].read_bytes()
    assert main(["report", str(tmp_path), "--compare", "b,c"]) == 2
    assert capsys.readouterr().err.strip() == "metaray report: error: --compare: 'c' is not a run in these results (runs: a, b)"
    assert paths["markdown"].read_bytes() == before

    (tmp_path / "future.json").write_text(json.dumps({**_results("c", [0], 1.0)[0], "schema_version": 99}))
    with pytest.raises(ReportError, match="result schema 99"):
        load_results([tmp_path])
    with pytest.raises(ReportError, match="no bench results"):
        load_results([tmp_path / "notes.json"])
    with pytest.raises(ReportError, match="no such file"):
        load_results([tmp_path / "missing"])


def test_the_smoke_suite_resolves_its_configs_and_passes_seed_and_eval_to_train():
    suite = load_suite(ROOT / "benchmarks" / "suites" / "smoke.yaml")
    assert [t["run"] for t in suite.trials()] == ["rl2-bandit"] * 2 + ["maml-point-nav"] * 2 + ["greedy"] * 2
    assert suite.run("greedy").baseline == "greedy"
    run = suite.run("rl2-bandit")
    assert Path(run.config).is_absolute() and Path(run.config).is_file()
    args = bench_overrides(suite, run, seed=1)
    assert "seed=1" in args and "eval.num_tasks=20" in args and "iterations=3" in args
    assert "rl2.trials_per_update=64" in args


def test_every_shipped_suite_loads():
    suites = sorted((ROOT / "benchmarks" / "suites").glob("*.yaml"))
    assert suites
    for path in suites:
        load_suite(path)


def test_a_sweep_is_the_product_of_its_grids():
    suite = sweep_suite(str(ROOT / "configs" / "quickstart.yaml"), [0, 1],
                        ["rl2.lr=0.001,0.0003", "rl2.hidden_size=64,128"])
    assert [r.name for r in suite.runs] == ["lr-0.001_hidden_size-64", "lr-0.001_hidden_size-128",
                                            "lr-0.0003_hidden_size-64", "lr-0.0003_hidden_size-128"]
    assert suite.runs[3].set == {"rl2.lr": 0.0003, "rl2.hidden_size": 128}
    assert len(suite.trials()) == 8
    with pytest.raises(SuiteError, match="expected key.path=value1,value2"):
        sweep_suite(str(ROOT / "configs" / "quickstart.yaml"), [0], ["rl2.lr"])
    with pytest.raises(SuiteError, match="unknown key"):
        sweep_suite(str(ROOT / "configs" / "quickstart.yaml"), [0], ["rl2.nope=1,2"])


def test_time_to_a_target_is_where_the_smoothed_training_return_first_reaches_it(tmp_path):
    from metaray.bench.report import time_to

    curve = [[100 * i, 10.0 * i, float(i)] for i in range(1, 31)]  # return i at step 100 i
    # mean over 10 points ending at point i is i - 4.5: reaches 10 at i = 15
    assert time_to(curve, 10.0) == (1500.0, 150.0)
    assert time_to(curve, 100.0) is None
    with warnings.catch_warnings():  # a baseline has no curve: None, not the mean of nothing
        warnings.simplefilter("error")
        assert time_to([], 10.0) is None
    for r in _results("a", [0, 1], 1.0):
        r["curve"] = curve
        (tmp_path / f"a-seed{r['seed']}.json").write_text(json.dumps(r))
    text = write_report([tmp_path], target=10.0)["markdown"].read_text()
    assert "Time to 10" in text and "| a | training | 1,500 / 2.5 min, 1,500 / 2.5 min |" in text
    # with a held-out curve (eval.every) the time is read off it, point by point, and it is plotted
    for r in _results("a", [0, 1], 1.0):
        r["curve"] = curve
        r["heldout_curve"] = [[300 * i, 30.0 * i, 4.0 * i] for i in range(1, 6)]  # 12 at the 3rd point
        (tmp_path / f"a-seed{r['seed']}.json").write_text(json.dumps(r))
    report = write_report([tmp_path], target=10.0)
    assert "| a | held-out | 900 / 1.5 min, 900 / 1.5 min |" in report["markdown"].read_text()


def test_a_result_records_its_family_defaults_and_the_report_shows_meta_worlds_reward_version(tmp_path):
    """The Meta-World reward version moves published numbers (Meta-World+): it is recorded with
    every result even where the config leaves it to the default, and the report names it."""
    from metaray.bench.trial import task_params

    mw = task_params({"task": {"family": "metaworld-ml1", "kwargs": {"env_name": "reach-v3"}}})
    assert mw is not None and mw["reward_version"] == "v2" and mw["env_name"] == "reach-v3"
    assert task_params({"task": {"family": "metaworld-ml1", "kwargs": {"reward_version": "v1"}}})["reward_version"] == "v1"
    assert task_params({"task": {"family": "tabular-mdp", "kwargs": {}}}) == {
        "num_states": 10, "num_actions": 5, "episode_length": 10}
    assert task_params({"task": {"family": "no-such-family"}}) is None
    for r in _results("mw", [0, 1], 0.5):
        r.update(family="metaworld-ml1", benchmark="metaworld-ml1(env_name=reach-v3)", task_params=mw)
        (tmp_path / f"mw-seed{r['seed']}.json").write_text(json.dumps(r))
    text = write_report([tmp_path])["markdown"].read_text()
    assert "| mw | rl2 / metaworld-ml1(env_name=reach-v3) (reward v2) | 2 |" in text


def test_the_progress_view_keeps_the_latest_held_out_return_between_evaluations(tmp_path, monkeypatch):
    """A long run with `eval.every` is judged by its held-out return: the bench reports the
    newest one with every later progress row, not only on the rows that have it."""
    import subprocess

    from metaray.bench import trial

    rows = [{"iteration": 1, "env_steps_total": 10, "return_post": -5.0},
            {"iteration": 2, "env_steps_total": 20, "return_post": -4.0, "heldout_mean_return": -6.0},
            {"iteration": 3, "env_steps_total": 30, "return_post": -3.0},
            {"iteration": 4, "env_steps_total": 40, "return_post": -2.0, "heldout_mean_return": -2.5},
            {"iteration": 5, "env_steps_total": 50, "return_post": -1.0}]
    batches = [rows[:1], rows[1:3], rows[3:4], rows[4:]]  # what each poll finds written since the last

    class Training:  # the child process: still running at each poll until the rows are all written
        def wait(self, timeout: float) -> int:
            if not batches:
                return 0
            with (tmp_path / "progress.jsonl").open("a") as f:
                f.writelines(json.dumps(r) + "\n" for r in batches.pop(0))
            raise subprocess.TimeoutExpired("metaray train", timeout)

    monkeypatch.setattr(trial, "_POLL_S", 0.0)
    reports: list[dict] = []
    assert trial._wait_reporting(Training(), tmp_path, reports.append) == 0
    assert [(r["iteration"], r["train_return"], r.get("heldout_return")) for r in reports] == [
        (1, -5.0, None), (3, -3.0, -6.0), (4, -2.0, -2.5), (5, -1.0, -2.5)]


def test_a_report_of_baselines_only_plots_without_warnings(tmp_path):
    """Baselines train nothing: their curves are empty, and the plot says so instead of warning
    about an empty legend."""
    for r in _results("greedy", [0, 1], 6.0) + _results("thompson", [0, 1], 5.0):
        r["curve"] = []
        (tmp_path / f"{r['run']}-seed{r['seed']}.json").write_text(json.dumps(r))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = write_report([tmp_path])
    assert report["plot"].exists() and report["plot"].stat().st_size > 0


def test_runs_of_very_different_lengths_are_plotted_on_log_axes():
    short, long = _results("pearl", [0], 1.0), _results("maml", [0], 1.0)
    long[0]["curve"] = [[500 * 100, 5.0, 1.0], [1000 * 100, 12.0, 2.0]]  # 100x the env steps, about the same time
    long[0]["heldout_curve"] = [[1000 * 100, 12.0, 2.0]]
    assert log_axes(short + long) == (True, False)
    assert log_axes(short + _results("other", [0], 1.0)) == (False, False)
    assert log_axes(short) == (False, False)  # one run: nothing to squeeze


def test_the_wall_time_says_the_machines_load_where_the_runs_recorded_it(tmp_path):
    loaded = _results("loaded", [0, 1], 1.0)
    loaded[0]["commits"] = [{"commit": "abc", "dirty": False, "load_1m": {"mean": 3.0, "max": 4.0, "samples": 30, "cores": 2}}]
    loaded[1]["commits"] = [{"commit": "abc", "dirty": False, "load_1m": {"mean": 1.0, "max": 1.5, "samples": 10, "cores": 2}},
                            {"commit": "abc", "dirty": False}]  # a start killed with its bench: no record
    quiet = _results("unrecorded", [0, 1], 2.0)  # results from before the load was recorded
    summary = aggregate(loaded + quiet, reps=100)
    assert summary["runs"]["loaded"]["load_1m"] == pytest.approx(2.5)  # (3 x 30 + 1 x 10) / 40
    assert summary["runs"]["unrecorded"]["load_1m"] is None
    for r in loaded + quiet:
        (tmp_path / f"{r['run']}-seed{r['seed']}.json").write_text(json.dumps(r))
    text = write_report([tmp_path])["markdown"].read_text()
    row = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert "(load 2.5, 2 cores)" in row["loaded"] and "load" not in row["unrecorded"]


def _bench_dir(root: Path, suite: str, name: str, results: list[dict], report: bool = True) -> Path:
    folder = root / suite / name
    folder.mkdir(parents=True)
    for r in results:
        (folder / f"{r['run']}-seed{r['seed']}.json").write_text(json.dumps({**r, "suite": suite}))
    if report:
        (folder / "report.md").write_text("# report\n")
    return folder


def test_the_index_has_every_suite_every_seed_and_a_rerun_once(tmp_path):
    root = tmp_path / "results"
    _bench_dir(root, "alpha", "2026-12-01-aaa", _results("x", [0, 1, 2], 1.0) + _results("y", [0, 1], 5.0))
    rerun = [{**r, "commit": "bbb", "score": 9.0, "per_task": [9.0] * 50} for r in _results("x", [2], 1.0)]
    _bench_dir(root, "alpha", "2026-12-02-bbb", rerun, report=False)
    _bench_dir(root, "beta", "2026-12-03-ccc", _results("z", [4], 3.0))
    (root / "beta" / "2026-12-04-stopped").mkdir()  # a stopped bench: progress files, no results
    (root / "beta" / "2026-12-04-stopped" / "z-seed5.stopped-progress.jsonl").write_text("{}\n")
    text = index_markdown(root, link_base=tmp_path, reps=200)
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| suite")]
    assert [row.split(" | ")[1] for row in rows] == ["x", "y", "z"]  # runs in suite order, one row each
    x, y, z = (row.split(" | ") for row in rows)
    assert x[0] == "| [alpha](results/alpha/2026-12-01-aaa/report.md) (1 older reruns left out)"
    assert x[4] == "3" and x[7].split(", ")[2] == "9.000"  # seed 2's newest result, counted once
    assert x[10] == "abc, bbb"  # the first bench's commit (BASE) and the rerun's
    expected = np.mean([r["per_task"] for r in _results("x", [0, 1], 1.0)] + [[9.0] * 50])
    assert float(x[5].split(" [")[0]) == pytest.approx(expected, abs=1e-3)
    assert y[0] == "| " and y[4] == "2"  # the suite named once
    assert z[0] == "| [beta](results/beta/2026-12-03-ccc/report.md)" and z[5] == f"{_results('z', [4], 3.0)[0]['score']:.3f}"
    assert "mean_return, 50 test tasks" in z[3]
    with pytest.raises(ReportError, match="no bench results under"):
        index_markdown(tmp_path / "results" / "beta" / "2026-12-04-stopped")


def test_the_index_goes_between_the_readme_markers_and_check_says_when_it_is_stale(tmp_path, capsys):
    from metaray.bench import report
    from metaray.cli import main

    root = tmp_path / "results"
    _bench_dir(root, "alpha", "2026-12-01-aaa", _results("x", [0, 1], 1.0))
    readme = tmp_path / "README.md"
    readme.write_text(f"# Benchmarks\n\nbefore\n\n{report.INDEX_BEGIN}\nold table\n{report.INDEX_END}\n\nafter\n")
    assert main(["report", "--index", str(root), "--readme", str(readme), "--check"]) == 1
    assert "out of date" in capsys.readouterr().out and "old table" in readme.read_text()  # --check writes nothing
    assert main(["report", "--index", str(root), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# Benchmarks\n\nbefore\n\n") and text.endswith(f"{report.INDEX_END}\n\nafter\n")
    assert "old table" not in text and "| [alpha](results/alpha/2026-12-01-aaa/report.md) | x |" in text
    assert main(["report", "--index", str(root), "--readme", str(readme), "--check"]) == 0
    _bench_dir(root, "beta", "2026-12-02-bbb", _results("z", [0], 3.0))  # a new result: the table is behind
    assert main(["report", "--index", str(root), "--readme", str(readme), "--check"]) == 1
    capsys.readouterr()

    readme.write_text("# no markers\n")
    assert main(["report", "--index", str(root), "--readme", str(readme)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("metaray report: error: ") and "no generated-index block" in err and "\n" not in err
    assert readme.read_text() == "# no markers\n"
    for argv, message in ((["report", str(root), "--check"], "--readme and --check go with --index"),
                          (["report", "--index", str(root), "--target", "1"], "--index takes a RESULTS root"),
                          (["report", "--index", str(root), str(root)], "one results root, got 2"),
                          (["report", "--index", str(root), "--check"], "--check needs --readme"),
                          (["report", "--index", str(tmp_path / "missing")], "no such directory")):
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err


def test_the_benchmarks_readme_table_is_what_the_result_files_say():
    from metaray.bench.report import update_readme

    stale = update_readme(ROOT / "benchmarks" / "README.md", ROOT / "benchmarks" / "results", check=True)
    assert not stale, ("benchmarks/README.md's generated table is behind benchmarks/results: run `metaray report "
                       "--index benchmarks/results --readme benchmarks/README.md`")
