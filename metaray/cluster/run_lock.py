"""One process at a time per run directory (and per bench).

A second `metaray train --resume` on a run that is still training (its terminal closed, the
process alive under nohup or in another session) used to train it twice at once: two writers of
the same progress rows and checkpoints. The training process holds an exclusive `flock` on
`RUN/.lock` for as long as it runs; the kernel releases it when the process ends, however it
ends (SIGKILL and power loss included), so no stale lock is ever left to clean up. Dot-files are
never uploaded to a run's storage URI, so the lock stays local to the machine that trains.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # not POSIX: no locking, as before
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"


class RunBusyError(RuntimeError):
    """The directory is held by another live process; the message is one line."""


def _holder(directory: Path) -> str:
    """` (pid N)`: the process holding the lock, from the kernel's table of locks (Linux), else
    from a run's driver.json; empty where neither says."""
    try:
        stat = (directory / LOCK_FILE).stat()
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()  # "1: FLOCK  ADVISORY  WRITE 3044 fe:00:2147590 0 EOF" ("->" marks a waiter)
            if "FLOCK" not in fields or "->" in fields:
                continue
            pid, where = fields[fields.index("FLOCK") + 3: fields.index("FLOCK") + 5]
            major, minor, inode = where.split(":")
            if (int(inode), int(major, 16), int(minor, 16)) == (stat.st_ino, os.major(stat.st_dev), os.minor(stat.st_dev)):
                return f" (pid {int(pid)})"
    except (OSError, ValueError):
        pass
    try:
        info = json.loads((directory / "driver.json").read_text())
        return f" (pid {int(info['pid'])} on {info['host']})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


class _Unlocked:
    """Stands for a lock where the filesystem has no flock (some network mounts answer ENOLCK):
    training goes on unlocked there, as before locks existed."""

    def close(self) -> None:
        pass


def _try_lock(directory: Path) -> IO[str] | _Unlocked | None:
    """The lock file, opened and locked; None when another process holds it."""
    try:
        handle = open(directory / LOCK_FILE, "a")  # noqa: SIM115 - held open for the process's life
    except OSError:  # e.g. a read-only run directory: whatever writes next says what is wrong
        return _Unlocked()
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    except OSError:
        handle.close()
        return _Unlocked()
    return handle


def is_locked(directory: Path) -> bool:
    """Whether another process holds `directory`'s lock now (probing takes and drops it)."""
    if fcntl is None or not (directory / LOCK_FILE).is_file():
        return False
    handle = _try_lock(directory)
    if handle is None:
        return True
    handle.close()
    return False


def busy_message(directory: Path, what: str = "run") -> str:
    if what == "bench":
        return (f"{directory} is being run by another `metaray bench`{_holder(directory)}: stop it first "
                "(Ctrl-C; its trials checkpoint) or let it finish")
    return (f"{directory} is being trained by another process{_holder(directory)}: stop it first (Ctrl-C or "
            f"kill PID: it checkpoints) or watch it with `metaray status {directory}`")


def check_not_locked(directory: Path, what: str = "run") -> None:
    """Raise RunBusyError, before anything is started, when another process holds `directory`."""
    if is_locked(directory):
        raise RunBusyError(busy_message(directory, what))


def lock(directory: Path, what: str = "run") -> IO[str] | _Unlocked:
    """Hold `directory`'s lock until the returned handle is closed or this process ends; raise
    RunBusyError when another process holds it. Where there is no flock, a handle that holds nothing."""
    if fcntl is None:
        return _Unlocked()
    handle = _try_lock(directory)
    if handle is None:
        raise RunBusyError(busy_message(directory, what))
    return handle


def wait_unlocked(directory: Path, timeout_s: float, poll_s: float = 0.5) -> bool:
    """Wait until no process holds `directory` (a training stopped a moment ago still writing its
    checkpoint); whether it came free within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while is_locked(directory):
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
    return True
