"""The dev extra pins every tool below its next release line, and the installed tools are inside the pins."""

from __future__ import annotations

import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
# Tools whose minor releases add lint rules, type errors or deprecation warnings: capped at the next minor.
MINOR_CAPPED = {"ruff", "mypy", "pytest", "pytest-asyncio"}


def dev_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(line) for line in project["optional-dependencies"]["dev"]]


def _bound(requirement: Requirement, operator: str) -> Version:
    [spec] = [s for s in requirement.specifier if s.operator == operator]
    return Version(spec.version)


@pytest.mark.parametrize("requirement", dev_requirements(), ids=lambda r: r.name)
def test_each_dev_tool_has_a_floor_and_a_ceiling_one_release_line_up(requirement: Requirement) -> None:
    floor, ceiling = _bound(requirement, ">="), _bound(requirement, "<")
    if requirement.name in MINOR_CAPPED:
        assert ceiling == Version(f"{floor.major}.{floor.minor + 1}"), f"{requirement}: cap at the next minor"
    else:
        assert ceiling == Version(f"{floor.major + 1}"), f"{requirement}: cap at the next major"


@pytest.mark.parametrize("requirement", dev_requirements(), ids=lambda r: r.name)
def test_the_installed_dev_tools_satisfy_the_pins(requirement: Requirement) -> None:
    try:
        installed = version(requirement.name)
    except PackageNotFoundError:
        pytest.fail(f"{requirement.name} is not installed: run `make venv` (the dev lock)")
    assert requirement.specifier.contains(installed, prereleases=True), (
        f"{requirement.name} {installed} is outside {requirement.specifier}: reinstall with `make venv`, "
        "or move the pin on purpose"
    )
