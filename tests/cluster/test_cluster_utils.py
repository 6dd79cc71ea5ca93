"""Multi-node behaviour on Ray's own test cluster (`ray.cluster_utils.Cluster`): workers spread
over two nodes, the second node removed while the trainer runs, the run completes every
iteration with the lost workers restarted on the remaining node."""

from __future__ import annotations

import threading
import time

import pytest
import yaml

from metaray.cluster.checkpoint import read_progress
from metaray.cluster.config import load_config
from metaray.cluster.runtime import RayRuntime
from metaray.cluster.trainer import Trainer

CONFIG = {
    "algo": "maml", "seed": 0, "iterations": 12, "task": {"family": "point-nav", "kwargs": {"horizon": 50}},
    "workers": {"num_workers": 2, "restart_delay_s": 0.5}, "checkpoint": {"every": 1000},
    "metrics": {"tensorboard": False},
    "maml": {"meta_batch_size": 8, "episodes_per_task": 8, "hidden_sizes": [32]},
}


@pytest.fixture(scope="module")
def two_nodes():
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3})
    node = cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address, logging_level="ERROR")
    yield cluster, node
    ray.shutdown()
    cluster.shutdown()


def test_removing_a_node_mid_run_costs_only_restarts(two_nodes, tmp_path):
    import ray

    cluster, node = two_nodes
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    run = tmp_path / "run"
    run.mkdir()
    trainer = Trainer(load_config(path), run, RayRuntime(address=None))
    placed = {ray.get(h.ping.remote())["node"] for h in trainer.pool.workers.values()}
    assert placed == {node.node_id, cluster.head_node.node_id}, "SPREAD puts one worker on each node"
    errors: list[BaseException] = []

    def train() -> None:
        try:
            trainer.run()
        except BaseException as err:  # surfaced below
            errors.append(err)

    thread = threading.Thread(target=train)
    thread.start()
    deadline = time.monotonic() + 120
    while len(read_progress(run)) < 3 and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.1)
    cluster.remove_node(node)
    thread.join(timeout=300)
    assert not thread.is_alive() and not errors, errors
    rows = read_progress(run)
    assert [r["iteration"] for r in rows] == list(range(1, 13))
    assert all(r["num_tasks"] == 8 for r in rows)
    assert rows[-1]["worker_restarts_total"] >= 1 and rows[-1]["workers_alive"] == 2
