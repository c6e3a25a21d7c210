"""Every test the docs name as proof exists, so a renamed or deleted test breaks this, not the doc's word.

docs/security.md and docs/architecture.md name tests as `path::test_name`;
each path must be a test module of the suite and define `test_name`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ("docs/security.md", "docs/architecture.md")
# Where `make test` collects tests from (pytest's tests/, Molecule's verify steps).
TEST_DIRS = ("tests/app/", "tests/collection/", "molecule/default/tests/", "molecule/production/tests/")
REFERENCE = re.compile(r"([\w./-]+\.py)::(\w+)")


def references(text: str) -> list[tuple[str, str]]:
    return [(match[1], match[2]) for match in REFERENCE.finditer(text)]


def defined_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}


def missing(text: str, root: Path) -> list[str]:
    """Each reference in `text` that names no test of the suite under `root`, with why."""
    problems = []
    for path, name in references(text):
        module = root / path
        if not path.startswith(TEST_DIRS):
            problems.append(f"{path}::{name}: {path} is not in {', '.join(TEST_DIRS)}")
        elif not module.is_file():
            problems.append(f"{path}::{name}: no such file")
        elif not name.startswith("test_") or name not in defined_functions(module):
            problems.append(f"{path}::{name}: {path} defines no test {name}")
    return problems


@pytest.mark.parametrize("doc", DOCS)
def test_every_test_the_doc_names_exists(doc: str) -> None:
    text = (ROOT / doc).read_text()
    assert references(text), f"{doc} names no test: the pattern or the doc changed"
    assert missing(text, ROOT) == []


def test_a_reference_to_a_test_that_does_not_exist_is_reported(tmp_path: Path) -> None:
    module = tmp_path / "tests" / "app" / "test_shop.py"
    module.parent.mkdir(parents=True)
    module.write_text("def test_pays_once():\n    pass\n\ndef helper():\n    pass\n")
    text = ("Proved by `tests/app/test_shop.py::test_pays_once`, `tests/app/test_shop.py::test_pays_twice`,\n"
            "`tests/app/test_shop.py::helper`, `tests/app/test_gone.py::test_x` and `bench/run.py::test_y`.")
    assert missing(text, tmp_path) == [
        "tests/app/test_shop.py::test_pays_twice: tests/app/test_shop.py defines no test test_pays_twice",
        "tests/app/test_shop.py::helper: tests/app/test_shop.py defines no test helper",
        "tests/app/test_gone.py::test_x: no such file",
        f"bench/run.py::test_y: bench/run.py is not in {', '.join(TEST_DIRS)}",
    ]
