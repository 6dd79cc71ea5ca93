"""The training loops, one per algorithm mode, over a shared core (`base.Runner`):
`MetaBatchRunner` (one meta-batch per iteration) and `StreamRunner` (workers sample continuously).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from metaray.cluster.config import RunConfig
from metaray.cluster.observers import Observer
from metaray.cluster.progress import ProgressDisplay
from metaray.cluster.runners.base import Runner
from metaray.cluster.runners.meta_batch import MetaBatchRunner
from metaray.cluster.runners.stream import StreamRunner
from metaray.cluster.runtime import RayRuntime, SerialRuntime

RUNNERS: dict[str, type[Runner]] = {"meta-batch": MetaBatchRunner, "stream": StreamRunner}


def make_runner(config: RunConfig, run_dir: Path, runtime: SerialRuntime | RayRuntime, resume: bool = False,
                display: ProgressDisplay | None = None, observers: Sequence[Observer] = ()) -> Runner:
    """The runner for the config's algorithm's mode (see metaray.core); `observers` see each
    iteration after the runner's own (checkpoint included)."""
    return RUNNERS[config.algorithm().mode](config, run_dir, runtime, resume, display, observers)


__all__ = ["MetaBatchRunner", "Runner", "StreamRunner", "make_runner"]
