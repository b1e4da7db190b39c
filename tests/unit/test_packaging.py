"""The two distributions: the contracts install alone; the service ships only names that cannot collide.

Both wheels are built here from a copy of the tree, without a network (``pip wheel
--no-build-isolation`` with the setuptools of the dev extra). The contracts' wheel is then installed
into a fresh virtualenv that sees pydantic and the distributions pydantic needs, and nothing else
of this environment, as a bot service would install it (``pip install ./contracts``).
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = ROOT / "contracts"
# The services keep the names operators type (`faststream run consumers.app:app`, `python -m
# schedulers`); everything else the service installs is named dianabot_*.
SERVICE_NAMES = {"consumers", "schedulers"}
# What the contracts may require: pydantic, and typing-extensions, which pydantic needs anyway.
CONTRACTS_MAY_REQUIRE = {"pydantic", "typing-extensions"}
PIP = (sys.executable, "-m", "pip")
# Local state that is never part of a build.
NOT_COPIED = {
    ".git",
    ".venv",
    ".devstack",
    "__pycache__",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    "build",
}


def _project(pyproject: Path) -> dict[str, object]:
    project: dict[str, object] = tomllib.loads(pyproject.read_text())["project"]
    return project


def _copy(source: Path, target: Path) -> Path:
    def ignored(folder: str, names: list[str]) -> set[str]:
        skip = {name for name in names if name in NOT_COPIED or name.endswith(".egg-info")}
        if Path(folder) == ROOT / "devstack" / "kafka":
            skip.add("lib")  # the broker's jars
        return skip

    shutil.copytree(source, target, ignore=ignored, symlinks=True)
    return target


def _build_wheel(source: Path, out: Path) -> Path:
    subprocess.run(
        [
            *PIP,
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "-w",
            str(out),
            str(source),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    [wheel] = out.glob("*.whl")
    return wheel


@pytest.fixture(scope="module")
def contracts_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("contracts-wheel")
    return _build_wheel(_copy(CONTRACTS, work / "contracts"), work / "dist")


@pytest.fixture(scope="module")
def service_wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    work = tmp_path_factory.mktemp("service-wheel")
    return zipfile.ZipFile(_build_wheel(_copy(ROOT, work / "tree"), work / "dist"))


# --- the contracts, alone ------------------------------------------------------------------------


def _closure(name: str) -> Iterator[importlib.metadata.Distribution]:
    """`name`'s distribution and those it requires (markers evaluated, no extras), installed here."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = canonicalize_name(todo.pop())
        if current in seen:
            continue
        seen.add(current)
        distribution = importlib.metadata.distribution(current)
        yield distribution
        for line in distribution.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)


def _only_pydantic(target: Path) -> Path:
    """A folder holding pydantic and what it requires (links to this environment's copies), only."""
    target.mkdir()
    for distribution in _closure("pydantic"):
        tops = {Path(str(file)).parts[0] for file in distribution.files or []}
        for top in tops - {"..", "__pycache__"}:
            source = Path(str(distribution.locate_file(top)))
            if source.exists() and not (target / top).exists():
                (target / top).symlink_to(source)
    return target


CHECK = """
import importlib.metadata, json, sys
from pydantic import ValidationError
from dianabot_contracts.envelope import EventEnvelope
from dianabot_contracts.events import UserRegistered
from dianabot_contracts.topics import topic_for

envelope = EventEnvelope.wrap(UserRegistered(user_id=42, telegram_id=7), producer="dianabot-bot")
read = EventEnvelope.model_validate_json(envelope.to_body())
assert read == envelope and read.key == "user:42", read
assert UserRegistered.model_validate(read.payload).telegram_id == 7
try:
    EventEnvelope.model_validate({"event_type": "user.registered", "payload": {}})
except ValidationError:
    pass
else:
    raise AssertionError("an envelope without its fields validated")
import dianabot_contracts, dianabot_contracts.schema
print(json.dumps({
    "file": dianabot_contracts.__file__,
    "topic": topic_for(UserRegistered(user_id=42, telegram_id=7)).name,
    "version": importlib.metadata.version("dianabot-contracts"),
    "requires": importlib.metadata.requires("dianabot-contracts"),
    "modules": sorted({name.split(".")[0] for name in sys.modules}),
    "distributions": sorted(d.metadata["Name"] for d in importlib.metadata.distributions()),
}))
"""


