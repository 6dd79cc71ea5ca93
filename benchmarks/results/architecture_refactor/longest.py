"""Top-N longest functions/methods under <root>/metaray by line count.

Usage: python longest.py ROOT [N]
Line count = end_lineno - lineno + 1 (def line to last body line; decorators
excluded). Excludes the generated gRPC code (metaray_pb2*.py, before and after it moved to metaray/protocol).
Nested functions are reported separately under their qualified name.
"""
import ast
import fnmatch
import os
import sys

root = sys.argv[1] if len(sys.argv) > 1 else "."
n = int(sys.argv[2]) if len(sys.argv) > 2 else 15
pkg = os.path.join(root, "metaray")
rows = []


def walk(node, prefix, rel):
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            q = prefix + child.name
            rows.append((child.end_lineno - child.lineno + 1, rel, q, child.lineno))
            walk(child, q + ".<locals>.", rel)
        elif isinstance(child, ast.ClassDef):
            walk(child, prefix + child.name + ".", rel)
        else:
            walk(child, prefix, rel)


for dirpath, dirnames, filenames in os.walk(pkg):
    dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
    for fn in sorted(filenames):
        if not fn.endswith(".py"):
            continue
        path = os.path.join(dirpath, fn)
        rel = os.path.relpath(path, root)
        if fnmatch.fnmatch(os.path.basename(rel), "metaray_pb2*.py"):
            continue
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
        walk(tree, "", rel)

rows.sort(key=lambda r: (-r[0], r[1], r[3]))
print(f"{'lines':>5}  location")
for lines, rel, q, lineno in rows[:n]:
    print(f"{lines:>5}  {rel}:{q} (line {lineno})")
