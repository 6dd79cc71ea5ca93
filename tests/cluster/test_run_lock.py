"""One process per run directory and per bench: a second `metaray train --resume` (or a second
`metaray bench`) on one that a live process is running is refused in one line naming that
process, and the lock goes with the process however it ends."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import TINY_RL2

from metaray.cluster.checkpoint import read_progress
from metaray.cluster.run_lock import RunBusyError, check_not_locked, is_locked, lock, wait_unlocked

ROOT = Path(__file__).resolve().parents[2]
METARAY = [sys.executable, "-m", "metaray.cli"]
HOLDER = ("import fcntl, sys\n"
          "f = open(sys.argv[1] + '/.lock', 'a'); fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
          "print('held', flush=True); sys.stdin.read()\n")


def _holder(directory: Path) -> subprocess.Popen:
    """Another process holding `directory`'s lock until its stdin closes."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_held_lock_names_its_process_and_goes_with_it_however_it_ends(tmp_path):
    holder = _holder(tmp_path)
    try:
        assert is_locked(tmp_path)
        with pytest.raises(RunBusyError) as err:
            check_not_locked(tmp_path)
        assert f"is being trained by another process (pid {holder.pid})" in str(err.value)
        with pytest.raises(RunBusyError):
            lock(tmp_path)
        assert wait_unlocked(tmp_path, timeout_s=0.3, poll_s=0.1) is False
    finally:
        holder.send_signal(signal.SIGKILL)  # no clean-up of its own: the kernel drops the lock
        holder.wait()
    assert not is_locked(tmp_path)
    held = lock(tmp_path)
    try:  # held here: a second holder in this same process is refused too
        with pytest.raises(RunBusyError):
            lock(tmp_path)
    finally:
        held.close()
    assert not is_locked(tmp_path)


def test_waiting_for_a_lock_ends_when_its_holder_stops(tmp_path):
    holder = _holder(tmp_path)
    holder.stdin.close()  # the holder ends (as a stopped training does after its checkpoint)
    assert wait_unlocked(tmp_path, timeout_s=60, poll_s=0.05) is True
    holder.wait()


def test_a_second_trainer_of_a_live_run_is_refused_and_the_run_goes_on(tmp_path):
    config = tmp_path / "long.yaml"
    config.write_text(yaml.safe_dump({**TINY_RL2, "iterations": 100_000, "workers": {"num_workers": 1},
                                      "checkpoint": {"every": 1, "keep": 2}}))
    run = tmp_path / "run"
    # SIGINT as a terminal's Ctrl-C delivers it: a suite started as a background job (`.ci/run &`)
    # hands its children SIGINT ignored, and this run then trained on through its SIGINT below (seen
    # twice, with the stacks of `-X faulthandler`: still training). Should it still not stop,
    # SIGABRT makes it print every thread's stack.
    live = subprocess.Popen([sys.executable, "-X", "faulthandler", *METARAY[1:], "train", str(config), "--serial",
                             "--run-dir", str(run)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and live.poll() is None and len(read_progress(run)) < 2:
            time.sleep(0.1)  # polling for the condition
        assert live.poll() is None and len(read_progress(run)) >= 2
        for args in (["train", "--serial", "--resume", "--run-dir", str(run)],
                     ["train", str(config), "--serial", "--run-dir", str(run)]):
            second = subprocess.run([*METARAY, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
            assert second.returncode == 2, second.stderr
            assert second.stderr.strip().splitlines() == [
                f"metaray train: error: {run} is being trained by another process (pid {live.pid}): stop it first "
                f"(Ctrl-C or kill PID: it checkpoints) or watch it with `metaray status {run}`"]
        rows = len(read_progress(run))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(read_progress(run)) == rows:
            time.sleep(0.1)
        assert len(read_progress(run)) > rows  # the live run was not disturbed
    finally:
        live.send_signal(signal.SIGINT)  # stops at a clean point with a checkpoint
        try:
            live.communicate(timeout=120)
        except subprocess.TimeoutExpired:  # say where it is
            live.send_signal(signal.SIGABRT)
            stacks = live.communicate(timeout=60)[1]
            pytest.fail(f"the run did not stop within 120 s of SIGINT; its threads:\n{stacks[-8000:]}")
    assert json.loads((run / "driver.json").read_text())["state"] == "interrupted"
    last = read_progress(run)[-1]["iteration"]
    resumed = subprocess.run([*METARAY, "train", "--serial", "--resume", "--run-dir", str(run), "--iterations",
                              str(last + 1)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert read_progress(run)[-1]["iteration"] == last + 1


def test_a_second_bench_of_a_running_bench_is_refused_before_anything_starts(tmp_path):
    from metaray.bench.provenance import results_tag

    bench = tmp_path / "runs" / "smoke" / results_tag()
    bench.mkdir(parents=True)
    holder = _holder(bench)  # as the first `metaray bench` holds it
    try:
        done = subprocess.run([*METARAY, "bench", str(ROOT / "benchmarks" / "suites" / "smoke.yaml"), "--runs-dir",
                               str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results")], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
    finally:
        holder.stdin.close()
        holder.wait()
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"metaray bench: error: {bench} is being run by another `metaray bench` (pid {holder.pid}): stop it first "
        "(Ctrl-C; its trials checkpoint) or let it finish"]
    assert not (tmp_path / "results").exists() and [p.name for p in bench.iterdir()] == [".lock"]


def test_a_filesystem_without_flock_trains_unlocked_rather_than_failing(tmp_path, monkeypatch):
    import errno

    from metaray.cluster import run_lock

    def no_locks(*_: object) -> None:
        raise OSError(errno.ENOLCK, "No locks available")  # what some network mounts answer

    monkeypatch.setattr(run_lock.fcntl, "flock", no_locks)
    held = lock(tmp_path)
    assert held is not None and not is_locked(tmp_path)
    held.close()
