"""What the Kubernetes API server and the KubeRay operator do with a manifest, without either:
validation against KubeRay's vendored CRD schemas (with Kubernetes' schema extensions), the
fields the API server would prune, and the head Service KubeRay builds from the head container's
ports. Written from KubeRay v1.3.2 .. v1.7.0 (ray-operator/controllers/ray/common/service.go,
getServicePorts; common/pod.go, DefaultHeadPodTemplate; utils/constant.go; utils/validation.go)."""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft4Validator, FormatChecker, ValidationError
from jsonschema.validators import extend

SCHEMAS = Path(__file__).resolve().parent / "kuberay_schemas"
SOURCES = json.loads((SCHEMAS / "sources.json").read_text())
KUBERAY_TAGS = [source["tag"] for source in SOURCES["sources"]]  # oldest and newest supported

# utils/constant.go (identical in v1.3.2 .. v1.7.0): the ports and names KubeRay injects or looks up
KUBERAY_HEAD_PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001, "metrics": 8080}
DEFAULT_SERVE_PORT = ("serve", 8000)
# utils/validation.go (v1.4.0+; constant.go MaxRayClusterNameLength = 63 - len("-serve-svc")):
# a RayJob's cluster is named NAME-xxxxx, hence 6 fewer
MAX_NAME_LENGTH = {"RayCluster": 53, "RayJob": 47}
# Kubernetes IsValidPortName (IANA_SVC_NAME): what a container port name must be
IANA_SVC_NAME = re.compile(r"^(?=.*[a-z])(?!.*--)[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@cache
def crd_schema(kind: str, tag: str) -> dict[str, Any]:
    """KubeRay's v1 `openAPIV3Schema` for KIND (RayCluster or RayJob) at operator TAG."""
    return json.loads(gzip.decompress((SCHEMAS / f"{kind.lower()}-{tag}.json.gz").read_bytes()))


# ------------------------------------------------------------------ schema validation
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_formats = FormatChecker()


@_formats.checks("int32")
def _int32(value: Any) -> bool:
    return not _is_int(value) or -(2**31) <= value < 2**31


@_formats.checks("int64")
def _int64(value: Any) -> bool:
    return not _is_int(value) or -(2**63) <= value < 2**63


def _int_or_string(validator: Any, enabled: bool, instance: Any, schema: dict) -> Iterator[ValidationError]:
    if enabled and not (isinstance(instance, str) or _is_int(instance)):
        yield ValidationError(f"{instance!r} is neither an integer nor a string")


def _type(validator: Any, types: Any, instance: Any, schema: dict) -> Iterator[ValidationError]:
    if instance is None and schema.get("nullable"):
        return
    yield from Draft4Validator.VALIDATORS["type"](validator, types, instance, schema)


def _list_type(validator: Any, kind: str, instance: Any, schema: dict) -> Iterator[ValidationError]:
    """`set` and `map` lists reject duplicates (for `map`, of the key fields, defaults applied as
    the API server does before it validates: a port without `protocol` is TCP)."""
    if not isinstance(instance, list) or kind not in ("set", "map"):
        return
    if kind == "set":
        keys = [json.dumps(item, sort_keys=True) for item in instance]
    else:
        item_props = schema.get("items", {}).get("properties", {})
        names = schema.get("x-kubernetes-list-map-keys", [])
        keys = [tuple(item.get(n, item_props.get(n, {}).get("default")) for n in names) for item in instance]
    for index, key in enumerate(keys):
        if key in keys[:index]:
            yield ValidationError(f"duplicate entry {key} in a list of type {kind}")


K8sValidator = extend(Draft4Validator, {
    "type": _type,
    "x-kubernetes-int-or-string": _int_or_string,
    "x-kubernetes-list-type": _list_type,
})


def schema_errors(doc: dict, schema: dict) -> list[str]:
    """Every violation of a CRD's structural schema, as `path: message` lines. OpenAPI v3.0
    schema objects are JSON Schema draft 4 plus Kubernetes' `x-kubernetes-*` extensions and
    `nullable`; CEL rules (`x-kubernetes-validations`) are not evaluated."""
    validator = K8sValidator(schema, format_checker=_formats)
    errors = sorted(validator.iter_errors(doc), key=lambda e: _path(e.absolute_path))
    return [f"{_path(e.absolute_path) or '<root>'}: {e.message}" for e in errors]


def _path(parts: Any) -> str:
    """spec.containers[0].ports, as pruned_fields writes it."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")


def pruned_fields(doc: Any, schema: dict, path: str = "") -> list[str]:
    """The fields the API server would silently drop: an object field not declared under the
    schema's `properties` where the schema allows no `additionalProperties` and does not set
    `x-kubernetes-preserve-unknown-fields`. The root's `metadata` is ObjectMeta, never pruned."""
    out: list[str] = []
    if isinstance(doc, list):
        for index, item in enumerate(doc):
            out += pruned_fields(item, schema.get("items", {}), f"{path}[{index}]")
        return out
    if not isinstance(doc, dict):
        return out
    props = schema.get("properties", {})
    extra = schema.get("additionalProperties")
    keep_unknown = schema.get("x-kubernetes-preserve-unknown-fields") is True or extra is True
    embedded = schema.get("x-kubernetes-embedded-resource") is True
    for key, value in doc.items():
        where = f"{path}.{key}" if path else key
        if not path and key == "metadata":
            continue
        if key in props:
            out += pruned_fields(value, props[key], where)
        elif isinstance(extra, dict):
            out += pruned_fields(value, extra, where)
        elif not (keep_unknown or (embedded and key in ("apiVersion", "kind", "metadata"))):
            out.append(where)
    return out


def check_against_crd(doc: dict, tag: str) -> list[str]:
    """Schema violations and would-be-pruned fields of a RayCluster or RayJob at KubeRay TAG."""
    schema = crd_schema(doc["kind"], tag)
    return schema_errors(doc, schema) + [f"{field}: unknown field, pruned" for field in pruned_fields(doc, schema)]


# ------------------------------------------------------------------ KubeRay's port and name rules
def cluster_spec(doc: dict) -> dict:
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]