def test_the_contracts_install_alone_into_a_fresh_virtualenv(contracts_wheel: Path, tmp_path: Path) -> None:
    env = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env)
    python = env / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "pydantic-only.pth").write_text(f"{_only_pydantic(tmp_path / 'pydantic')}\n")

    # Dependencies resolved, not skipped: pip finds them among what the fresh environment has.
    subprocess.run(
        [*PIP, "--python", str(python), "install", "--quiet", "--no-index", str(contracts_wheel)],
        check=True,
        capture_output=True,
        text=True,
    )
    result = subprocess.run(
        [str(python), "-I", "-c", CHECK], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)

    assert Path(seen["file"]).is_relative_to(env), "imported from somewhere else than the fresh virtualenv"
    assert seen["topic"] == "dianabot.users"
    assert seen["version"] == _project(CONTRACTS / "pyproject.toml")["version"]
    required = {canonicalize_name(Requirement(line).name) for line in seen["requires"]}
    assert required <= CONTRACTS_MAY_REQUIRE
    assert "pydantic" in required
    project_modules = {"consumers", "schedulers", "bench", "devstack", "faststream", "sqlalchemy", "aiokafka"}
    assert not {m for m in seen["modules"] if m in project_modules or m.startswith("dianabot_core")}
    pydantic_closure = {canonicalize_name(d.metadata["Name"]) for d in _closure("pydantic")}
    assert {canonicalize_name(name) for name in seen["distributions"]} == pydantic_closure | {
        "dianabot-contracts"
    }


def test_the_contracts_wheel_holds_the_package_and_its_type_marker_only(contracts_wheel: Path) -> None:
    names = zipfile.ZipFile(contracts_wheel).namelist()
    tops = {name.split("/")[0] for name in names if ".dist-info/" not in name}
    assert tops == {"dianabot_contracts"}
    assert "dianabot_contracts/py.typed" in names
    assert {Path(name).stem for name in names if name.endswith(".py")} >= {"envelope", "events", "topics"}


def test_the_service_pins_the_contracts_of_its_own_checkout() -> None:
    contracts_version = str(_project(CONTRACTS / "pyproject.toml")["version"])
    dependencies = _project(ROOT / "pyproject.toml")["dependencies"]
    assert isinstance(dependencies, list)
    [pin] = [Requirement(line) for line in dependencies if Requirement(line).name == "dianabot-contracts"]
    assert [(spec.operator, spec.version) for spec in pin.specifier] == [("==", contracts_version)]
    assert importlib.metadata.version("dianabot-contracts") == contracts_version, "reinstall: `make venv`"


# --- the service ---------------------------------------------------------------------------------


def _top_level(wheel: zipfile.ZipFile) -> set[str]:
    return {name.split("/")[0] for name in wheel.namelist() if ".dist-info/" not in name}


def test_the_service_wheel_installs_only_names_that_cannot_collide(service_wheel: zipfile.ZipFile) -> None:
    tops = _top_level(service_wheel)
    colliding = sorted(
        name for name in tops if name not in SERVICE_NAMES and not name.startswith("dianabot_")
    )
    assert colliding == []
    # The services and their machinery are there; the contracts come from their own distribution.
    assert tops == SERVICE_NAMES | {"dianabot_core", "dianabot_cli", "dianabot_double"}
    [top_level_txt] = [name for name in service_wheel.namelist() if name.endswith(".dist-info/top_level.txt")]
    assert set(service_wheel.read(top_level_txt).decode().split()) == tops


def test_the_service_wheel_leaves_the_repository_tools_out(service_wheel: zipfile.ZipFile) -> None:
    names = service_wheel.namelist()
    assert not [name for name in names if name.split("/")[0] in {"bench", "devstack", "tests", "contracts"}]
    assert "dianabot_double/__main__.py" in names  # the double's console script runs from the wheel


def test_the_service_wheel_requires_the_contracts_and_its_scripts_point_into_it(
    service_wheel: zipfile.ZipFile,
) -> None:
    [metadata] = [name for name in service_wheel.namelist() if name.endswith(".dist-info/METADATA")]
    requires = [
        line.split(":", 1)[1].strip()
        for line in service_wheel.read(metadata).decode().splitlines()
        if line.startswith("Requires-Dist:")
    ]
    assert any(Requirement(line).name == "dianabot-contracts" for line in requires)
    [entry_points] = [
        name for name in service_wheel.namelist() if name.endswith(".dist-info/entry_points.txt")
    ]
    targets = [
        line.split("=", 1)[1].strip()
        for line in service_wheel.read(entry_points).decode().splitlines()
        if "=" in line
    ]
    assert targets
    tops = _top_level(service_wheel)
    assert all(target.split(".")[0] in tops for target in targets), targets
