"""What produced a number: the code (commit, dirty or not), the machine, the packages, the
resolved config and its hash. Every bench result carries all of it (one schema)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import platform
import subprocess
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
