"""Run directories in storage (`--run-dir file:///...`, the same code path as s3:// and gs://
through pyarrow's filesystems): train, resume, eval, status and plot against the URI, checkpoints
that only count once complete, and failed uploads that lose nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from metaray.cli import main
from metaray.cluster.checkpoint import read_progress
from metaray.cluster.storage import (
    COMMITTED,
    UNPUSHED,
    RunStorage,
    StorageError,
    StorageSync,
    staging_dir,
)

pytest.importorskip("pyarrow")


@pytest.fixture(autouse=True)
def staging(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "staging"
    monkeypatch.setenv("METARAY_STAGING_DIR", str(path))
    return path


def train(config: Path, uri: str, *extra: str) -> int:
    return main(["train", str(config), "--serial", "--run-dir", uri, *extra])


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_a_run_in_storage_trains_resumes_and_is_evaluated_there(tiny_config, tmp_path, capsys):
    remote = tmp_path / "bucket" / "runs" / "tiny"
    uri = remote.as_uri()
    assert train(tiny_config, uri) == 0
    assert f"run dir {uri}" in capsys.readouterr().out
    stored = files_under(remote)
    assert {"config.yaml", "progress.jsonl", "driver.json"} <= stored
    # checkpoint.keep 2 of every 2 + the last: exactly the run's own, each complete with its marker
    assert {f for f in stored if f.startswith("checkpoints/")} == {
        f"checkpoints/iter-00000{i}/{name}" for i in (2, 3) for name in ("learner.safetensors", "state.json", COMMITTED)}
    assert not any(".tmp" in f for f in stored)
    assert json.loads((remote / "driver.json").read_text())["state"] == "finished"

    assert main(["eval", uri, "--json", "--num-tasks", "5"]) == 0
    evaluated = json.loads((remote / "eval.json").read_text())
    assert evaluated["iteration"] == 3 and evaluated["num_tasks"] == 5

    # resume elsewhere: the local copy is gone, the URI is all there is
    assert train(tiny_config, uri, "--resume", "--iterations", "5") == 0
    assert [r["iteration"] for r in read_progress(remote)] == [1, 2, 3, 4, 5]
    assert sorted(p.name for p in (remote / "checkpoints").iterdir()) == ["iter-000004", "iter-000005"]
    state = json.loads((remote / "checkpoints" / "iter-000005" / "state.json").read_text())
    assert state["iteration"] == 5 and state["policy_version"] == 5
    # the training run never overwrites what `metaray eval` wrote
    assert json.loads((remote / "eval.json").read_text()) == evaluated

    capsys.readouterr()
    assert main(["status", uri, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["run_dir"] == uri and status["iteration"] == 5 and status["checkpoint"] == "iter-000005"
    assert status["state"] == "finished"
    assert main(["plot", uri]) == 0
    assert (remote / "curves.png").stat().st_size > 0


def test_the_same_run_in_storage_and_on_disk_learns_the_same_weights(tiny_config, tmp_path):
    assert train(tiny_config, (tmp_path / "remote").as_uri()) == 0
    assert main(["train", str(tiny_config), "--serial", "--run-dir", str(tmp_path / "disk")]) == 0
    a = load_file(str(tmp_path / "remote" / "checkpoints" / "iter-000003" / "learner.safetensors"))
    b = load_file(str(tmp_path / "disk" / "checkpoints" / "iter-000003" / "learner.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_checkpoint_without_its_marker_is_not_resumed_from(tiny_config, tmp_path, capsys):
    remote = tmp_path / "remote"
    uri = remote.as_uri()
    assert train(tiny_config, uri) == 0
    # an upload cut short: every file of a newer checkpoint but the marker
    torn = remote / "checkpoints" / "iter-000009"
    torn.mkdir()
    for name in ("learner.safetensors", "state.json"):
        (torn / name).write_bytes((remote / "checkpoints" / "iter-000003" / name).read_bytes())
    assert RunStorage(uri, tmp_path / "copy").committed_checkpoints() == ["iter-000002", "iter-000003"]
    capsys.readouterr()
    assert train(tiny_config, uri, "--resume", "--iterations", "4") == 0
    assert "resuming from checkpoints/iter-000003 (iteration 3)" in capsys.readouterr().out
    assert [r["iteration"] for r in read_progress(remote)] == [1, 2, 3, 4]


def test_a_failed_upload_keeps_the_local_copy_and_a_pull_will_not_wipe_it(tiny_config, tmp_path):
    remote = tmp_path / "remote"
    uri = remote.as_uri()
    assert train(tiny_config, uri) == 0
    storage = RunStorage(uri, tmp_path / "copy")
    storage.pull()
    (storage.local / "progress.jsonl").write_text((storage.local / "progress.jsonl").read_text() + "{}\n")
    (remote / "progress.jsonl").unlink()
    (remote / "progress.jsonl").mkdir()  # the upload's target cannot be written
    with pytest.raises(StorageError, match=r"writing progress\.jsonl failed"):
        storage.push()
    storage.keep_unpushed()
    assert (storage.local / UNPUSHED).is_file()
    with pytest.raises(StorageError, match="never uploaded"):
        storage.pull()
    assert (storage.local / "progress.jsonl").read_text().endswith("{}\n")  # still there


def test_a_new_run_will_not_overwrite_a_run_in_storage(tiny_config, tmp_path, capsys):
    uri = (tmp_path / "remote").as_uri()
    assert train(tiny_config, uri) == 0
    before = (tmp_path / "remote" / "progress.jsonl").read_text()
    capsys.readouterr()
    assert train(tiny_config, uri) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"metaray train: error: {uri} already holds a run; pass --resume to continue it or choose another --run-dir"
    assert (tmp_path / "remote" / "progress.jsonl").read_text() == before


@pytest.mark.parametrize("argv, expected", [
    (["train", "{config}", "--serial", "--run-dir", "nosuchfs://bucket/run"], "cannot open this storage URI"),
    (["train", "--resume", "--serial", "--run-dir", "{empty}"], "is not a metaray run directory (no config.yaml)"),
    (["eval", "{empty}"], "is not a metaray run directory (no config.yaml)"),
    (["status", "{empty}"], "is not a metaray run directory (no config.yaml)"),
    (["scale", "{empty}", "--workers", "2"], "no run of it is driven from this machine"),
])
def test_bad_storage_uris_end_with_one_line(tiny_config, tmp_path, capsys, argv, expected):
    empty = (tmp_path / "nothing-here").as_uri()
    argv = [a.format(config=tiny_config, empty=empty) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err and "Traceback" not in err
    assert not (tmp_path / "nothing-here").exists()


def test_the_local_copy_of_a_uri_is_the_same_folder_every_time(staging):
    uri = "s3://bucket/runs/halfcheetah"
    assert staging_dir(uri) == staging_dir(uri + "/")
    assert staging_dir(uri).name == "halfcheetah" and staging_dir(uri).is_relative_to(staging)
    assert staging_dir(uri) != staging_dir("gs://bucket/runs/halfcheetah")


def test_a_failed_upload_during_training_is_said_and_retried_not_fatal(tiny_config, tmp_path):
    remote = tmp_path / "remote"
    uri = remote.as_uri()
    assert train(tiny_config, uri) == 0
    storage = RunStorage(uri, tmp_path / "copy")
    storage.pull()
    (remote / "progress.jsonl").unlink()
    (remote / "progress.jsonl").mkdir()  # the next upload of it fails
    (storage.local / "progress.jsonl").write_text((storage.local / "progress.jsonl").read_text() + "{}\n")
    said: list[str] = []
    sync = StorageSync(storage, said.append, every_s=0.0)
    sync.observe({"iteration": 4})
    assert len(said) == 1 and said[0].startswith(f"upload to {uri} failed, will retry:")
    (remote / "progress.jsonl").rmdir()  # storage reachable again: the next observation uploads
    sync.observe({"iteration": 5})
    assert len(said) == 1 and (remote / "progress.jsonl").read_text().endswith("{}\n")
