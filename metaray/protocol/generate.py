"""Regenerate the gRPC Python code from metaray.proto: `python -m metaray.protocol.generate`.

The generated files are committed (users need no grpcio-tools); a test regenerates them into a
temporary directory and fails when they differ from the committed ones.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO = Path(__file__).with_name("metaray.proto")
ROOT = PROTO.parents[2]  # the directory holding the `metaray` package
GENERATED = ("metaray_pb2.py", "metaray_pb2.pyi", "metaray_pb2_grpc.py")


def generate(out_dir: Path = ROOT) -> list[Path]:
    """Write the generated modules under `out_dir`/metaray/protocol; returns their paths."""
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    rel = PROTO.relative_to(ROOT)
    args = ["protoc", f"-I{ROOT}", f"--python_out={out_dir}", f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}", str(rel)]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {rel}")
    return [out_dir / rel.parent / name for name in GENERATED]


if __name__ == "__main__":
    for path in generate():
        print(path)
    sys.exit(0)
