"""Soak run: resident memory of the driver, learner, parameter server and rollout workers over a
long training run (target: flat).

Starts `metaray train CONFIG` (local Ray) with a very large iteration count, samples every
process's RSS from /proc every `--every` seconds for `--minutes`, then stops the run with
SIGTERM (checkpoint, exit). Reports each role's RSS and private (unshared) memory at the start
and end, the slope of a least-squares line over the second half of the samples (MiB per
hour; after warm-up) and the lowest value in each 5-minute window after 3 minutes of warm-up (a
leak raises this floor; memory the allocator frees and reuses only swings above it); only the run's own processes are sampled (descendants of its driver); and
writes benchmarks/results/soak/<date>-<commit>/soak[_NAME].json and .png.

    python benchmarks/soak.py --config configs/quickstart.yaml --minutes 30
    python benchmarks/soak.py --attach DRIVER_PID --run-dir RUN_DIR --minutes 30 --name hcv   # a run already going

With `--attach` the run is neither started nor stopped: its driver's processes are sampled as
they are (e.g. a long training run), and the results go to soak_NAME.json / .png.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from metaray.bench.provenance import script_output

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))
from rl2_duan import machine  # noqa: E402

ROLES = {"ray::RolloutWorker": "worker", "ray::Learner": "learner", "ray::ParameterServer": "parameter_server"}


def private_mib(pid: int) -> float | None:
    """Private (unshared) resident memory: RSS also counts touched pages of Ray's shared-memory
    object store, which grow towards the store's size without being a leak."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
        return (int(fields["Private_Clean"].split()[0]) + int(fields["Private_Dirty"].split()[0])) / 1024
    except (OSError, KeyError, ValueError):
        return None


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def descends_from(pid: int, ancestor: int) -> bool:
    """The local Ray instance's raylet is a child of the driver and actors are its children, so
    this keeps the run's own processes and skips other Ray instances on the machine."""
    while pid > 1:
        pid = parent(pid)
        if pid == ancestor:
            return True
    return False


def ray_actor_processes(driver: int) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or not descends_from(int(proc.name), driver):
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        for prefix, role in ROLES.items():
            if cmd.startswith(prefix):
                found.setdefault(role, []).append(int(proc.name))
    return found


def slope_mib_per_hour(t: list[float], y: list[float]) -> float:
    half = len(t) // 2
    tt, yy = np.array(t[half:]), np.array(y[half:])
    if len(tt) < 3:
        return float("nan")
    return float(np.polyfit(tt / 3600.0, yy, 1)[0])


def window_floors(t: list[float], y: list[float], window_s: float = 300.0, warmup_s: float = 180.0) -> list[float]:
    """The lowest value in each `window_s` window after warm-up: memory that an allocator keeps
    and hands back swings up and down between updates, so a leak shows as a rising floor, not as
    a line fitted through the swings."""
    floors: dict[int, float] = {}
    for tt, yy in zip(t, y, strict=True):
        if tt >= warmup_s:
            k = int((tt - warmup_s) // window_s)
            floors[k] = min(floors.get(k, float("inf")), yy)
    return [round(floors[k], 1) for k in sorted(floors)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--every", type=float, default=10.0)
    parser.add_argument("--attach", type=int, help="sample this running driver (pid) instead of starting a run")
    parser.add_argument("--run-dir", type=Path, help="with --attach: the run's directory")
    parser.add_argument("--name", default="", help="suffix of the result files (soak_NAME.json)")
    args = parser.parse_args()
    if args.attach and args.run_dir is None:
        raise SystemExit("--attach needs --run-dir")
    if args.attach:
        run_dir, proc, driver = args.run_dir, None, args.attach
        first_row = len((run_dir / "progress.jsonl").read_text().splitlines())
    else:
        run_dir = RESULTS / "runs" / f"soak-{Path(args.config).stem}"
        subprocess.run(["rm", "-rf", str(run_dir)], check=True)
        exe = str(Path(sys.executable).with_name("metaray"))
        proc = subprocess.Popen([exe, "train", args.config, "--run-dir", str(run_dir), "--iterations", "10000000",
                                 "--set", "checkpoint.every=100"], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        driver, first_row = proc.pid, 0
    samples: dict[str, list[tuple[float, float]]] = {}
    start = time.time()
    try:
        while time.time() - start < args.minutes * 60:
            time.sleep(args.every)
            if (proc.poll() is not None) if proc else not Path(f"/proc/{driver}").exists():
                raise SystemExit("training exited early")
            now = time.time() - start
            pids = {"driver": driver}
            for role, found in ray_actor_processes(driver).items():
                for i, pid in enumerate(sorted(found)):
                    pids[f"{role}_{i}" if role == "worker" else role] = pid
            values = {}
            for name, pid in pids.items():
                values[name] = rss_mib(pid)
                values[f"{name} (private)"] = private_mib(pid)
            for key, value in values.items():
                if value is not None:
                    samples.setdefault(key, []).append((now, value))
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=300)
    rows = [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines()]
    config = str(run_dir / "config.yaml") if args.attach else args.config
    report = {
        "config": config, "minutes": args.minutes, "iterations": rows[-1]["iteration"] - (rows[first_row - 1]["iteration"] if first_row else 0),
        "env_steps": rows[-1]["env_steps_total"] - (rows[first_row - 1]["env_steps_total"] if first_row else 0),
        "attached": bool(args.attach),
        "processes": {k: {"rss_start_mib": round(v[0][1], 1), "rss_end_mib": round(v[-1][1], 1),
                          "rss_max_mib": round(max(x for _, x in v), 1),
                          "slope_second_half_mib_per_hour": round(slope_mib_per_hour([t for t, _ in v], [x for _, x in v]), 2),
                          "floor_per_5min_after_warmup_mib": window_floors([t for t, _ in v], [x for _, x in v]),
                          "samples": len(v)} for k, v in sorted(samples.items())},
        "date": time.strftime("%Y-%m-%d"), "machine": machine(),
    }
    stem = f"soak_{args.name}" if args.name else "soak"
    output = script_output(__file__, f"{stem}.json")
    output.write_text(json.dumps({**report, "series": samples}, indent=1) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2), constrained_layout=True)
    for key, series in sorted(samples.items()):
        ax.plot([t / 60 for t, _ in series], [x for _, x in series], label=key)
    ax.set(xlabel="minutes", ylabel="RSS (MiB)", title=f"soak: {config}, {report['iterations']} iterations")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(output.with_suffix(".png"), dpi=100)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
