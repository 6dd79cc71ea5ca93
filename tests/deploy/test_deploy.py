"""What operators deploy with: the Ray cluster-launcher YAML (checked with Ray's own schema), the
KubeRay manifests, the Dockerfile, and a real Ray Jobs submission of a training run."""

from __future__ import annotations

import argparse
import copy
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import pytest
import yaml
from conftest import free_port, kill_processes_of
from kuberay_checks import (
    KUBERAY_HEAD_PORTS,
    KUBERAY_TAGS,
    check_against_crd,
    cluster_spec,
    head_service_ports,
    port_rule_violations,
    pruned_fields,
    ray_container,
    schema_errors,
)
from packaging.requirements import Requirement
from packaging.version import Version

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
MANIFESTS = ["raycluster.yaml", "rayjob.yaml"]
KINDS = {"raycluster.yaml": "RayCluster", "rayjob.yaml": "RayJob"}


def documents(name: str) -> dict[str, dict]:
    """A manifest file's objects by kind (each file: a PersistentVolumeClaim and the Ray object)."""
    docs = [d for d in yaml.safe_load_all((DEPLOY / "kuberay" / name).read_text()) if d]
    by_kind = {d["kind"]: d for d in docs}
    assert len(by_kind) == len(docs), f"{name}: two objects of one kind"
    return by_kind


def ray_object(name: str) -> dict:
    return documents(name)[KINDS[name]]


def groups(spec: dict) -> dict[str, dict]:
    return {g["groupName"]: g for g in spec["workerGroupSpecs"]}


def pod_templates(spec: dict) -> dict[str, dict]:
    """The head's and every worker group's pod template, by group ("head" for the head)."""
    return {"head": spec["headGroupSpec"]["template"], **{n: g["template"] for n, g in groups(spec).items()}}


def wants_gpu(template: dict) -> bool:
    return "nvidia.com/gpu" in ray_container(template).get("resources", {}).get("limits", {})


def train_commands(name: str) -> list[argparse.Namespace]:
    """Every `metaray train` a manifest starts: the RayJob's entrypoint, and the `ray job submit
    ... -- metaray train ...` its header comment tells an operator to run."""
    lines = [ray_object(name)["spec"].get("entrypoint", "")]
    lines += [line.split(" -- ", 1)[1] for line in (DEPLOY / "kuberay" / name).read_text().splitlines()
              if line.startswith("#") and " -- metaray train " in line]
    commands = [shlex.split(line) for line in lines if line.startswith("metaray train ")]
    return [build_parser().parse_args(argv[1:]) for argv in commands]


@pytest.mark.parametrize("name", MANIFESTS)
def test_kuberay_manifests_have_head_cpu_and_gpu_groups_and_scrape_annotations(name):
    doc = ray_object(name)
    assert doc["apiVersion"] == "ray.io/v1"
    spec = cluster_spec(doc)
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
        assert group["template"]["metadata"]["annotations"]["prometheus.io/port"] == \
            group["rayStartParams"]["metrics-export-port"]  # workers: Ray's own metrics


@pytest.mark.parametrize("tag", KUBERAY_TAGS)
@pytest.mark.parametrize("name", MANIFESTS)
def test_kuberay_manifests_pass_the_operators_crd_schema_with_no_field_pruned(name, tag):
    """The API server validates a RayCluster/RayJob against the CRD's schema and silently drops
    fields the schema does not declare; both are checked against the oldest and newest
    supported operator."""
    assert check_against_crd(ray_object(name), tag) == []


def test_a_misspelled_field_is_reported_as_pruned_and_a_wrong_type_as_invalid():
    doc = copy.deepcopy(ray_object("rayjob.yaml"))
    head = doc["spec"]["rayClusterSpec"]["headGroupSpec"]
    head["template"]["spec"]["containers"][0]["volumeMount"] = head["template"]["spec"]["containers"][0].pop("volumeMounts")
    head["rayStartParams"]["num-cpus"] = 2  # rayStartParams are strings
    head["template"]["spec"]["containers"][0]["ports"].append({"containerPort": 9100, "name": "again"})
    problems = check_against_crd(doc, KUBERAY_TAGS[-1])
    assert problems == [
        "spec.rayClusterSpec.headGroupSpec.rayStartParams.num-cpus: 2 is not of type 'string'",
        "spec.rayClusterSpec.headGroupSpec.template.spec.containers[0].ports: duplicate entry (9100, 'TCP') in a list of type map",
        "spec.rayClusterSpec.headGroupSpec.template.spec.containers[0].volumeMount: unknown field, pruned",
    ]


