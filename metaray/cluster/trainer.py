"""`Trainer(config, run_dir, runtime)`: the runner for the run's algorithm (see
`metaray.cluster.runners`); kept under this name for scripts written against it."""

from __future__ import annotations

from metaray.cluster.runners import make_runner as Trainer  # noqa: N812
from metaray.cluster.worker_pool import TrainingError

__all__ = ["Trainer", "TrainingError"]
