"""Where benchmark scripts write: the bench layout, with what produced each file beside it."""

from __future__ import annotations

import json
import sys

import pytest

from metaray.bench.provenance import PROVENANCE_FILE, git_commit, latest_output, script_output


def test_a_script_output_goes_under_its_commit_with_every_invocation_recorded(tmp_path, monkeypatch):
    code = git_commit()
    monkeypatch.setattr(sys, "argv", ["speed_suite.py", "--seconds", "5"])
    first = script_output("/somewhere/benchmarks/speed_suite.py", "speed_suite.json", root=tmp_path)
    first.write_text("{}")
    monkeypatch.setattr(sys, "argv", ["speed_suite.py", "--repeat"])
    second = script_output("speed_suite.py", "speed_suite_repeat.json", root=tmp_path)

    assert first.parent == second.parent and first.parent.parent == tmp_path / "speed_suite"
    tag = first.parent.name[11:]
    assert len(first.parent.name[:10]) == 10 and tag.startswith(code["commit"] or "nogit")
    assert tag.endswith("-dirty") == code["dirty"]
    record = json.loads((first.parent / PROVENANCE_FILE).read_text())
    assert record["script"] == "benchmarks/speed_suite.py" and record["commit"] == code["commit"]
    assert [o["file"] for o in record["outputs"]] == ["speed_suite.json", "speed_suite_repeat.json"]
    assert [o["command"] for o in record["outputs"]] == ["python benchmarks/speed_suite.py --seconds 5",
                                                       "python benchmarks/speed_suite.py --repeat"]
    assert all(o["machine"]["cores"] >= 1 and o["packages"]["torch"] for o in record["outputs"])
    assert not second.exists()  # the path is given; the script writes it


def test_the_latest_output_is_the_newest_dated_folder_and_a_missing_one_names_the_script(tmp_path):
    for folder in ("2026-11-24-aaaaaaaaaa", "2026-12-05-bbbbbbbbbb", "2026-11-30-cccccccccc"):
        (tmp_path / "soak" / folder).mkdir(parents=True)
        (tmp_path / "soak" / folder / "soak.json").write_text(folder)
    (tmp_path / "soak" / "2026-12-06-dddddddddd").mkdir()  # newer, without that file
    assert latest_output("soak.py", "soak.json", root=tmp_path).read_text() == "2026-12-05-bbbbbbbbbb"
    with pytest.raises(FileNotFoundError, match=r"no grpc_push.json of benchmarks/grpc_push.py under .*: run it first"):
        latest_output("grpc_push", "grpc_push.json", root=tmp_path)


def test_rows_added_under_several_commits_read_as_one_table_newest_row_winning(tmp_path):
    from metaray.bench.provenance import merged_rows

    def store(folder: str, rows: list[dict]) -> None:
        (tmp_path / "rl2_duan" / folder).mkdir(parents=True)
        (tmp_path / "rl2_duan" / folder / "rl2_duan.json").write_text(json.dumps(rows))

    store("2026-12-05-bbbbbbbbbb", [{"bench": "mdp", "seed": 0, "score": 2}, {"bench": "mdp", "seed": 1, "score": 3}])
    store("2026-11-23-aaaaaaaaaa", [{"bench": "mdp", "seed": 0, "score": 1}, {"bench": "bandit", "seed": 0, "score": 9}])
    rows = merged_rows("rl2_duan.py", "rl2_duan.json", lambda r: (r["bench"], r["seed"]), root=tmp_path)
    assert sorted((r["bench"], r["seed"], r["score"]) for r in rows) == [("bandit", 0, 9), ("mdp", 0, 2), ("mdp", 1, 3)]
    assert merged_rows("rl2_classical", "rl2_classical.json", lambda r: r, root=tmp_path) == []
