"""`metaray train --address auto` joins a cluster started with `ray start`, as operators run it.

Ray 2.60 turns token auth on by default: clients of a `ray start` cluster need RAY_AUTH_MODE=token
and the cluster's token (in ~/.ray/ or RAY_AUTH_TOKEN), which `ray start --head` writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    temp_dir = tempfile.mkdtemp(prefix="mr-", dir="/tmp")
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    subprocess.run(
        [RAY, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=3",
         f"--temp-dir={temp_dir}", "--include-dashboard=false", "--disable-usage-stats"],
        check=True, capture_output=True, env=env, timeout=120,
    )
    yield f"127.0.0.1:{port}", env
    # `ray stop` would stop every Ray instance on the machine; end only this cluster's processes.
    out = subprocess.run(["pgrep", "-f", temp_dir], capture_output=True, text=True).stdout.split()
    for pid in map(int, out):
        if pid != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_train_joins_running_cluster_with_address_auto(ray_head, tiny_config, tmp_path):
    address, env = ray_head
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "metaray.cli", "train", str(tiny_config), "--address", "auto", "--run-dir", str(run)],
        capture_output=True, text=True, timeout=300, env={**env, "RAY_ADDRESS": address},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    port = address.rsplit(":", 1)[1]
    assert "joined Ray cluster at " in proc.stdout and f":{port})" in proc.stdout  # not a new local one
    rows = [json.loads(line) for line in (run / "progress.jsonl").read_text().splitlines()]
    assert rows[-1]["iteration"] == 3 and rows[-1]["workers_alive"] == 2
