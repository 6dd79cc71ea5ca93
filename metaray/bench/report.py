"""`metaray report RESULTS...`: bench results aggregated the way the field now expects (Agarwal et
al. 2021, rliable): mean and interquartile mean over seeds x held-out tasks with 95 %
stratified-bootstrap confidence intervals (resampling seeds within each task), probability of
improvement between the runs a suite compares, a performance profile, and the learning curves.
Writes REPORT.md and REPORT.png; reads only result files, so it reruns anywhere."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from metaray.bench.suite import SuiteError, require_bench_extra
from metaray.bench.trial import SCHEMA_VERSION

BOOTSTRAP_REPS = 2000


class ReportError(ValueError):
    """Nothing to report, or a file that is not a bench result: one line."""


def load_results(paths: list[Path], required: bool = True) -> list[dict[str, Any]]:
    """Result files, or directories holding them (not recursive: one bench's results); with
    `required` false, none is an empty list rather than an error (a stopped bench's folder)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.glob("*.json"))
        elif path.is_file():
            files.append(path)
        else:
            raise ReportError(f"{path}: no such file or directory")
    results = []
    for file in files:
        try:
            data = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ReportError(f"{file}: not readable as JSON ({err})") from None
        if not isinstance(data, dict) or "schema_version" not in data:
            continue  # other files beside the results (the report's own data, notes)
        if data["schema_version"] != SCHEMA_VERSION:
            raise ReportError(f"{file}: result schema {data['schema_version']}, this metaray reads {SCHEMA_VERSION}")
        results.append(data)
    if not results and required:
        raise ReportError(f"no bench results in {', '.join(map(str, paths))}")
    return results


def _matrix(rows: list[dict[str, Any]]) -> np.ndarray:
    """seeds x held-out tasks; seed means (seeds x 1) when the seeds were not evaluated on the same tasks."""
    lengths = {len(r["per_task"]) for r in rows}
    if len(lengths) == 1 and 0 not in lengths:
        return np.array([r["per_task"] for r in rows], dtype=np.float64)
    return np.array([[r["score"]] for r in rows], dtype=np.float64)


def time_to(curve: list[list[float]], target: float, window: int = 10) -> tuple[float, float] | None:
    """(env steps, wall seconds) where the mean training return over `window` curve points first
    reaches `target`; None if it never does."""
    points = [c for c in curve if c[2] is not None]
    if not points:  # a classical baseline: no training curve
        return None
    returns = np.array([c[2] for c in points], dtype=np.float64)
    for i in range(min(window, len(points)) - 1, len(points)):
        if returns[max(0, i - window + 1): i + 1].mean() >= target:
            return float(points[i][0]), float(points[i][1])
    return None


def aggregate(results: list[dict[str, Any]], compare: list[tuple[str, str]] | None = None,
              reps: int = BOOTSTRAP_REPS, seed: int = 0, target: float | None = None) -> dict[str, Any]:
    from rliable import library as rly
    from rliable import metrics

    np.random.seed(seed)  # rliable's bootstrap draws from numpy's global generator
    by_run: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        by_run[r["run"]].append(r)
    runs = {}
    for name, rows in by_run.items():
        rows.sort(key=lambda r: r["seed"])
        scores = _matrix(rows)
        seed_scores = np.array([[r["score"]] for r in rows])
        point, ci = rly.get_interval_estimates(
            {name: scores}, lambda x: np.array([metrics.aggregate_mean(x), metrics.aggregate_iqm(x)]), reps=reps)
        runs[name] = {
            "algo": rows[0]["algo"], "family": rows[0]["family"], "metric": rows[0]["metric"],
            "benchmark": rows[0].get("benchmark", rows[0]["family"]),
            "reward_versions": sorted({str((r.get("task_params") or {})["reward_version"]) for r in rows
                                       if "reward_version" in (r.get("task_params") or {})}),
            "seeds": [r["seed"] for r in rows], "seed_scores": [r["score"] for r in rows],
            "mean": float(point[name][0]), "iqm": float(point[name][1]),
            "mean_ci": [float(ci[name][0, 0]), float(ci[name][1, 0])] if len(rows) > 1 else None,
            "iqm_ci": [float(ci[name][0, 1]), float(ci[name][1, 1])] if len(rows) > 1 else None,
            "seed_std": float(np.std(seed_scores, ddof=1)) if len(rows) > 1 else None,
            "tasks": int(scores.shape[1]), "env_steps": _mean([r["env_steps"] for r in rows]),
            "wall_time_s": _mean([r["wall_time_s"] for r in rows]),
            "load_1m": machine_load(rows),
            "commits": sorted({f"{r['commit']}{'+dirty' if r['dirty'] else ''}" for r in rows}),
            "dates": sorted({r["date"] for r in rows}),
            # on the held-out curve where the runs have one (eval.every: each point is a mean over
            # the held-out tasks already), else over 10 points of the training curve
            **({"time_to_target": [time_to(r["heldout_curve"], target, window=1) if r.get("heldout_curve")
                                   else time_to(r["curve"], target) for r in rows]} if target is not None else {}),
            "time_to_on": "held-out" if any(r.get("heldout_curve") for r in rows) else "training",
            "trained": any(r["curve"] for r in rows),
        }
    improvements = []
    for a, b in compare or []:
        if a not in by_run or b not in by_run:
            continue
        x = np.array([[r["score"]] for r in by_run[a]])
        y = np.array([[r["score"]] for r in by_run[b]])
        point, ci = rly.get_interval_estimates({"p": (x, y)}, metrics.probability_of_improvement, reps=reps)
        spread = len(x) > 1 and len(y) > 1  # resampling one seed gives that seed back: no interval
        improvements.append({"a": a, "b": b, "p": float(np.ravel(point["p"])[0]),
                             "ci": [float(ci["p"][0].ravel()[0]), float(ci["p"][1].ravel()[0])] if spread else None})
    return {"runs": runs, "improvements": improvements, "target": target}


def _mean(values: list[Any]) -> float | None:
    vals = [v for v in values if isinstance(v, (int, float))]
    return float(np.mean(vals)) if vals else None


def _fmt(value: float | None, ci: list[float] | None = None) -> str:
    if value is None:
        return "—"
    digits = 3 if abs(value) < 10 else 2
    text = f"{value:.{digits}f}"
    return f"{text} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else text


def _steps(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value / 1e6:.2f}M" if value >= 1e5 else f"{value:,.0f}"


def machine_load(rows: list[dict[str, Any]]) -> float | None:
    """The mean 1-minute load average while the runs' starts trained (weighted by samples; the
    starts that recorded one), or None: what else had the cores when the wall times were taken."""
    loads = [start["load_1m"] for r in rows for start in r.get("commits", []) if start.get("load_1m")]
    samples = sum(load["samples"] for load in loads)
    return round(sum(load["mean"] * load["samples"] for load in loads) / samples, 2) if samples else None


def markdown(summary: dict[str, Any], results: list[dict[str, Any]], title: str) -> str:
    first = results[0]
    m = first["machine"]
    lines = [f"# {title}", "",
             f"Machine: {m['cores']} cores, {m['cpu']}, GPU {m['gpu'] or 'none'}, {m.get('memory_gib')} GiB; "
             + ", ".join(f"{k} {v}" for k, v in first["packages"].items() if v) + ".",
             f"Held-out metric: `{first['metric']}` ({first['eval'].get('split', 'test')} split, "
             f"{first['eval'].get('num_tasks')} tasks, eval seed {first['eval'].get('seed')}). "
             f"Intervals: 95 % stratified bootstrap over seeds within each task ({BOOTSTRAP_REPS} resamples, rliable); "
             "none with one seed.", "",
             "| run | algo / benchmark | seeds | mean [95 % CI] | IQM [95 % CI] | per seed | env steps | wall per seed | commit | date |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in summary["runs"].items():
        per_seed = ", ".join(_fmt(s) for s in r["seed_scores"])
        wall = f"{r['wall_time_s'] / 60:.1f} min" if r["wall_time_s"] is not None else "—"
        if r["wall_time_s"] is not None and r.get("load_1m") is not None:
            wall += f" (load {r['load_1m']:.1f}, {m['cores']} cores)"
        rewards = f" (reward {', '.join(r['reward_versions'])})" if r.get("reward_versions") else ""
        lines.append(f"| {name} | {r['algo']} / {r['benchmark']}{rewards} | {len(r['seeds'])} | {_fmt(r['mean'], r['mean_ci'])} | "
                     f"{_fmt(r['iqm'], r['iqm_ci'])} | {per_seed} | {_steps(r['env_steps'])} | {wall} | "
                     f"{', '.join(r['commits'])} | {', '.join(r['dates'])} |")
    if summary.get("target") is not None:
        lines += ["", f"Time to {summary['target']:g} (per seed, env steps / wall minutes; on the held-out curve "
                  "where a run evaluated while training, `eval.every`, else the mean training return over 10 curve "
                  "points):", "", "| run | on | per seed |", "|---|---|---|"]
        for name, r in summary["runs"].items():
            if not r["trained"]:
                continue  # a classical baseline: nothing to reach
            cells = ["never" if t is None else f"{_steps(t[0])} / {t[1] / 60:.1f} min" for t in r["time_to_target"]]
            lines.append(f"| {name} | {r.get('time_to_on', 'training')} | {', '.join(cells)} |")
    if summary["improvements"]:
        lines += ["", "Probability of improvement (a run's seed score above another's; 0.5 = no difference; no interval "
                  "where a run has one seed):", "",
                  "| a | b | P(a > b) [95 % CI] |", "|---|---|---|"]
        for imp in summary["improvements"]:
            lines.append(f"| {imp['a']} | {imp['b']} | {_fmt(imp['p'], imp['ci'])} |")
    return "\n".join(lines) + "\n"


def log_axes(results: list[dict[str, Any]], spread: float = 20.0) -> tuple[bool, bool]:
    """Whether the env-steps and the wall-time axes are logarithmic: when the runs' lengths differ by
    more than `spread` times (PEARL's 500k env steps beside MAML's 100M+), a linear axis squeezes the
    short runs into its first pixels."""
    def extent(column: int) -> bool:
        ends = []
        for r in results:
            rows = [row for row in (r.get("heldout_curve") or []) + (r.get("curve") or []) if row[column]]
            if rows:
                ends.append(max(float(row[column]) for row in rows))
        return len(ends) > 1 and min(ends) > 0 and max(ends) / min(ends) > spread
    return extent(0), extent(1)


def plot(summary: dict[str, Any], results: list[dict[str, Any]], out: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rliable import library as rly
    from rliable import plot_utils

    names = list(summary["runs"])
    colors = dict(zip(names, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4, strict=False))
    fig, axes = plt.subplots(1, 4, figsize=(21, 4.2))
    ax = axes[0]
    for i, name in enumerate(names):
        r = summary["runs"][name]
        ci = r["mean_ci"] or [r["mean"], r["mean"]]
        ax.errorbar([r["mean"]], [i], xerr=[[r["mean"] - ci[0]], [ci[1] - r["mean"]]], fmt="o", color=colors[name], capsize=4)
        ax.scatter(r["seed_scores"], [i] * len(r["seed_scores"]), marker="|", color=colors[name], s=80)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel(f"held-out {results[0]['metric']} (mean, 95 % CI; | = seeds)")
    ax.invert_yaxis()

    # with eval.every the curves are the held-out metric (training return faint behind it)
    held_out = any(r.get("heldout_curve") for r in results)
    for ax, column, label, log in zip((axes[1], axes[2]), (0, 1), ("env steps", "wall minutes"), log_axes(results),
                                      strict=True):
        if log:
            ax.set_xscale("log")
            label += " (log)"
        for name in names:
            for r in (x for x in results if x["run"] == name):
                first = r["seed"] == summary["runs"][name]["seeds"][0]
                curve = np.array([row for row in r["curve"] if row[2] is not None], dtype=np.float64)
                if len(curve):
                    ax.plot(curve[:, column] / (60 if column == 1 else 1), curve[:, 2], color=colors[name],
                            alpha=0.25 if held_out else 0.7, lw=1, label=None if held_out or not first else name)
                points = np.array(r.get("heldout_curve") or [], dtype=np.float64)
                if len(points):
                    ax.plot(points[:, column] / (60 if column == 1 else 1), points[:, 2], color=colors[name], lw=1.5,
                            marker=".", label=name if first else None)
        if summary.get("target") is not None:
            ax.axhline(summary["target"], color="grey", ls=":", lw=1)
        ax.set_xlabel(label)
        ax.set_ylabel(f"held-out {results[0]['metric']} (faint: training return)" if held_out else "training return")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:  # only baselines: nothing trained, so no curve
            ax.text(0.5, 0.5, "no training curves\n(baselines only)", ha="center", va="center", transform=ax.transAxes,
                    color="grey")

    ax = axes[3]
    # a performance profile compares runs on the same benchmark: those of the most common one
    benches = [summary["runs"][n]["benchmark"] for n in names]
    family = max(set(benches), key=benches.count)
    same = [n for n in names if summary["runs"][n]["benchmark"] == family]
    scores = {n: _matrix(sorted((x for x in results if x["run"] == n), key=lambda x: x["seed"])) for n in same}
    lo = min(float(s.min()) for s in scores.values())
    hi = max(float(s.max()) for s in scores.values())
    taus = np.linspace(lo, hi, 101) if hi > lo else np.array([lo - 1, lo, lo + 1])
    profiles, cis = rly.create_performance_profile(scores, taus, reps=200)
    plot_utils.plot_performance_profiles(profiles, taus, performance_profile_cis=cis, colors=colors,
                                         xlabel=f"held-out {results[0]['metric']} τ ({family})",
                                         ylabel="fraction of (seed, task) above τ", ax=ax,
                                         labelsize=10, ticklabelsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_report(paths: list[Path], out: Path | None = None, compare: list[tuple[str, str]] | None = None,
                 title: str | None = None, target: float | None = None) -> dict[str, Path]:
    """REPORT.md, REPORT.png and REPORT.json (the aggregate) next to `out` (default: the first
    directory given, as report.md/png/json)."""
    try:
        require_bench_extra("rliable.library")
    except SuiteError as err:
        raise ReportError(str(err)) from None
    results = load_results(paths)
    suites = sorted({r["suite"] for r in results})
    title = title or f"metaray bench: {', '.join(suites)}"
    summary = aggregate(results, compare, target=target)
    base = Path(out) if out is not None else (Path(paths[0]) if Path(paths[0]).is_dir() else Path(paths[0]).parent) / "report"
    base = base.with_suffix("") if base.suffix in (".md", ".png", ".json") else base
    md = base.with_name(base.name + ".md")
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(markdown(summary, results, title))
    js = base.with_name(base.name + ".summary.json")
    js.write_text(json.dumps(summary, indent=1))
    png = plot(summary, results, base.with_name(base.name + ".png"), title)
    return {"markdown": md, "plot": png, "summary": js}


INDEX_BEGIN = "<!-- begin: generated by `metaray report --index`; edit the results, not this table -->"
INDEX_END = "<!-- end: generated -->"


def _wall(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds / 3600:.1f} h" if seconds >= 7200 else f"{seconds / 60:.1f} min"


def index_markdown(root: Path, link_base: Path | None = None, reps: int = BOOTSTRAP_REPS) -> str:
    """One table of every suite result under ROOT/<suite>/<bench>/: each run's seeds, mean and IQM
    with their intervals, every seed's score, env steps, wall time, commits and dates, and a link to
    the suite's newest report. A (run, seed) run again in a later bench counts once, its newest
    result; the table says how many older ones it left out."""
    root = Path(root)
    if not root.is_dir():
        raise ReportError(f"{root}: no such directory")
    by_suite: dict[str, dict[tuple[str, int], dict[str, Any]]] = defaultdict(dict)
    reports: dict[str, Path] = {}
    superseded: dict[str, int] = defaultdict(int)
    for bench_dir in sorted(p for p in root.glob("*/*") if p.is_dir()):  # dated names sort by time
        for r in load_results([bench_dir], required=False):
            key = (r["run"], r["seed"])
            superseded[r["suite"]] += key in by_suite[r["suite"]]
            by_suite[r["suite"]][key] = r
            if (bench_dir / "report.md").is_file():
                reports[r["suite"]] = bench_dir / "report.md"
    if not by_suite:
        raise ReportError(f"no bench results under {root}/<suite>/<bench>/")
    base = Path(link_base) if link_base is not None else Path.cwd()
    shown = os.path.relpath(root, base)
    lines = [f"Every suite result under `{shown}/`, aggregated as in each report: mean and IQM over seeds x "
             "held-out tasks with 95 % stratified-bootstrap intervals (rliable, "
             f"{reps} resamples; none with one seed), every seed's score, env steps and wall time per seed.", "",
             "| suite | run | algo / benchmark | held-out metric | seeds | mean [95 % CI] | IQM [95 % CI] | per seed "
             "| env steps | wall per seed | commit | date |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for suite in sorted(by_suite):
        results = sorted(by_suite[suite].values(), key=lambda r: (r["run"], r["seed"]))
        summary = aggregate(results, reps=reps)
        link = os.path.relpath(reports[suite], base) if suite in reports else None
        for i, (name, r) in enumerate(summary["runs"].items()):
            first = next(x for x in results if x["run"] == name)
            cell = (f"[{suite}]({link})" if link else suite) if i == 0 else ""
            if i == 0 and superseded[suite]:
                cell += f" ({superseded[suite]} older reruns left out)"
            ev = first["eval"]
            metric = f"{r['metric']}, {ev.get('num_tasks')} {ev.get('split', 'test')} tasks"
            rewards = (f" (reward {', '.join(r['reward_versions'])})"
                       if r.get("reward_versions") and "reward_version" not in r["benchmark"] else "")
            lines.append(
                f"| {cell} | {name} | {r['algo']} / {r['benchmark']}{rewards} | {metric} | {len(r['seeds'])} | "
                f"{_fmt(r['mean'], r['mean_ci'])} | {_fmt(r['iqm'], r['iqm_ci'])} | "
                f"{', '.join(_fmt(s) for s in r['seed_scores'])} | {_steps(r['env_steps'])} | {_wall(r['wall_time_s'])} | "
                f"{', '.join(r['commits'])} | {', '.join(r['dates'])} |")
    return "\n".join(lines) + "\n"


def _index_block(text: str, path: Path) -> tuple[int, int]:
    begin, end = text.find(INDEX_BEGIN), text.find(INDEX_END)
    if begin < 0 or end < begin:
        raise ReportError(f"{path}: no generated-index block (a line {INDEX_BEGIN!r}, later {INDEX_END!r})")
    return begin + len(INDEX_BEGIN), end


def update_readme(readme: Path, root: Path, check: bool = False) -> bool:
    """Put the index between README's markers (nothing else changes). Returns whether the README's
    block differed; with `check`, writes nothing."""
    readme = Path(readme)
    try:
        text = readme.read_text()
    except OSError as err:
        raise ReportError(f"{readme}: not readable ({err.strerror})") from None
    start, stop = _index_block(text, readme)
    new = text[:start] + "\n" + index_markdown(root, link_base=readme.resolve().parent) + text[stop:]
    if new != text and not check:
        tmp = readme.with_name(readme.name + ".tmp")
        tmp.write_text(new)
        os.replace(tmp, readme)  # never half-written
    return new != text
