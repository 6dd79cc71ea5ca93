"""The documentation a newcomer reads: every relative link resolves, the README stays short, and
its test command is the one CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md",
         ROOT / "deploy" / "README.md"]


def test_every_relative_link_in_the_docs_resolves():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not re.match(r"[a-z]+://", target) and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_the_readme_is_short_and_runs_the_tests_as_ci_does():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci.startswith("python3 -m venv .venv") and f"```bash\n{ci}\n```" in readme


def test_every_results_file_the_docs_name_is_in_the_tree():
    """A number in the docs names the file it came from (`results/<suite or script>/<date>-<commit>/…`):
    that file exists, so a moved or deleted result cannot leave a number without its evidence."""
    missing = []
    for page in PAGES:
        for path in re.findall(r"results/([A-Za-z0-9_.,/{}*<>…-]+)", page.read_text()):
            path = path.rstrip(".,")
            if re.search(r"[{}*<>…]", path) or path.endswith("-") or path.startswith(("tmp/", "runs/")):
                continue  # a pattern, a line-wrapped path, or scratch output outside the tree
            if not (ROOT / "benchmarks" / "results" / path).exists():
                missing.append(f"{page.relative_to(ROOT)}: results/{path}")
    assert not missing, missing
