"""`pip install .` builds a wheel from the source tree: it must hold every file metaray needs at
run time and leave the tree as it was (no build/ or *.egg-info in a user's checkout)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def all_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_the_wheel_holds_the_package_and_the_tree_stays_clean(tmp_path):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout")
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.split("\n")
    tree = tmp_path / "tree"  # the checkout as a user has it (tracked files and new ones)
    for path in filter(None, listed):
        if (ROOT / path).is_file():
            (tree / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / path, tree / path)
    before = all_files(tree)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(tree)], check=True, capture_output=True)
    assert all_files(tree) == before  # nothing written into the tree
    (wheel,) = wheels.glob("metaray-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    package = {p for p in before if p.startswith("metaray/") and (tree / p).is_file()}
    assert package <= names  # every package file: the code, the .proto, the expert's weights
    assert "metaray/tasks/experts/halfcheetah-vel.safetensors" in names
    assert any(n.endswith("entry_points.txt") for n in names)
