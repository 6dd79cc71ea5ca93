"""gRPC service under load: 32 concurrent clients push RL² trials into a running local job.

Starts `metaray train` (RL² on bandits, local Ray, one rollout worker) with `--grpc-port 0`,
then CLIENTS concurrent clients (PROCS processes x threads, one channel each) loop for
DURATION s: GetTask, then one PushEpisodes of PUSH_SIZE synthetic but valid trials. Measured:
accepted/rejected trials (by status code) on the client side, the run's own counts
(accepted, learned, stale) after it has drained its queue, the driver's memory (RSS) every
second, throughput. Checks: client-accepted == run-accepted == learned + stale.

    python benchmarks/grpc_push.py [--duration 60] [--clients 32]
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing as mp
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from metaray.bench.provenance import script_output

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "benchmark-token-0123456789"


def client_process(address: str, threads: int, duration: float, push_size: int, out: mp.Queue) -> None:
    import grpc
    import numpy as np

    from metaray.actors.remote import RemoteClient, make_rollout

    counts: collections.Counter = collections.Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + duration

    def loop(k: int) -> None:
        rng = np.random.default_rng(k)
        local: collections.Counter = collections.Counter()
        with RemoteClient(address, token=TOKEN, actor_id=f"bench-{os.getpid()}-{k}") as client:
            info = client.run_info()
            n_act, obs_dim = int(info.num_actions), int(info.observation_shape[0])
            while time.monotonic() < deadline:
                assignments = [client.get_task() for _ in range(push_size)]
                rollouts = []
                for a in assignments:
                    n = int(a.episodes_per_rollout)  # bandit: one step per episode
                    rollouts.append(make_rollout(
                        a, client.actor_id, a.policy_version, "trial", rng.random((n, obs_dim), np.float32),
                        rng.integers(0, n_act, n), rng.random(n, np.float32), np.ones(n, bool),
                        np.full(n, -np.log(n_act), np.float32)))
                try:
                    local["accepted"] += client.push(rollouts).accepted
                    local["pushes"] += 1
                except grpc.RpcError as err:
                    local[f"rejected_{err.code().name}"] += len(rollouts)
        with lock:
            counts.update(local)

    workers = [threading.Thread(target=loop, args=(os.getpid() * 100 + k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    out.put(dict(counts))


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def read_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "progress.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--push-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default benchmarks/results/grpc_push/<date>-<commit>/grpc_push.json)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="metaray-grpc-bench-"))
    config = yaml.safe_load((ROOT / "configs" / "rl2-bandit-n10-k5.yaml").read_text())
    config.update(iterations=10**6)
    config["rl2"]["max_policy_lag"] = 4
    config["checkpoint"] = {"every": 10**6}
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    run_dir = work / "run"
    env = {**os.environ, "METARAY_GRPC_TOKEN": TOKEN, "OMP_NUM_THREADS": "1"}
    log = (work / "train.log").open("w")  # noqa: SIM115 (closed after the run)
    proc = subprocess.Popen([sys.executable, "-m", "metaray.cli", "train", str(work / "config.yaml"), "--run-dir",
                             str(run_dir), "--workers", "1", "--grpc-port", "0"], env=env, cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        address = None
        while address is None:
            if proc.poll() is not None:
                raise SystemExit(f"training exited early; see {work / 'train.log'}")
            info = run_dir / "driver.json"
            address = json.loads(info.read_text()).get("grpc_address") if info.is_file() else None
            time.sleep(0.2)
        while not read_rows(run_dir):
            time.sleep(0.2)
        rss_start = rss_bytes(proc.pid)
        start_row = read_rows(run_dir)[-1]

        results: mp.Queue = mp.get_context("spawn").Queue()
        ctx = mp.get_context("spawn")
        per_proc = [args.clients // args.procs + (i < args.clients % args.procs) for i in range(args.procs)]
        procs = [ctx.Process(target=client_process, args=(address, n, args.duration, args.push_size, results))
                 for n in per_proc if n]
        t0 = time.monotonic()
        for p in procs:
            p.start()
        rss = []
        while any(p.is_alive() for p in procs):
            rss.append(rss_bytes(proc.pid))
            time.sleep(1.0)
        counts: collections.Counter = collections.Counter()
        for _ in procs:
            counts.update(results.get(timeout=60))
        for p in procs:
            p.join()
        elapsed = time.monotonic() - t0
        end_iteration = read_rows(run_dir)[-1]["iteration"]
        while read_rows(run_dir)[-1]["iteration"] < end_iteration + 3:  # the queue drains into updates
            time.sleep(0.2)
        row = read_rows(run_dir)[-1]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        log.close()

    accepted = counts["accepted"]
    episodes_per_trial = config["rl2"]["episodes_per_trial"]
    result = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                    "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d"),
        "clients": args.clients, "client_processes": len(procs), "push_size": args.push_size,
        "duration_s": round(elapsed, 1),
        "client_counts": dict(counts),
        "run_counts": {k: row[k] - start_row.get(k, 0) for k in row if k.startswith("grpc_")},
        "iterations_during": row["iteration"] - start_row["iteration"],
        "accepted_trials_per_s": round(accepted / elapsed, 1),
        "accepted_episodes_per_s": round(accepted * episodes_per_trial / elapsed, 1),
        "driver_rss_mib": {"start": round(rss_start / 2**20, 1), "max": round(max(rss) / 2**20, 1),
                           "end": round(rss[-1] / 2**20, 1)},
        "ray_worker_env_steps_per_s_last": row["env_steps_per_s"],
    }
    rc = result["run_counts"]
    result["counts_match"] = (accepted == rc["grpc_rollouts_accepted_total"]
                              == rc["grpc_rollouts_learned_total"] + rc["grpc_rollouts_stale_total"])
    args.out = args.out or script_output(__file__, "grpc_push.json")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    if not result["counts_match"]:
        raise SystemExit("counts do not match")


if __name__ == "__main__":
    main()
