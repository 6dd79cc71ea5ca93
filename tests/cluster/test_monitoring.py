"""Observability against real servers: a live training run's Prometheus endpoint scraped by a real
Prometheus, the Grafana dashboard's queries checked against the live exposition, TensorBoard
scalars read back through a real TensorBoard server, and `metaray plot` / `metaray status`."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY_RL2, free_port
from prometheus_client.parser import text_string_to_metric_families

from metaray.cli import main
from metaray.cluster.checkpoint import read_progress
from metaray.cluster.metrics import METRIC_NAMES, RunMetrics

BIN = Path(sys.executable).parent
DASHBOARD = ROOT / "deploy" / "grafana" / "metaray-dashboard.json"


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read()


def poll(fn, timeout_s: float, what: str, interval_s: float = 0.25):
    """Call fn until it returns something truthy; fail with `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    last_err: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = fn()
            if value:
                return value
        except (OSError, urllib.error.URLError, ValueError, KeyError) as err:
            last_err = err
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what} (last error: {last_err})")


def scrape(url: str) -> dict[str, list]:
    """{sample name: [samples]} from a Prometheus text exposition."""
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(http_get(url).decode()):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


# ------------------------------------------------------------------ exporter, in process
def test_run_metrics_turn_progress_rows_into_counters_gauges_and_histograms():
    metrics = RunMetrics("maml", "point-nav", "run-a")
    url = metrics.serve(0, "127.0.0.1")
    try:
        base = {"iteration": 1, "env_steps_total": 1000, "episodes_total": 10, "policy_version": 1,
                "workers_alive": 2, "return_pre": -40.0, "return_post": -20.0, "learner_step_s": 1.5,
                "sampling_s": 0.4, "kl": 0.008, "meta_loss": -0.01, "grad_norm": 0.2, "env_steps_per_s": 500.0}
        metrics.observe(base)
        metrics.observe({**base, "iteration": 2, "env_steps_total": 2500, "episodes_total": 25, "policy_version": 2,
                         "return_post": -15.0, "learner_step_s": 0.3, "heldout_mean_return": -17.5})
        samples = scrape(url)
    finally:
        metrics.close()
    labels = {"algo": "maml", "family": "point-nav", "run": "run-a"}

    def value(name: str, **extra: str) -> float:
        hits = [s.value for s in samples[name] if s.labels == {**labels, **extra}]
        assert len(hits) == 1, (name, samples.get(name))
        return hits[0]

    assert value("metaray_env_steps_total") == 2500  # counters advance by the rows' increase
    assert value("metaray_episodes_total") == 25
    assert value("metaray_iteration") == 2 and value("metaray_policy_version") == 2
    assert value("metaray_return", stage="pre") == -40.0 and value("metaray_return", stage="post") == -15.0
    assert value("metaray_return", stage="heldout") == -17.5  # eval.every's held-out return
    assert value("metaray_learner_step_seconds_count") == 2
    assert value("metaray_learner_step_seconds_sum") == pytest.approx(1.8)
    assert value("metaray_learner_step_seconds_bucket", le="0.5") == 1  # 0.3 s in, 1.5 s out
    assert value("metaray_kl") == 0.008


def test_metrics_port_in_use_is_a_one_line_error(tiny_config, tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["train", str(tiny_config), "--serial", "--run-dir", str(tmp_path / "run"),
                     "--metrics-port", str(port), "--set", "metrics.host=127.0.0.1"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"metrics.port: cannot serve on 127.0.0.1:{port}" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("arg", ["-1", "70000", "http"])
def test_bad_metrics_port_argument(arg, tiny_config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(tiny_config), "--metrics-port", arg])
    assert exit_info.value.code == 2
    assert "--metrics-port" in capsys.readouterr().err


# ------------------------------------------------- a live run, a real Prometheus, the dashboard
@pytest.fixture(scope="module")
def live_run(tmp_path_factory):
    """`metaray train --serial --metrics-port P` running in a subprocess until the module ends."""
    tmp = tmp_path_factory.mktemp("live")
    config = {**TINY_RL2, "iterations": 100000, "checkpoint": {"every": 1000, "keep": 1},
              "metrics": {"host": "127.0.0.1", "tensorboard": False}}
    (tmp / "live.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    run_dir = tmp / "run"
    log = (tmp / "live.log").open("w")  # a file, not a pipe: nobody reads it while the run goes on, and a
    # full pipe would block the run's printing (and with it its Ctrl-C handling) until the kill
    proc = subprocess.Popen([str(BIN / "metaray"), "train", str(tmp / "live.yaml"), "--serial", "--run-dir",
                             str(run_dir), "--metrics-port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, text=True, cwd=tmp)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        poll(lambda: proc.poll() is None and b"metaray_iteration" in http_get(url) and read_progress(run_dir),
             60, "the run's metrics endpoint")
        yield {"url": url, "port": port, "run_dir": run_dir, "proc": proc}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_live_run_exposes_every_documented_metric_with_run_labels(live_run):
    text = http_get(live_run["url"]).decode()
    families = {f.name for f in text_string_to_metric_families(text)}
    exposed = {name.removesuffix("_total") for name in METRIC_NAMES}
    assert exposed <= families, exposed - families
    samples = scrape(live_run["url"])
    steps = samples["metaray_env_steps_total"][0]
    assert steps.labels == {"algo": "rl2", "family": "bandit", "run": "run"}
    assert steps.value > 0
    assert samples["metaray_return"][0].labels["stage"] == "trial"
    driver = json.loads((live_run["run_dir"] / "driver.json").read_text())
    assert driver["state"] == "running" and driver["metrics_url"] == live_run["url"]


@pytest.fixture(scope="module")
def prometheus(live_run, tmp_path_factory):
    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get("METARAY_REQUIRE_PROMETHEUS"):
            pytest.fail("prometheus not installed (CI installs it: apt-get install prometheus)")
        pytest.skip("prometheus server not installed (apt-get install prometheus)")
    tmp = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    config["scrape_configs"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{live_run['port']}"]}]
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    proc = subprocess.Popen([binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        poll(lambda: proc.poll() is None and http_get(f"http://127.0.0.1:{port}/-/ready"), 60, "prometheus to be ready")
        yield api
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def query(api: str, promql: str) -> list[dict]:
    body = json.loads(http_get(f"{api}/query?" + urllib.parse.urlencode({"query": promql})))
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_real_prometheus_scrapes_the_run(prometheus, live_run):
    rate = poll(lambda: [r for r in query(prometheus, "rate(metaray_env_steps_total[30s])") if float(r["value"][1]) > 0],
                90, "a positive env-step rate in Prometheus")
    assert rate[0]["metric"]["algo"] == "rl2" and rate[0]["metric"]["family"] == "bandit"
    returns = query(prometheus, 'metaray_return{stage="trial"}')
    assert len(returns) == 1 and returns[0]["metric"]["run"] == "run"
    up = query(prometheus, "up")
    assert [float(r["value"][1]) for r in up] == [1.0]


def dashboard_expressions(variables: bool = False) -> list[str]:
    """The panels' PromQL; with `variables`, also the template variables' label_values() queries."""
    model = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in model["panels"] for t in p.get("targets", [])]
    if variables:
        exprs += [v["query"]["query"] if isinstance(v.get("query"), dict) else v.get("query", "")
                  for v in model.get("templating", {}).get("list", []) if v.get("type") == "query"]
    return exprs


def test_grafana_dashboard_queries_only_metrics_the_run_exposes(live_run):
    model = json.loads(DASHBOARD.read_text())
    assert any(v.get("type") == "datasource" and v.get("query") == "prometheus"
               for v in model["templating"]["list"]), "needs a Prometheus datasource variable"
    exposed_samples = set(scrape(live_run["url"]))
    families = {f.name for f in text_string_to_metric_families(http_get(live_run["url"]).decode())}
    exprs = dashboard_expressions(variables=True)
    panels = [p["title"] for p in model["panels"] if p.get("targets")]
    assert len(panels) >= 8
    used = set()
    for expr in exprs:
        for name in re.findall(r"\bmetaray_[a-z_]+", expr):
            used.add(name)
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert name in exposed_samples or name.removesuffix("_total") in families or base in families, (
                f"dashboard query {expr!r} names {name}, which the exporter does not expose")
    wanted = {"metaray_env_steps_total", "metaray_return", "metaray_policy_version", "metaray_policy_lag",
              "metaray_workers_alive", "metaray_worker_restarts_total", "metaray_tasks_requeued_total",
              "metaray_learner_step_seconds_bucket", "metaray_sampling_seconds_bucket", "metaray_grpc_requests_total"}
    assert wanted <= used, wanted - used


def test_grafana_dashboard_queries_parse_in_real_prometheus(prometheus):
    for expr in dashboard_expressions():
        promql = expr.replace("$__rate_interval", "30s").replace("$__interval", "5s")
        promql = re.sub(r"\$\{?(run|algo|family)\}?", ".*", promql)
        query(prometheus, promql)  # asserts status success: the expression parses and evaluates


def test_status_of_a_running_run(live_run, capsys):
    assert main(["status", str(live_run["run_dir"]), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["state"] == "running" and status["iteration"] >= 1
    assert status["metrics_url"] == live_run["url"]


# --------------------------------------------------------------- finished run: TB, plot, status
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("finished")
    (tmp / "tiny.yaml").write_text(yaml.safe_dump({**TINY_RL2, "iterations": 4}))
    run_dir = tmp / "run"
    assert main(["train", str(tmp / "tiny.yaml"), "--serial", "--run-dir", str(run_dir)]) == 0
    return run_dir


def test_tensorboard_server_serves_the_runs_scalars(finished_run, tmp_path):
    port = free_port()
    proc = subprocess.Popen([str(BIN / "tensorboard"), "--logdir", str(finished_run / "tensorboard"), "--host",
                             "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/data/plugin/scalars"
    try:
        tags = poll(lambda: json.loads(http_get(f"{base}/tags")).get("."), 90, "TensorBoard to load the run")
        assert {"returns/trial_return", "throughput/env_steps_per_s", "runtime/policy_version",
                "learner/approx_kl"} <= set(tags), sorted(tags)
        points = json.loads(http_get(f"{base}/scalars?" + urllib.parse.urlencode({"tag": "returns/trial_return", "run": "."})))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    rows = read_progress(finished_run)
    assert [p[1] for p in points] == [r["env_steps_total"] for r in rows]  # step = env steps
    assert [p[2] for p in points] == pytest.approx([r["trial_return"] for r in rows])


def test_plot_writes_a_png_of_the_curves(finished_run, tmp_path, capsys):
    import matplotlib.image

    out = tmp_path / "curves.png"
    assert main(["plot", str(finished_run), "-o", str(out)]) == 0
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(out)
    assert image.shape[0] > 200 and image.shape[1] > 600
    assert image[..., :3].std() > 0.05  # something was drawn
    assert str(out) in capsys.readouterr().out


def test_plot_and_status_errors_are_one_line(tmp_path, finished_run, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert main(["status", str(tmp_path)]) == 2
    assert main(["plot", str(finished_run), "-o", str(tmp_path / "x.jpg")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("metaray ") and "error:" in line for line in err)


def test_status_of_a_finished_run_and_of_one_whose_driver_died(finished_run, tmp_path, capsys):
    assert main(["status", str(finished_run), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    rows = read_progress(finished_run)
    assert status["state"] == "finished" and status["iteration"] == 4 == rows[-1]["iteration"]
    assert status["trial_return"] == rows[-1]["trial_return"] and status["checkpoint"] == "iter-000004"

    copy = tmp_path / "copy"
    shutil.copytree(finished_run, copy)
    driver = json.loads((copy / "driver.json").read_text())
    dead = subprocess.Popen(["true"])
    dead.wait()
    (copy / "driver.json").write_text(json.dumps({**driver, "state": "running", "pid": dead.pid,
                                                  "metrics_url": "http://127.0.0.1:1/metrics"}))
    assert main(["status", str(copy), "--json"]) == 0
    gone = json.loads(capsys.readouterr().out)
    assert gone["state"] == "stopped (driver gone)" and gone["metrics_url"] is None  # no endpoint without its driver
    assert main(["status", str(copy)]) == 0  # the table
    assert "stopped (driver gone)" in capsys.readouterr().out


def test_status_shows_the_newest_held_out_point_and_its_iteration(finished_run, tmp_path, capsys):
    """With eval.every the held-out return is in every N-th progress row only: status shows the
    newest one and says which iteration it scored, not nothing between two points."""
    copy = tmp_path / "copy"
    shutil.copytree(finished_run, copy)
    rows = read_progress(copy)
    assert not any("heldout_mean_return" in r for r in rows)
    assert main(["status", str(copy), "--json"]) == 0
    assert "heldout_mean_return" not in json.loads(capsys.readouterr().out)
    rows[1]["heldout_mean_return"] = -12.5  # scored at iteration 2 (eval.every: 2), not yet again at 4
    (copy / "progress.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["status", str(copy), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["heldout_mean_return"] == -12.5 and status["heldout_iteration"] == 2 and status["iteration"] == 4
    assert main(["status", str(copy)]) == 0
    assert "-12.500 (iteration 2)" in capsys.readouterr().out
