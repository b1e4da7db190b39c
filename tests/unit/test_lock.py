"""The lock files (requirements/*.txt, `make lock`) still match pyproject.toml, and the venv matches them.

Without the network: every dependency pyproject.toml names is pinned, and the pin satisfies its
specifier; the runtime and dev locks are closed (each pinned package's own dependencies, read from
the installed metadata, are pinned too, within their specifiers); the three files agree on shared
pins; every pin carries hashes; the venv has exactly the dev lock's versions.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
REFRESH = "the lock is stale: run `make lock`, then `make venv`"
# Distributions of this repository that the service requires: installed from the checkout (the
# Makefile, the Dockerfile), never pinned in a lock (`make lock` leaves them out); their own
# dependencies are locked like the service's.
LOCAL: dict[NormalizedName, Version] = {
    canonicalize_name("dianabot-contracts"): Version(
        tomllib.loads((ROOT / "contracts" / "pyproject.toml").read_text())["project"]["version"]
    ),
}

# The lock's target (the Makefile's UV_COMPILE): markers are read for it, whatever runs the test.
TARGET: dict[str, str] = {
    "implementation_name": "cpython",
    "implementation_version": "3.11.0",
    "platform_release": "",
    "platform_version": "",
    "platform_python_implementation": "CPython",
    "python_version": "3.11",
    "python_full_version": "3.11.0",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
}


@dataclass(frozen=True)
class Pin:
    version: Version
    hashes: int


def read_lock(name: str) -> dict[NormalizedName, Pin]:
    """The pins of requirements/<name>, a `uv pip compile` output (`name==version \\ --hash=...`)."""
    text = (ROOT / "requirements" / name).read_text().replace("\\\n", " ")
    pins: dict[NormalizedName, Pin] = {}
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        assert not line.startswith("-"), f"{name}: an option line ({line.split()[0]}), not a pin"
        requirement, *options = line.split(" --")
        req = Requirement(requirement)
        [spec] = req.specifier
        assert spec.operator == "==", f"{name}: {req} is not an exact pin"
        assert canonicalize_name(req.name) not in pins, f"{name}: {req.name} pinned twice"
        pins[canonicalize_name(req.name)] = Pin(
            Version(spec.version), sum(option.startswith("hash=") for option in options)
        )
    return pins


def _project() -> dict[str, object]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert isinstance(project, dict)
    return project


def requirements(extra: str | None = None) -> list[Requirement]:
    project = _project()
    if extra is None:
        lines = project["dependencies"]
    else:
        extras = project["optional-dependencies"]
        assert isinstance(extras, dict)
        lines = extras[extra]
    assert isinstance(lines, list)
    return [Requirement(line) for line in lines]


# The lock file, and pyproject's groups it must hold.
LOCKS: dict[str, list[str | None]] = {
    "lock.txt": [None],
    "dev-lock.txt": [None, "dev"],
    "bench-lock.txt": [None, "dev", "bench"],
}


def _applies(requirement: Requirement, extras: frozenset[str] = frozenset()) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({**TARGET, "extra": extra}) for extra in extras | {""})


# Only what applies to CPython 3.11 on x86_64 Linux (the lock's target) must be in the lock.
CASES = [
    pytest.param(lock, requirement, id=f"{lock}:{requirement.name}")
    for lock, groups in LOCKS.items()
    for group in groups
    for requirement in requirements(group)
    if _applies(requirement)
]


@pytest.mark.parametrize(("lock", "requirement"), CASES)
def test_each_dependency_in_pyproject_is_pinned_within_its_specifier(
    lock: str, requirement: Requirement
) -> None:
    local = LOCAL.get(canonicalize_name(requirement.name))
    if local is not None:
        assert canonicalize_name(requirement.name) not in read_lock(lock), f"{lock} pins a local distribution"
        assert requirement.specifier.contains(local, prereleases=True), (
            f"{requirement}: the checkout has {local}"
        )
        return
    pin = read_lock(lock).get(canonicalize_name(requirement.name))
    assert pin is not None, f"{lock} has no pin for {requirement.name}: {REFRESH}"
    assert requirement.specifier.contains(pin.version, prereleases=True), (
        f"{lock} pins {requirement.name}=={pin.version}, outside {requirement.specifier}: {REFRESH}"
    )


@pytest.mark.parametrize("lock", list(LOCKS))
def test_every_pin_carries_hashes(lock: str) -> None:
    pins = read_lock(lock)
    assert pins
    assert [name for name, pin in pins.items() if pin.hashes == 0] == []


@pytest.mark.parametrize(
    ("smaller", "larger"), [("lock.txt", "dev-lock.txt"), ("dev-lock.txt", "bench-lock.txt")]
)
def test_the_locks_agree_on_every_shared_pin(smaller: str, larger: str) -> None:
    # Each lock is resolved under the one before it (-c), so the image and the venv run the same versions.
    small, large = read_lock(smaller), read_lock(larger)
    assert {name: pin.version for name, pin in small.items() if large.get(name) != pin} == {}, (
        f"pins of {smaller} missing or different in {larger}: {REFRESH}"
    )


def test_the_venv_has_exactly_the_dev_locks_versions() -> None:
    wrong = {}
    for name, pin in read_lock("dev-lock.txt").items():
        try:
            installed = Version(distribution(name).version)
        except PackageNotFoundError:
            installed = None
        if installed != pin.version:
            wrong[name] = f"{installed} installed, {pin.version} locked"
    assert wrong == {}, "the venv is not the dev lock's: run `make venv`"


@pytest.mark.parametrize("lock", ["lock.txt", "dev-lock.txt"])
def test_the_lock_holds_every_package_its_pins_need(lock: str) -> None:
    """From pyproject's requirements through each installed package's own: all pinned, all within range.

    The installed metadata is the locked version's (the test above checks the venv against the dev
    lock), so a dependency that a new pyproject line or extra brings in is caught without the network.
    """
    pins = read_lock(lock)
    todo = [(requirement, "pyproject.toml") for group in LOCKS[lock] for requirement in requirements(group)]
    seen: set[tuple[NormalizedName, frozenset[str]]] = set()
    problems = []
    while todo:
        requirement, wanted_by = todo.pop()
        name, extras = canonicalize_name(requirement.name), frozenset(requirement.extras)
        version = LOCAL.get(name) or (pin.version if (pin := pins.get(name)) else None)
        if version is None:
            problems.append(f"{name} (wanted by {wanted_by}) is not pinned")
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{name}=={version} is outside {requirement.specifier} ({wanted_by})")
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        for line in distribution(name).requires or []:
            dependency = Requirement(line)
            if _applies(dependency, extras):
                todo.append((dependency, f"{name}{sorted(extras) if extras else ''}"))
    assert problems == [], f"{lock}: {REFRESH}"