def test_the_pruning_walker_keeps_what_the_schema_lets_through():
    """additionalProperties and x-kubernetes-preserve-unknown-fields keep unknown fields (the
    real CRDs use the first; the second is Kubernetes' other way), declared ones recurse."""
    schema = {"type": "object", "properties": {
        "spec": {"type": "object", "properties": {
            "params": {"type": "object", "additionalProperties": {"type": "string"}},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                     "properties": {"known": {"type": "object", "properties": {"a": {"type": "integer"}}}}},
            "items": {"type": "array", "items": {"type": "object", "properties": {"n": {"type": "string"}}}}}}}}
    doc = {"metadata": {"name": "x", "anything": 1},
           "spec": {"params": {"k": "v"}, "free": {"other": 1, "known": {"a": 1, "b": 2}},
                    "items": [{"n": "a"}, {"n": "b", "m": "c"}], "extra": True}}
    assert pruned_fields(doc, schema) == ["spec.free.known.b", "spec.items[1].m", "spec.extra"]
    assert schema_errors({"spec": {"params": {"k": 1}}}, schema) == ["spec.params.k: 1 is not of type 'string'"]


@pytest.mark.parametrize("name", MANIFESTS)
def test_kuberay_manifests_follow_kuberays_service_port_and_naming_rules(name):
    """What KubeRay makes of the head's ports (getServicePorts adds `metrics: 8080` unless a port
    is named `metrics`): one Service port per number, KubeRay's names for gcs-server, client,
    dashboard and metrics (the RayJob controller looks the dashboard up by name), valid names."""
    doc = ray_object(name)
    assert port_rule_violations(doc) == []
    service = dict(head_service_ports(cluster_spec(doc)))
    assert {k: service[k] for k in ("gcs-server", "client", "dashboard", "metrics")} == \
        {"gcs-server": 6379, "client": 10001, "dashboard": 8265, "metrics": 8080}


def test_kuberays_rules_flag_the_metrics_port_collision_and_missing_or_bad_names():
    doc = copy.deepcopy(ray_object("raycluster.yaml"))
    spec = cluster_spec(doc)
    head = ray_container(spec["headGroupSpec"]["template"])
    head["ports"] = [p for p in head["ports"] if p["name"] not in ("metrics", "client")]
    head["ports"].append({"containerPort": 8080, "name": "ray-metrics"})
    head["ports"].append({"containerPort": 9200, "name": "metaray-metrics-2"})
    groups(spec)["rollout-cpu"]["groupName"] = "Rollout_CPU"
    doc["metadata"]["name"] = "m" * 54
    assert port_rule_violations(doc) == [
        f"RayCluster name {'m' * 54!r} is not a DNS-1035 label of at most 53 characters",
        "head Service has TCP/8080 twice (metrics, ray-metrics): the API server rejects it",
        "head container does not expose client: 10001 (KubeRay's name and default)",
        "head: port name 'metaray-metrics-2' is not an IANA_SVC_NAME (<= 15 chars, a-z0-9-)",
        "head: TCP/8080 declared twice once KubeRay adds its ports (ray-metrics, metrics)",
        "group name 'Rollout_CPU' is not a DNS-1123 label",
    ]


@pytest.mark.parametrize("name", MANIFESTS)
def test_the_metaray_ports_on_the_head_are_the_ones_its_driver_is_started_with(name):
    """Every head port that is not Ray's is the driver's --metrics-port (scraped: the annotation)
    or --grpc-port, as the manifest's own `metaray train` command or comment says."""
    doc = ray_object(name)
    template = cluster_spec(doc)["headGroupSpec"]["template"]
    ours = {p["name"]: p["containerPort"] for p in ray_container(template)["ports"]
            if p["name"] not in KUBERAY_HEAD_PORTS}
    (command,) = train_commands(name)
    assert ours["metaray-metrics"] == command.metrics_port == int(template["metadata"]["annotations"]["prometheus.io/port"])
    text = (DEPLOY / "kuberay" / name).read_text()
    for port_name, port in ours.items():
        if port_name != "metaray-metrics":
            assert port_name == "metaray-grpc" and f"--grpc-port {port}" in text, port_name
            assert build_parser().parse_args(["train", "c.yaml", "--grpc-port", str(port)]).grpc_port == port


