"""Imports run downhill: the machinery never reaches up into the services that use it.

dianabot_contracts  <-  dianabot_core  <-  schedulers  <-  dianabot_cli (the operator's console command)
                                       <-  consumers   <-
(``dianabot_contracts``, in contracts/, is what bot services install: it imports nothing of the project.
``dianabot_double``, the Bot API double, stands in for Telegram and imports nothing of the project either;
bench/ and devstack/ are the repository's tools: no installed package imports them.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Each top-level package of the project and its folder (the contracts are their own distribution,
# in contracts/).
FOLDERS = {
    "dianabot_contracts": ROOT / "contracts" / "dianabot_contracts",
    "dianabot_core": ROOT / "dianabot_core",
    "consumers": ROOT / "consumers",
    "schedulers": ROOT / "schedulers",
    "dianabot_cli": ROOT / "dianabot_cli",
    "dianabot_double": ROOT / "dianabot_double",
    "bench": ROOT / "bench",
    "devstack": ROOT / "devstack",
    "tests": ROOT / "tests",
}
PROJECT = set(FOLDERS)


def test_every_package_is_where_these_checks_look() -> None:
    """A moved or renamed package would make the checks below pass on nothing."""
    missing = sorted(name for name, folder in FOLDERS.items() if not (folder / "__init__.py").is_file())
    assert missing == []


def _imports(package: str) -> dict[str, set[str]]:
    """Each module of `package` -> the project's top-level packages it imports."""
    found: dict[str, set[str]] = {}
    for path in sorted(FOLDERS[package].rglob("*.py")):
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
        ("dianabot_contracts", {"dianabot_contracts"}),
        ("dianabot_core", {"dianabot_contracts", "dianabot_core"}),
        ("schedulers", {"dianabot_contracts", "dianabot_core", "schedulers"}),
        ("consumers", {"dianabot_contracts", "dianabot_core", "consumers"}),
        ("dianabot_cli", {"dianabot_contracts", "dianabot_core", "schedulers", "consumers", "dianabot_cli"}),
        ("dianabot_double", {"dianabot_double"}),
    ],
)
def test_a_package_imports_only_what_lies_below_it(package: str, allowed: set[str]) -> None:
    uphill = {
        module: sorted(names - allowed) for module, names in _imports(package).items() if names - allowed
    }
    assert uphill == {}


# Telegram delivery's public face: the sender (send, give_up, was_delivered, member calls), its
# errors, templates, broadcasts and retention. Its ledger, limits, tables and aiogram are its own.
TELEGRAM_PRIVATE = {"ledger", "limits", "models", "calls", "content", "members"}


def _telegram_reach(path: Path) -> set[str]:
    reached: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        modules = (
            [alias.name for alias in node.names]
            if isinstance(node, ast.Import)
            else [node.module]
            if isinstance(node, ast.ImportFrom) and node.module
            else []
        )
        for module in modules:
            parts = module.split(".")
            if parts[0] == "aiogram":
                reached.add("aiogram")
            elif (
                parts[:2] == ["dianabot_core", "telegram"] and len(parts) > 2 and parts[2] in TELEGRAM_PRIVATE
            ):
                reached.add(module)
    return reached


def test_handlers_reach_telegram_only_through_the_senders_public_face() -> None:
    reaching = {
        str(path.relative_to(ROOT)): sorted(reach)
        for path in sorted(FOLDERS["consumers"].rglob("*.py"))
        if (reach := _telegram_reach(path))
    }
    assert reaching == {}


def test_no_source_module_is_over_500_lines() -> None:
    """A module that long does several jobs: split it by concern."""
    long = {
        str(path.relative_to(ROOT)): lines
        for package in sorted(PROJECT - {"tests"})
        for path in sorted(FOLDERS[package].rglob("*.py"))
        if (lines := len(path.read_text().splitlines())) > 500
    }
    assert long == {}


def _module_name(path: Path, package: str) -> str:
    parts = list(path.relative_to(FOLDERS[package].parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules `path` imports when it is loaded (not inside functions)."""
    found: set[str] = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            submodules = [f"{node.module}.{alias.name}" for alias in node.names]
            # `from package import submodule` needs the submodule, not the rest of the package.
            names = submodules if all(m in modules for m in submodules) else [node.module, *submodules]
        found |= {name for name in names if name in modules}
    return found


def test_no_import_cycle() -> None:
    paths = {
        _module_name(path, package): path
        for package in sorted(PROJECT - {"tests"})
        for path in sorted(FOLDERS[package].rglob("*.py"))
    }
    modules = set(paths)
    graph = {name: _top_level_imports(path, modules) - {name} for name, path in paths.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycles.append([*trail[trail.index(target) :], target])
            elif target not in state:
                visit(target, [*trail, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []
