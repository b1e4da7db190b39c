"""Imports run downhill: the machinery never reaches up into the services that use it.

contracts  <-  core  <-  schedulers  <-  dianabot_cli (the operator's console command)
                     <-  consumers   <-
(``contracts`` is what bot services install: it imports nothing of the project.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = {"contracts", "core", "consumers", "schedulers", "dianabot_cli", "bench", "devstack", "tests"}


def _imports(package: str) -> dict[str, set[str]]:
    """Each module of `package` -> the project's top-level packages it imports."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names & PROJECT
    return found


@pytest.mark.parametrize(
    ("package", "allowed"),
    [
        ("contracts", {"contracts"}),
        ("core", {"contracts", "core"}),
        ("schedulers", {"contracts", "core", "schedulers"}),
        ("consumers", {"contracts", "core", "consumers"}),
        ("dianabot_cli", {"contracts", "core", "schedulers", "consumers", "dianabot_cli"}),
    ],
)
def test_a_package_imports_only_what_lies_below_it(package: str, allowed: set[str]) -> None:
    uphill = {
        module: sorted(names - allowed) for module, names in _imports(package).items() if names - allowed
    }
    assert uphill == {}