@pytest.mark.parametrize("name", MANIFESTS)
def test_the_run_directory_is_on_a_persistent_volume_claim_mounted_on_the_head(name):
    """A run directory on the head's disk dies with the cluster (the RayJob's 600 s after the
    job); the driver runs on the head, so one ReadWriteOnce claim there keeps it."""
    docs = documents(name)
    claim = docs["PersistentVolumeClaim"]
    assert claim["apiVersion"] == "v1" and claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    spec = cluster_spec(docs[KINDS[name]])
    pod = spec["headGroupSpec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == claim["metadata"]["name"]]
    (mount,) = [m for m in ray_container(spec["headGroupSpec"]["template"])["volumeMounts"] if m["name"] == volume["name"]]
    assert pod["securityContext"]["fsGroup"] == image_user()[1]  # the image's user can write it
    for command in train_commands(name):  # (a str would be a storage URI)
        assert isinstance(command.run_dir, Path) and Path(mount["mountPath"]) in command.run_dir.parents, command.run_dir
    for group in groups(spec).values():  # workers do not need it (and an RWO claim may not attach)
        assert not any("persistentVolumeClaim" in v for v in group["template"]["spec"].get("volumes", []))


def test_rayjob_entrypoint_is_a_valid_metaray_command_with_a_config_in_the_repo():
    doc = ray_object("rayjob.yaml")
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[0] == "metaray"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "train" and args.address == "auto" and args.run_dir
    assert (ROOT / args.config).is_file()
    load_config(ROOT / args.config)  # the config it names is valid
    assert args.config.startswith("configs/") and ("COPY", "configs ./configs") in dockerfile()  # and the image has it


@pytest.mark.parametrize("name", MANIFESTS)
def test_the_gpu_group_tolerates_the_gpu_taint_and_selects_gpu_nodes_and_no_other_group_does(name):
    for group_name, template in pod_templates(cluster_spec(ray_object(name))).items():
        pod = template["spec"]
        tolerates = any(t.get("key") == "nvidia.com/gpu" and t.get("operator") == "Exists"
                        for t in pod.get("tolerations", []))
        assert tolerates == bool(pod.get("nodeSelector")) == wants_gpu(template), group_name


# ------------------------------------------------------------------ container image
def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (OP, rest), continuation lines joined."""
    text = (DEPLOY / "docker" / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return [(op, " ".join(rest.split())) for op, rest in (line.split(None, 1) for line in lines)]


def build_args() -> dict[str, str]:
    return dict(rest.split("=", 1) for op, rest in dockerfile() if op == "ARG" and "=" in rest)


def image_user() -> tuple[int, int]:
    """uid and gid the image runs as (USER UID:GID, created by useradd/groupadd)."""
    (user,) = [rest for op, rest in dockerfile() if op == "USER"]
    uid, gid = (int(x) for x in user.split(":"))
    (run,) = [rest for op, rest in dockerfile() if op == "RUN" and "useradd" in rest]
    assert f"--uid {uid}" in run and f"--gid {gid}" in run
    return uid, gid


def documented_images() -> dict[str, str]:
    """The tags the Dockerfile's header builds: {"cpu": ..., "cuda": ...} (CUDA: a cu* torch index)."""
    images: dict[str, str] = {}
    for line in (DEPLOY / "docker" / "Dockerfile").read_text().splitlines():
        if line.startswith("#") and "docker build" in line:
            argv = shlex.split(line.lstrip("# "))
            overrides = dict(argv[i + 1].split("=", 1) for i, arg in enumerate(argv) if arg == "--build-arg")
            variant = "cuda" if "/whl/cu" in overrides.get("TORCH_INDEX", build_args()["TORCH_INDEX"]) else "cpu"
            assert variant not in images, f"two {variant} builds documented"
            images[variant] = argv[argv.index("-t") + 1]
    return images


def test_dockerfile_installs_metaray_with_a_cpu_torch_by_default_and_its_entrypoint_is_metaray():
    instructions = dockerfile()
    assert ("ENTRYPOINT", '["metaray"]') in instructions
    assert build_args()["TORCH_INDEX"].endswith("/whl/cpu")  # CUDA via --build-arg TORCH_INDEX=...
    ignored = [p.rstrip("/") for p in (ROOT / ".dockerignore").read_text().split()]
    assert ".venv" in ignored and ".git" in ignored
    for op, rest in instructions:
        if op == "COPY":
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), source
                assert not any(fnmatch.fnmatch(source.rstrip("/"), p) for p in ignored), f"{source} is in .dockerignore"


