"""Looking at a run from its directory: `metaray plot` (learning curves as PNG) and `metaray status`
(a compact table of the latest progress). Both read only files, so they work on a running run,
a finished one, and one copied off a cluster."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from metaray.cluster.checkpoint import CheckpointError, latest_checkpoint, read_progress

RETURN_LABELS = {"trial_return": "trial return", "return_pre": "pre-adaptation",
                 "return_post": "post-adaptation", "heldout_mean_return": "held-out, while training (eval.every)"}


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"{run_dir} is not a metaray run directory (no config.yaml)")
    rows = read_progress(run_dir)
    if not rows:
        raise CheckpointError(f"{run_dir} has no progress yet (progress.jsonl is empty or missing)")
    return rows


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def plot_run(run_dir: Path, out: Path | None = None, title: str | None = None) -> Path:
    """Returns vs env steps (pre and post adaptation, or per trial), throughput, and seconds per
    iteration split into sampling and learner; held-out results from eval.json as markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = _rows(run_dir)
    out = Path(out) if out is not None else run_dir / "curves.png"
    evaluation = _read_json(run_dir / "eval.json")
    curve = (evaluation or {}).get("episode_return_means")
    panels = 4 if curve else 3
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.2), constrained_layout=True)
    ax_ret, ax_rate, ax_time = axes[:3]
    _plot_returns(ax_ret, rows, evaluation)
    if curve:
        _plot_adaptation(axes[3], curve, evaluation)
    ax_rate.plot([r["iteration"] for r in rows], [r.get("env_steps_per_s", 0.0) for r in rows], color="tab:green", lw=1.2)
    ax_rate.set(xlabel="iteration", ylabel="env steps / s", title="throughput")
    ax_rate.grid(alpha=0.3)
    _plot_times(ax_time, rows)
    config = (run_dir / "config.yaml").read_text()
    algo = next((line.split(":", 1)[1].strip() for line in config.splitlines() if line.startswith("algo:")), "?")
    fig.suptitle(title or f"{run_dir.name} ({algo}, {len(rows)} iterations, {rows[-1]['env_steps_total']:,} env steps)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out)
    return out


def _plot_returns(ax: Any, rows: list[dict[str, Any]], evaluation: dict[str, Any] | None) -> None:
    steps = [r["env_steps_total"] / 1e6 for r in rows]
    for key, label in RETURN_LABELS.items():
        if any(key in r for r in rows):
            xs = [s for s, r in zip(steps, rows, strict=True) if key in r]
            held_out = key.startswith("heldout_")  # a point every eval.every iterations
            ax.plot(xs, [r[key] for r in rows if key in r], label=label, lw=1.4 if not held_out else 1.8,
                    marker="o" if held_out else None, ms=3, color="black" if held_out else None)
    for key, label in {"return_pre": "held-out pre", "mean_return": "held-out"}.items():
        if evaluation is not None and key in evaluation:
            ax.scatter([steps[-1]], [evaluation[key]], marker="*", s=120, zorder=3,
                       label=f"{label} ({evaluation.get('num_tasks', '?')} {evaluation.get('split', '')} tasks)")
    ax.set(xlabel="env steps (millions)", ylabel="mean return", title="returns")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def _plot_adaptation(ax: Any, curve: list[float], evaluation: dict[str, Any]) -> None:
    """eval.json's mean return of each episode on the held-out tasks: how the return changes as
    the agent adapts (RL²: the episodes of a trial; PEARL: after 0, 1, 2, ... episodes of context)."""
    ax.plot(range(len(curve)), curve, marker="o", color="tab:purple", lw=1.4)
    ax.set(xlabel="episodes of experience on the task before this one", ylabel="mean return",
           title=f"held-out adaptation ({evaluation.get('num_tasks', '?')} {evaluation.get('split', '')} tasks)")
    ax.set_xticks(range(len(curve)))
    ax.grid(alpha=0.3)


def _plot_times(ax: Any, rows: list[dict[str, Any]]) -> None:
    iters, walls = [r["iteration"] for r in rows], [r["wall_time_s"] for r in rows]
    per_iter = [b - a for a, b in zip([0.0, *walls[:-1]], walls, strict=True)]
    ax.plot(iters, per_iter, label="whole iteration", color="black", lw=1.2)
    for key, label in (("sampling_s", "sampling"), ("learner_step_s", "learner step")):
        if any(key in r for r in rows):
            ax.plot([r["iteration"] for r in rows if key in r], [r[key] for r in rows if key in r], label=label, lw=1.0)
    ax.set(xlabel="iteration", ylabel="seconds", title="time per iteration")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def run_status(run_dir: Path) -> dict[str, Any]:
    """The latest progress row plus whether the run is still going (from driver.json)."""
    run_dir = Path(run_dir)
    rows = _rows(run_dir)
    last = rows[-1]
    driver = _read_json(run_dir / "driver.json") or {}
    state = driver.get("state", "unknown")
    if state == "running" and driver.get("host") == socket.gethostname() and not _pid_alive(driver.get("pid")):
        state = "stopped (driver gone)"
    live = state == "running"
    checkpoint = latest_checkpoint(run_dir)
    recent = rows[-10:]
    span = recent[-1]["wall_time_s"] - (rows[-11]["wall_time_s"] if len(rows) > 10 else 0.0)
    steps = recent[-1]["env_steps_total"] - (rows[-11]["env_steps_total"] if len(rows) > 10 else 0)
    status = {
        "run_dir": str(run_dir), "state": state, "iteration": last["iteration"],
        "target_iterations": driver.get("target_iterations"), "wall_time_s": last["wall_time_s"],
        "env_steps_total": last["env_steps_total"], "env_steps_per_s": steps / span if span > 0 else None,
        # a running driver rewrites driver.json every few seconds, also while an iteration waits:
        # workers alive now, those asked for that do not take work yet, and why none is alive
        "workers_alive": driver.get("workers_alive", last.get("workers_alive")) if live else last.get("workers_alive"),
        "worker_restarts_total": driver.get("worker_restarts_total", last.get("worker_restarts_total", 0)) if live
        else last.get("worker_restarts_total", 0),
        "workers_pending": driver.get("workers_pending", 0) if live else 0,
        "workers_target": driver.get("workers_target") if live else None,
        "stalled": driver.get("stalled") if live else None,
        "driver_update_age_s": time.time() - driver["updated"] if live and "updated" in driver else None,
        "policy_version": last.get("policy_version"), "checkpoint": checkpoint.name if checkpoint else None,
        # the endpoints live as long as the driver: a stopped run serves nothing
        "metrics_url": driver.get("metrics_url") if state == "running" else None,
        "grpc_address": driver.get("grpc_address") if state == "running" else None,
        "grpc_rollouts_accepted_total": last.get("grpc_rollouts_accepted_total"),
        "grpc_rollouts_learned_total": last.get("grpc_rollouts_learned_total"),
        "last_update_age_s": time.time() - (run_dir / "progress.jsonl").stat().st_mtime,
    }
    status.update({k: last[k] for k in RETURN_LABELS if k in last})
    # held out every eval.every iterations: the newest such point, and its iteration
    scored = next((r for r in reversed(rows) if "heldout_mean_return" in r), None)
    if scored is not None:
        status["heldout_mean_return"], status["heldout_iteration"] = scored["heldout_mean_return"], scored["iteration"]
    return status


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def print_status(status: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=status["run_dir"], show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    target = f" of {status['target_iterations']}" if status["target_iterations"] else ""
    rate = status["env_steps_per_s"]
    rows = [
        ("state", status["state"]),
        ("iteration", f"{status['iteration']}{target}"),
        ("wall time", f"{status['wall_time_s']:.0f} s (last row {status['last_update_age_s']:.0f} s ago)"),
        ("env steps", f"{status['env_steps_total']:,}"),
        ("throughput", f"{rate:,.0f} env steps/s (last 10 iterations)" if rate else "-"),
        ("workers alive", str(status["workers_alive"]) + (
            f" ({status['workers_pending']} starting or waiting for a node with room, target {status['workers_target']})"
            if status.get("workers_pending") else "")),
        ("worker restarts", str(status["worker_restarts_total"])),
        ("policy version", str(status["policy_version"])),
    ]
    if status.get("stalled"):
        rows.insert(1, ("waiting", f"no rollout worker alive: {status['stalled']}"))
    rows += [(RETURN_LABELS[k], f"{status[k]:.3f}" + (f" (iteration {status['heldout_iteration']})" if k.startswith("heldout_") else ""))
             for k in RETURN_LABELS if k in status]
    rows += [("checkpoint", status["checkpoint"] or "-"), ("metrics", status["metrics_url"] or "off")]
    if status.get("grpc_address"):
        rows.append(("gRPC", f"{status['grpc_address']}: {status['grpc_rollouts_accepted_total'] or 0:,} rollouts "
                             f"accepted, {status['grpc_rollouts_learned_total'] or 0:,} learned"))
    for key, value in rows:
        table.add_row(key, value)
    Console().print(table)
