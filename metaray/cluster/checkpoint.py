"""Checkpoints and the run directory.

A checkpoint is a folder `checkpoints/iter-000010/` holding `learner.safetensors` (weights,
optimizer moments, RNG states) and `state.json` (iteration, counters, optimizer hyperparameters).
It is written into a temporary folder and renamed into place, so a crash mid-write leaves the
previous checkpoint as the newest complete one. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

FORMAT = "metaray-checkpoint/1"
CHECKPOINTS = "checkpoints"
PREFIX = "iter-"


class CheckpointError(ValueError):
    """A checkpoint or run directory that cannot be used; the message is one line."""


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(run_dir: Path, iteration: int, tensors: dict[str, np.ndarray], state: dict[str, Any], keep: int) -> Path:
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{iteration:06d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp / "learner.safetensors"))
        (tmp / "state.json").write_text(json.dumps({"format": FORMAT, **state}, indent=1))
        for name in ("learner.safetensors", "state.json"):
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_checkpoint(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read and check a checkpoint; anything foreign or damaged is a CheckpointError."""
    path = Path(path)
    weights, state_file = path / "learner.safetensors", path / "state.json"
    if not weights.is_file() or not state_file.is_file():
        raise CheckpointError(f"{path}: not a metaray checkpoint (needs learner.safetensors and state.json)")
    try:
        state = json.loads(state_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{state_file}: damaged state file ({err})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{state_file}: not a {FORMAT} state file")
    for key in ("iteration", "learner"):
        if key not in state:
            raise CheckpointError(f"{state_file}: missing {key!r}")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights}: damaged weights file ({str(err).splitlines()[0]})") from None
    return tensors, state


@dataclass
class Found:
    """The newest checkpoint that loads (path None: none does), and one line per newer one skipped."""

    path: Path | None
    tensors: dict[str, np.ndarray]
    state: dict[str, Any]
    skipped: list[str]


DAMAGED = "damaged"


def load_newest_checkpoint(run_dir: Path, set_aside: bool = False) -> Found:
    """Newest first, the first checkpoint that loads. A damaged one is skipped with a line saying
    why; with `set_aside` it is moved to checkpoints/damaged/ (kept, never deleted), so a later
    checkpoint of the same iteration cannot overwrite it."""
    skipped: list[str] = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            tensors, state = load_checkpoint(path)
        except CheckpointError as err:
            where = ""
            if set_aside:
                target = path.parent / DAMAGED / path.name
                target.parent.mkdir(exist_ok=True)
                if target.exists():
                    target = target.with_name(f"{path.name}-{int(time.time())}")
                os.replace(path, target)
                where = f"; moved to {target.relative_to(Path(run_dir))}"
            skipped.append(f"skipped checkpoint {path.name}: {err}{where}")
            continue
        return Found(path, tensors, state, skipped)
    return Found(None, {}, {}, skipped)


def read_progress(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "progress.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a torn last line from a crash: everything before it is good
    return rows


def truncate_progress(run_dir: Path, iteration: int) -> int:
    """On resume, forget iterations after the checkpoint: they will be run again. Returns how
    many rows were dropped."""
    every = read_progress(run_dir)
    rows = [r for r in every if r.get("iteration", 0) <= iteration]
    write_text_atomic(Path(run_dir) / "progress.jsonl", "".join(json.dumps(r) + "\n" for r in rows))  # and a torn line
    return len(every) - len(rows)