def test_the_extras_the_image_installs_are_declared_by_the_project():
    """`pip install ".[x]"` of an undeclared extra only warns: the image would lack pyarrow."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    installs = [m for op, rest in dockerfile() if op == "RUN" for m in re.findall(r'"\.\[([^]]*)\]"', rest)]
    assert installs == ["storage"]
    assert "storage" in extras and any(d.startswith("pyarrow") for d in extras["storage"])


def test_the_images_ray_is_the_manifests_ray_version_and_serves_every_operators_probes():
    """Every node needs the same Ray, and KubeRay v1.6+ chooses its probes by rayVersion (HTTP
    /api/healthz for Ray >= 2.53.0), so the image pins Ray to the manifests' rayVersion; KubeRay
    v1.3-v1.5 probe with `bash -c "wget ... | grep success"`: a Debian image with wget."""
    ray_version = build_args()["RAY_VERSION"]
    versions = {name: cluster_spec(ray_object(name))["rayVersion"] for name in MANIFESTS}
    assert set(versions.values()) == {ray_version}, versions
    assert Version(ray_version) >= Version("2.53.0")
    pins = [rest for op, rest in dockerfile() if op == "RUN" and "ray[default]" in rest]
    assert pins and all('"ray[default]==${RAY_VERSION}"' in rest for rest in pins)
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (ray_requirement,) = [Requirement(r) for r in requires if Requirement(r).name == "ray"]
    assert ray_requirement.specifier.contains(ray_version)  # the pin satisfies metaray's own requirement
    (base,) = [rest for op, rest in dockerfile() if op == "FROM"]
    assert base.startswith("python:") and base.endswith("-slim")  # Debian: bash
    assert any(op == "RUN" and "apt-get install" in rest and " wget " in f"{rest} " for op, rest in dockerfile())


def test_the_manifests_name_exactly_the_images_the_dockerfile_builds():
    """CPU image for the head (KubeRay runs the autoscaler and RayJob submitter from it too) and the
    CPU group, CUDA image for the GPU group; one placeholder registry that deploy/README.md says to
    replace."""
    images = documented_images()
    assert set(images) == {"cpu", "cuda"} and images["cpu"] != images["cuda"]
    registry = {image.split("/", 1)[0] for image in images.values()}
    assert registry == {"registry.example.com"}
    for name in MANIFESTS:
        for group_name, template in pod_templates(cluster_spec(ray_object(name))).items():
            want = images["cuda" if wants_gpu(template) else "cpu"]
            assert [c["image"] for c in template["spec"]["containers"]] == [want], f"{name}: {group_name}"
    readme = (DEPLOY / "README.md").read_text()
    assert all(f"docker push {image}" in readme for image in images.values())
    assert "`registry.example.com` is a placeholder: replace it" in readme


def test_deploy_readme_names_the_supported_operator_versions_and_the_object_storage_run_dir():
    readme = (DEPLOY / "README.md").read_text()
    assert f"KubeRay {KUBERAY_TAGS[0]} through {KUBERAY_TAGS[-1]}" in readme
    assert "## Run directory in object storage" in readme and "--run-dir s3://" in readme
    for claim in (documents(name)["PersistentVolumeClaim"]["metadata"]["name"] for name in MANIFESTS):
        assert claim in readme


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
