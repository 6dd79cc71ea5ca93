"""How a running job is reached from outside: a small named Ray actor per run.

The driver of a Ray run registers `RunControl` under a name derived from the run directory (in
the `metaray` namespace) and writes the name to `driver.json`. `metaray scale RUN_DIR --workers
N` connects to the run's Ray cluster, finds the actor and sets the target; the trainer reads the
target once per iteration and resizes its worker pool.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from metaray.cluster.checkpoint import CheckpointError

NAMESPACE = "metaray"


def control_name(run_dir: Path) -> str:
    digest = hashlib.blake2b(str(Path(run_dir).resolve()).encode(), digest_size=6).hexdigest()
    return f"metaray-run-{Path(run_dir).name[:40]}-{digest}"


class RunControl:
    """Holds the worker-count target of a running job. `local_cpus` is the CPU count of the local
    Ray instance the run started (None on a cluster, which may grow): a target that cannot fit
    there would wait forever, so it is refused."""

    def __init__(self, num_workers: int, max_workers: int | None = None, local_cpus: float | None = None,
                 learner_cpus: float = 0.0):
        self.target, self.max_workers = num_workers, max_workers
        self.local_cpus, self.learner_cpus = local_cpus, learner_cpus
        self.requests = 0

    def set_workers(self, num_workers: int) -> int:
        if not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"workers must be a whole number >= 1, got {num_workers!r}")
        if self.max_workers is not None and num_workers > self.max_workers:
            raise ValueError(f"workers: at most workers.max_workers={self.max_workers}, got {num_workers}")
        fit = None if self.local_cpus is None else int(self.local_cpus - self.learner_cpus)
        if fit is not None and num_workers > fit:
            raise ValueError(f"workers: the run's local Ray instance has {self.local_cpus:g} CPUs, so at most {fit} "
                             f"rollout workers fit beside the learner ({self.learner_cpus:g} CPU); start the run with "
                             f"workers.max_workers: {num_workers} to size it for {num_workers}")
        self.target = num_workers
        self.requests += 1
        return self.target

    def get_target(self) -> int:
        return self.target


class ScaleError(RuntimeError):
    """The run cannot be scaled (not running, serial, unreachable); one line for the user."""


def scale_run(run_dir: Path, num_workers: int, timeout_s: float = 30.0) -> dict[str, Any]:
    """Ask the running job in `run_dir` for `num_workers` rollout workers."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"{run_dir} is not a metaray run directory (no config.yaml)")
    try:
        driver = json.loads((run_dir / "driver.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise ScaleError(f"{run_dir} has no driver.json: the run has not started") from None
    if driver.get("state") != "running":
        raise ScaleError(f"{run_dir} is not running (state: {driver.get('state')})")
    if driver.get("runtime") != "ray" or not driver.get("control_actor"):
        raise ScaleError(f"{run_dir} runs without Ray (--serial): its worker pool cannot be resized")
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # Ray 2.60's default (read at import); token in ~/.ray
    import ray

    try:
        ray.init(address=driver["ray_address"], namespace=NAMESPACE, logging_level="ERROR",
                 log_to_driver=False, ignore_reinit_error=True)
        control = ray.get_actor(driver["control_actor"], namespace=NAMESPACE)
        before = ray.get(control.get_target.remote(), timeout=timeout_s)
        try:
            after = ray.get(control.set_workers.remote(num_workers), timeout=timeout_s)
        except ValueError as err:  # the actor's own check, e.g. above workers.max_workers
            cause = getattr(err, "cause", err)
            raise ScaleError(str(cause).strip().splitlines()[-1]) from None
    except ScaleError:
        raise
    except (ConnectionError, ValueError, RuntimeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        hint = "" if os.environ.get("RAY_AUTH_MODE") == "token" else \
            " (a cluster with token auth, Ray's default, needs RAY_AUTH_MODE=token here too)"
        raise ScaleError(f"cannot reach the run's control actor at {driver['ray_address']}: {first}{hint}") from None
    finally:
        if ray.is_initialized():
            ray.shutdown()
    return {"run_dir": str(run_dir), "workers_before": before, "workers_target": after}
