"""Extract KubeRay's v1 RayCluster and RayJob `openAPIV3Schema` from a KubeRay git checkout into
gzipped JSON here, so tests validate the manifests without a cluster or the 1 MB CRD files.

    python tests/deploy/kuberay_schemas/vendor.py PATH/TO/kuberay.git v1.3.2 v1.7.0

Descriptions are dropped (they are most of the size and no rule); everything else is kept.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
CRDS = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}


def strip_descriptions(node: Any) -> Any:
    """A schema node without `description`; `properties` maps field names (a field may be called
    "description") to schema nodes, so its keys are kept as they are."""
    if isinstance(node, list):
        return [strip_descriptions(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "description" and isinstance(value, str):
            continue
        if key in ("properties", "patternProperties", "definitions") and isinstance(value, dict):
            out[key] = {name: strip_descriptions(sub) for name, sub in value.items()}
        else:
            out[key] = strip_descriptions(value)
    return out


def extract(repo: str, tag: str) -> dict[str, str]:
    commit = subprocess.run(["git", "-C", repo, "rev-parse", f"{tag}^{{commit}}"], check=True,
                            capture_output=True, text=True).stdout.strip()
    for kind, name in CRDS.items():
        text = subprocess.run(["git", "-C", repo, "show", f"{tag}:ray-operator/config/crd/bases/{name}"],
                              check=True, capture_output=True, text=True).stdout
        crd = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schema = strip_descriptions(version["schema"]["openAPIV3Schema"])
        data = json.dumps(schema, sort_keys=True, separators=(",", ":")).encode()
        # mtime=0: the same CRD always gives the same bytes
        (HERE / f"{kind.lower()}-{tag}.json.gz").write_bytes(gzip.compress(data, 9, mtime=0))
    return {"tag": tag, "commit": commit}


def main(argv: list[str]) -> None:
    repo, *tags = argv
    sources = [extract(repo, tag) for tag in tags]
    (HERE / "sources.json").write_text(json.dumps(
        {"repository": "https://github.com/ray-project/kuberay", "crd_version": "v1",
         "files": "{raycluster,rayjob}-TAG.json.gz: spec.versions[name=v1].schema.openAPIV3Schema"
                  " of ray-operator/config/crd/bases/ray.io_{rayclusters,rayjobs}.yaml, descriptions dropped",
         "command": "python tests/deploy/kuberay_schemas/vendor.py PATH/TO/kuberay.git " + " ".join(tags),
         "sources": sources}, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
