"""What produced a number: the code (commit, dirty or not), the machine, the packages, the
resolved config and its hash. Every bench result carries all of it (one schema)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

PACKAGES = ("metaray", "torch", "ray", "gymnasium", "mujoco", "metaworld", "numpy", "grpcio")
SOURCE = Path(__file__).resolve().parents[2]  # the checkout metaray runs from (if it is one)


def git_commit(where: Path = SOURCE) -> dict[str, Any]:
    """{"commit": short hash or None, "dirty": bool}; results and run files do not count as dirty."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    head = git("rev-parse", "--short=10", "HEAD")
    if not head:
        return {"commit": None, "dirty": False}
    changed = [line for line in git("status", "--porcelain", "--untracked-files=no").splitlines()
               if "benchmarks/results/" not in line]
    return {"commit": head, "dirty": bool(changed)}


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    except Exception:  # a broken CUDA install must not stop a result being written
        gpu = None
    memory_gib = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return {"cores": os.cpu_count(), "cpu": cpu, "gpu": gpu, "memory_gib": memory_gib,
            "os": f"{platform.system()} {platform.release()}", "arch": platform.machine(),
            "python": platform.python_version()}


def packages() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def config_hash(resolved: dict[str, Any]) -> str:
    """sha256 of the resolved config (keys sorted): equal hashes, equal settings."""
    text = yaml.safe_dump(resolved, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


RESULTS_ROOT = SOURCE / "benchmarks" / "results"
PROVENANCE_FILE = "provenance.json"


def results_tag(code: dict[str, Any] | None = None) -> str:
    """`<date>-<commit>[-dirty]`: the folder a day's results of one commit go to (bench and scripts)."""
    code = code if code is not None else git_commit()
    return f"{time.strftime('%Y-%m-%d')}-{code['commit'] or 'nogit'}{'-dirty' if code['dirty'] else ''}"


def script_output(script: str | Path, name: str, root: Path | None = None) -> Path:
    """The path a benchmark script writes its output `name` to:
    `benchmarks/results/<script>/<date>-<commit>[-dirty]/<name>`, the layout `metaray bench` uses, so
    every number names the code that produced it. The folder's provenance.json gains this
    invocation (command, commit, machine, packages, time), written before the output is."""
    stem = Path(script).stem
    code = git_commit()
    folder = (root or RESULTS_ROOT) / stem / results_tag(code)
    folder.mkdir(parents=True, exist_ok=True)
    record_path = folder / PROVENANCE_FILE
    record = json.loads(record_path.read_text()) if record_path.is_file() else {
        "script": f"benchmarks/{stem}.py", **code, "outputs": []}
    record["outputs"].append({
        "file": name, "command": shlex.join(["python", f"benchmarks/{stem}.py", *sys.argv[1:]]),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(), "packages": packages()})
    tmp = record_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(record_path)
    return folder / name


def _outputs(script: str | Path, name: str, root: Path | None) -> list[Path]:
    """Every `<script>/<date>-<commit>/<name>`, oldest first (by folder date, then file time)."""
    found = (root or RESULTS_ROOT).glob(f"{Path(script).stem}/*/{name}")
    return sorted(found, key=lambda p: (p.parent.name[:10], p.stat().st_mtime))


def latest_output(script: str | Path, name: str, root: Path | None = None) -> Path:
    """The newest `<script>/<date>-<commit>/<name>` under the results (what a script that reads
    another's output takes); FileNotFoundError naming the command that writes it."""
    found = _outputs(script, name, root)
    if not found:
        raise FileNotFoundError(f"no {name} of benchmarks/{Path(script).stem}.py under {root or RESULTS_ROOT}: run it first")
    return found[-1]


def merged_rows(script: str | Path, name: str, key: Callable[[dict], Any], root: Path | None = None) -> list[dict]:
    """The rows of every `<script>/<date>-<commit>/<name>` (a JSON list a script adds rows to),
    oldest folder first, a later row replacing an earlier one with the same key: the current
    table across commits, each row still in the folder of the code that produced it."""
    rows: dict[Any, dict] = {}
    for store in _outputs(script, name, root):
        for row in json.loads(store.read_text()):
            rows.pop(key(row), None)
            rows[key(row)] = row
    return list(rows.values())
