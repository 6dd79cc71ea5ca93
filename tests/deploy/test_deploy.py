"""What operators deploy with: the Ray cluster-launcher YAML (checked with Ray's own schema), the
KubeRay manifests, the Dockerfile, and a real Ray Jobs submission of a training run."""

from __future__ import annotations

import copy
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import free_port, kill_processes_of

from metaray.cli import build_parser
from metaray.cluster.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RAY = str(Path(sys.executable).with_name("ray"))


# ------------------------------------------------------------------ Ray cluster launcher
def test_cluster_yaml_passes_rays_cluster_config_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((DEPLOY / "ray" / "cluster.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(config)))  # raises on any schema violation
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    cpu = types["rollout_cpu"]
    assert cpu["min_workers"] == 0 and cpu["max_workers"] > 1  # autoscaling rollout workers
    assert types["learner_gpu"]["resources"]["GPU"] == 1
    assert any("pip install" in c and "metaray" in c for c in config["setup_commands"])
    assert all("--metrics-export-port" in c for c in config["head_start_ray_commands"] if c.startswith("ray start"))


def test_a_typo_in_the_cluster_yaml_is_caught_by_the_same_validation():
    from jsonschema import ValidationError
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((DEPLOY / "ray" / "cluster.yaml").read_text())
    config["available_node_types"]["rollout_cpu"]["min_wrkers"] = 1
    with pytest.raises(ValidationError, match="min_wrkers"):
        validate_config(prepare_config(config))


# ------------------------------------------------------------------ KubeRay
def groups(spec: dict) -> dict[str, dict]:
    return {g["groupName"]: g for g in spec["workerGroupSpecs"]}


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_manifests_have_head_cpu_and_gpu_groups_and_scrape_annotations(name):
    doc = yaml.safe_load((DEPLOY / "kuberay" / name).read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == {"raycluster.yaml": "RayCluster",
                                                               "rayjob.yaml": "RayJob"}[name]
    spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["template"]["spec"]["containers"][0]["image"]
    annotations = head["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "9100"
    g = groups(spec)
    cpu, gpu = g["rollout-cpu"], g["learner-gpu"]
    assert cpu["minReplicas"] <= cpu["replicas"] <= cpu["maxReplicas"] and cpu["maxReplicas"] > 1
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    for group in (cpu, gpu):
        resources = group["template"]["spec"]["containers"][0]["resources"]
        assert resources["requests"]["cpu"] and resources["limits"]["memory"]


def test_rayjob_entrypoint_is_a_valid_metaray_command_with_a_config_in_the_repo():
    doc = yaml.safe_load((DEPLOY / "kuberay" / "rayjob.yaml").read_text())
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[0] == "metaray"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "train" and args.address == "auto"
    assert (ROOT / args.config).is_file()
    load_config(ROOT / args.config)  # the config it names is valid


# ------------------------------------------------------------------ container image
def test_dockerfile_installs_metaray_with_a_cpu_torch_by_default_and_its_entrypoint_is_metaray():
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    instructions = [line.split(None, 1) for line in text.splitlines() if line and not line.startswith("#")]
    assert ["ENTRYPOINT", '["metaray"]'] in instructions
    args = {rest.split("=", 1)[0]: rest.split("=", 1)[1] for op, rest in instructions if op == "ARG" and "=" in rest}
    assert args["TORCH_INDEX"].endswith("/whl/cpu")  # CUDA via --build-arg TORCH_INDEX=...
    for op, rest in instructions:
        if op == "COPY":
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), source
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv/" in ignored and ".git/" in ignored


def test_the_images_install_step_builds_a_complete_package(tmp_path):
    """What `RUN pip install .` does in the image, without Docker (no daemon here): a wheel built
    from exactly the files the Dockerfile copies, installed on its own, imports every part
    (gRPC code and proto included) and runs the `metaray` entry point."""
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    context = tmp_path / "context"
    context.mkdir()
    for line in text.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                src = ROOT / source
                (shutil.copytree if src.is_dir() else shutil.copy)(src, context / source)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(context)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("metaray-*.whl")
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    for name in ("metaray.proto", "metaray_pb2.py", "metaray_pb2.pyi", "metaray_pb2_grpc.py"):
        assert (target / "metaray" / "protocol" / name).is_file(), name
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = ("import metaray, metaray.cli, metaray.cluster.grpc_service, metaray.actors.remote, metaray.learner.maml,"
             " metaray.learner.rl2, metaray.learner.adversarial, metaray.core, metaray.networks;"
             "print(metaray.__file__)")
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip().startswith(str(target))
    entry = (target / "bin" / "metaray").read_text()
    assert "from metaray.cli import main" in entry
    out = subprocess.run([sys.executable, str(target / "bin" / "metaray"), "tasks"], env=env, capture_output=True,
                         text=True, check=True, cwd=tmp_path)
    assert "halfcheetah-vel" in out.stdout


# ------------------------------------------------------------------ Ray Jobs
@pytest.fixture(scope="module")
def head_with_dashboard():
    temp_dir = tempfile.mkdtemp(prefix="mrj-", dir="/tmp")
    port, dashboard = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    subprocess.run([RAY, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=3",
                    f"--temp-dir={temp_dir}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={free_port()}",
                    "--disable-usage-stats"],
                   check=True, capture_output=True, env=env, timeout=180)
    yield f"http://127.0.0.1:{dashboard}", env
    kill_processes_of(temp_dir)


def test_ray_job_submit_runs_training_to_success(head_with_dashboard, tiny_config, tmp_path):
    address, env = head_with_dashboard
    run = tmp_path / "run"
    entry = f"{shlex.quote(sys.executable)} -m metaray.cli train {tiny_config} --address auto --run-dir {run}"
    job = [RAY, "job", "submit", "--address", address, "--submission-id", "metaray-test", "--no-wait", "--",
           *shlex.split(entry)]
    deadline = time.monotonic() + 180
    while True:  # the dashboard's job agent registers a little after `ray start` returns
        submit = subprocess.run(job, capture_output=True, text=True, env=env, timeout=120)
        if submit.returncode == 0 or "No available agent" not in submit.stderr or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert submit.returncode == 0, (submit.stdout + submit.stderr)[-3000:]
    logs = subprocess.run([RAY, "job", "logs", "--address", address, "--follow", "metaray-test"],
                          capture_output=True, text=True, env=env, timeout=600)
    status = subprocess.run([RAY, "job", "status", "--address", address, "metaray-test"], capture_output=True,
                            text=True, env=env, timeout=120)
    assert "job 'metaray-test' succeeded" in status.stdout.lower(), (status.stdout + logs.stdout)[-3000:]
    assert "done: 3 iterations" in logs.stdout
    rows = [json.loads(line) for line in (run / "progress.jsonl").read_text().splitlines()]
    assert rows[-1]["iteration"] == 3 and (run / "checkpoints").is_dir()
    assert json.loads((run / "driver.json").read_text())["state"] == "finished"