def ray_container(template: dict) -> dict:
    """KubeRay treats the first container as the Ray container (utils.RayContainerIndex = 0)."""
    return template["spec"]["containers"][0]


def head_service_ports(spec: dict) -> list[tuple[str, int]]:
    """The head Service's (name, port) pairs as KubeRay's getServicePorts builds them: the Ray
    container's ports by name (an unnamed one becomes `<port>-port`; the defaults when there are
    none), plus `metrics: 8080` whenever no port is named `metrics`."""
    ports: dict[str, int] = {}
    for port in ray_container(spec["headGroupSpec"]["template"]).get("ports", []):
        ports[port.get("name") or f"{port['containerPort']}-port"] = port["containerPort"]
    if not ports:
        ports = {**KUBERAY_HEAD_PORTS, DEFAULT_SERVE_PORT[0]: DEFAULT_SERVE_PORT[1]}
    ports.setdefault("metrics", KUBERAY_HEAD_PORTS["metrics"])
    return sorted(ports.items())


def port_rule_violations(doc: dict) -> list[str]:
    """What the API server or KubeRay would refuse, or quietly get wrong, in the Services and
    pods KubeRay makes from DOC (a RayCluster or RayJob)."""
    spec, kind, name = cluster_spec(doc), doc["kind"], doc["metadata"]["name"]
    out: list[str] = []
    if len(name) > MAX_NAME_LENGTH[kind] or not DNS1035_LABEL.match(name):
        out.append(f"{kind} name {name!r} is not a DNS-1035 label of at most {MAX_NAME_LENGTH[kind]} characters")
    service = head_service_ports(spec)
    numbers = [port for _, port in service]
    for port in sorted({p for p in numbers if numbers.count(p) > 1}):
        names = [n for n, p in service if p == port]
        out.append(f"head Service has TCP/{port} twice ({', '.join(names)}): the API server rejects it")
    by_name = dict(service)
    for want, port in KUBERAY_HEAD_PORTS.items():
        if by_name.get(want) != port:
            out.append(f"head container does not expose {want}: {port} (KubeRay's name and default)")
    for svc_name, _ in service:
        if svc_name == "serve" or svc_name.startswith("serve-"):  # isServingPort (v1.7.0)
            out.append(f"head port {svc_name!r} is taken for Ray Serve, which metaray does not run")
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]
    for group_name, group in groups:
        if group_name != "head" and not DNS1123_LABEL.match(group_name):
            out.append(f"group name {group_name!r} is not a DNS-1123 label")
        container = ray_container(group["template"])
        ports = container.get("ports", [])
        names = [p["name"] for p in ports if "name" in p]
        for port_name in names:
            if not IANA_SVC_NAME.match(port_name):
                out.append(f"{group_name}: port name {port_name!r} is not an IANA_SVC_NAME (<= 15 chars, a-z0-9-)")
        for port_name in sorted({n for n in names if names.count(n) > 1}):
            out.append(f"{group_name}: port name {port_name!r} used twice")
        # KubeRay adds `metrics: 8080` to every Ray container without a port named metrics
        # (DefaultHeadPodTemplate / DefaultWorkerPodTemplate) and passes --metrics-export-port
        # 8080 unless rayStartParams say otherwise
        effective = [(p.get("name"), p["containerPort"], p.get("protocol", "TCP")) for p in ports]
        if "metrics" not in names:
            effective.append(("metrics", KUBERAY_HEAD_PORTS["metrics"], "TCP"))
        keys = [(number, protocol) for _, number, protocol in effective]
        for number, protocol in sorted({k for k in keys if keys.count(k) > 1}):
            clash = [n for n, p, q in effective if (p, q) == (number, protocol)]
            out.append(f"{group_name}: {protocol}/{number} declared twice once KubeRay adds its ports ({', '.join(map(str, clash))})")
        metrics = dict((n, p) for n, p, _ in effective)["metrics"]
        export = int(group.get("rayStartParams", {}).get("metrics-export-port", KUBERAY_HEAD_PORTS["metrics"]))
        if export != metrics:
            out.append(f"{group_name}: Ray exports metrics on {export} but the port named metrics is {metrics}")
    head_params = spec["headGroupSpec"].get("rayStartParams", {})
    for param, want in (("port", "gcs-server"), ("dashboard-port", "dashboard"), ("ray-client-server-port", "client")):
        if param in head_params and int(head_params[param]) != by_name.get(want):
            out.append(f"head rayStartParams {param}={head_params[param]} but the port named {want} is {by_name.get(want)}")
    return out
