"""tests/README.md names tests and files as evidence: each name must exist, so a renamed
or deleted test cannot leave a claim behind it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = Path(__file__).parent


def defined_tests() -> set[str]:
    names = set()
    for f in TESTS.glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.FunctionDef):
                names.add(node.name)
    return names


def test_every_test_and_file_the_readme_names_exists():
    readme = (TESTS / "README.md").read_text()
    named = set(re.findall(r"`(test_\w+)`", readme))
    assert len(named) > 20  # the pattern still finds the rows
    missing = sorted(n for n in named - defined_tests() if not (TESTS / f"{n}.py").exists())
    assert not missing, f"tests/README.md names tests that do not exist: {missing}"
    files = set(re.findall(r"\b(?:tests/)?(test_\w+\.py|\w+\.py)\b", readme))
    gone = sorted(f for f in files if f.startswith("test_") and not (TESTS / f).exists())
    assert not gone, f"tests/README.md names files that do not exist: {gone}"
    assert "to be filled in" not in readme.lower()


def test_every_gptcli_path_the_docs_name_exists():
    """README.md, ARCHITECTURE.md, tests/README.md, benchmarks/README.md and docs/ name
    source files as `gptcli/...`: each must exist, so a move cannot leave a stale path."""
    root = TESTS.parent
    docs = [root / "README.md", root / "ARCHITECTURE.md", TESTS / "README.md"]
    docs += [root / "benchmarks" / "README.md", root / "models" / "README.md"]
    docs += sorted((root / "docs").glob("*.md"))
    named = set()
    for doc in docs:
        if doc.exists():
            named |= {(doc.name, p) for p in re.findall(r"\bgptcli/[\w./]*\w", doc.read_text())}
    assert len(named) > 3  # the pattern still finds the paths
    missing = sorted(f"{doc}: {p}" for doc, p in named if not (root / p).exists())
    assert not missing, f"paths named in the docs that do not exist: {missing}"
