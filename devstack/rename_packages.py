"""Rename the service's import packages to names that cannot collide with other distributions.

    python devstack/rename_packages.py           # move the modules, rewrite the references, tidy imports
    python devstack/rename_packages.py --check   # exit 1 when anything is left to move or rewrite

What moves (``git mv`` for tracked files):

* ``contracts/*.py``            -> ``contracts/dianabot_contracts/`` (the contracts distribution's package)
* ``core/``                     -> ``dianabot_core/``
* ``devstack/telegram_double/`` -> ``dianabot_double/`` (the Bot API double, shipped for its console script)

What is rewritten, in every text file git tracks or would track (not in ignored ones): module paths
(``core.x``, ``contracts.x``, ``devstack.telegram_double``: imports, ``python -m``, mock targets,
logger names), ``from``/``import`` statements, file paths (``core/x``, ``contracts/x.py``), the names
in backquotes and, in Python files, the string literal ``"core"``. Words in
prose ("one core", "event contracts") and other libraries' attributes (``sqlalchemy.core``) are
left alone: a name only matches when no letter, digit, ``_``, ``.``, ``/`` or ``-`` stands before it.

Re-runnable: on a renamed tree it changes nothing, and after a merge it moves the files another
branch added under the old folders and rewrites the references they brought. Then, when ruff is
installed, the changed Python files get their imports sorted and are formatted (the new names are
longer and sort elsewhere), and docs/asyncapi.yaml is regenerated if it changed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SELF = Path(__file__).resolve().relative_to(ROOT).as_posix()
# This script and its test spell the old names on purpose.
EXEMPT = {SELF, "tests/unit/test_rename_packages.py"}

# No identifier character, attribute dot, path separator or option dash right before a name.
_FREE = r"(?<![\w./-])"
_PY_ONLY = "py"  # a rule for Python files only


@dataclass(frozen=True)
class Rule:
    pattern: re.Pattern[str]
    replacement: str
    only: str = ""  # "py": Python files only


def _rule(pattern: str, replacement: str, only: str = "") -> Rule:
    return Rule(re.compile(pattern, re.MULTILINE), replacement, only)


RULES: tuple[Rule, ...] = (
    # The Bot API double: module path, file path and logger name alike.
    _rule(_FREE + r"devstack[./]telegram_double\b", "dianabot_double"),
    # Module paths: imports, `python -m`, mock.patch and sys.modules targets, prose naming a module.
    _rule(_FREE + r"contracts\.(?=[a-z_])", "dianabot_contracts."),
    _rule(_FREE + r"core\.(?=[a-z_])", "dianabot_core."),
    # `from core import x`, `import core`, `python -m core`.
    _rule(r"(?<=\bfrom )contracts(?= import\b)", "dianabot_contracts"),
    _rule(r"(?<=\bfrom )core(?= import\b)", "dianabot_core"),
    _rule(r"^(\s*)import contracts\b(?![./-])", r"\1import dianabot_contracts", only=_PY_ONLY),
    _rule(r"^(\s*)import core\b(?![./-])", r"\1import dianabot_core", only=_PY_ONLY),
    _rule(r"(?<=-m )core\b(?![./-])", "dianabot_core"),
    # File paths: a module of the contracts package, anything under core/.
    _rule(_FREE + r"contracts/(?!dianabot_contracts\b)(?=\w+\.py\b)", "contracts/dianabot_contracts/"),
    _rule(_FREE + r"core/", "dianabot_core/"),
    # The package named alone in backquotes (Markdown, reST docstrings).
    _rule(r"(?<=`)core(?=`)", "dianabot_core"),
    _rule(r"(?<=`)contracts(?=`)", "dianabot_contracts"),
    # A Python string that is exactly the name (sets of package names in tests). Not "contracts":
    # that is still the name of the contracts' folder.
    _rule(r"""(?<=(?P<q>["']))core(?=(?P=q))""", "dianabot_core", only=_PY_ONLY),
)


def rewrite(text: str, python: bool) -> str:
    for rule in RULES:
        if rule.only == _PY_ONLY and not python:
            continue
        text = rule.pattern.sub(rule.replacement, text)
    return text


# --- moves ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Move:
    source: str
    target: str
    picks: Callable[[Path], bool]  # which entries directly under `source` move


def _is_module_or_package(entry: Path) -> bool:
    if entry.name == "dianabot_contracts" or entry.name.endswith(".egg-info"):
        return False
    return entry.suffix == ".py" or (entry.is_dir() and (entry / "__init__.py").exists())


MOVES = (
    Move("contracts", "contracts/dianabot_contracts", _is_module_or_package),
    Move("core", "dianabot_core", lambda entry: entry.name != "__pycache__"),
    Move("devstack/telegram_double", "dianabot_double", lambda entry: entry.name != "__pycache__"),
)


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def _tracked(path: Path) -> bool:
    return bool(_git("ls-files", "--", path.relative_to(ROOT).as_posix()).strip())


def _files_under(entry: Path) -> Iterable[Path]:
    if entry.is_file():
        yield entry
        return
    for path in sorted(entry.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            yield path


def plan_moves() -> list[tuple[Path, Path]]:
    planned: list[tuple[Path, Path]] = []
    for move in MOVES:
        source = ROOT / move.source
        if not source.is_dir():
            continue
        for entry in sorted(source.iterdir()):
            if not move.picks(entry):
                continue
            for path in _files_under(entry):
                planned.append((path, ROOT / move.target / path.relative_to(source)))
    return planned


def apply_moves(planned: Sequence[tuple[Path, Path]]) -> list[str]:
    clashes: list[str] = []
    for source, target in planned:
        if target.exists():
            if target.read_bytes() != source.read_bytes():
                clashes.append(f"{source.relative_to(ROOT)} -> {target.relative_to(ROOT)}: target differs")
                continue
            _remove(source)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if _tracked(source):
            _git("mv", source.relative_to(ROOT).as_posix(), target.relative_to(ROOT).as_posix())
        else:
            source.rename(target)
    for move in MOVES:
        _prune(ROOT / move.source, keep=move.source == "contracts")
    return clashes


def _remove(path: Path) -> None:
    if _tracked(path):
        _git("rm", "-q", path.relative_to(ROOT).as_posix())
    else:
        path.unlink()


def _prune(folder: Path, keep: bool) -> None:
    """Drop the folders the moves emptied (and their byte-code caches)."""
    if not folder.is_dir():
        return
    for directory in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if directory.name == "__pycache__" and not (directory.parent / "__init__.py").exists():
            shutil.rmtree(directory)
        elif directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
    if not keep:
        cache = folder / "__pycache__"
        if cache.is_dir():
            shutil.rmtree(cache)
        if not any(folder.iterdir()):
            folder.rmdir()


# --- rewrites ------------------------------------------------------------------------------------


def text_files() -> list[Path]:
    listed = _git("ls-files", "--cached", "--others", "--exclude-standard", "-z").split("\0")
    return [
        ROOT / name for name in sorted(set(listed)) if name and name not in EXEMPT and (ROOT / name).is_file()
    ]


def rewrite_files(paths: Iterable[Path], write: bool) -> list[Path]:
    changed: list[Path] = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary
        new = rewrite(text, python=path.suffix == ".py")
        if new != text:
            changed.append(path)
            if write:
                path.write_text(new, encoding="utf-8")
    return changed


# --- tidying -------------------------------------------------------------------------------------


def _tool(name: str) -> str | None:
    beside = Path(sys.executable).parent / name
    venv = ROOT / ".venv" / "bin" / name
    for candidate in (beside, venv):
        if candidate.exists():
            return str(candidate)
    return shutil.which(name)


def tidy(changed: Sequence[Path]) -> None:
    python_files = [str(p) for p in changed if p.suffix == ".py" and p.exists()]
    ruff = _tool("ruff")
    if python_files and ruff:
        # The contracts package lies one folder down: tell isort it is ours (pyproject.toml says so too).
        first_party = "lint.isort.known-first-party = ['dianabot_contracts']"
        subprocess.run(
            [ruff, "check", "--quiet", "--select", "I", "--fix", "--config", first_party, *python_files],
            cwd=ROOT,
            check=False,
        )
        subprocess.run([ruff, "format", "--quiet", *python_files], cwd=ROOT, check=False)
    elif python_files:
        print("ruff not found: sort the imports and format the changed files yourself", file=sys.stderr)
    if any(p.relative_to(ROOT).as_posix() == "docs/asyncapi.yaml" for p in changed):
        # The contracts package from its folder, whether or not this interpreter has it installed.
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(ROOT / "contracts"), os.environ.get("PYTHONPATH")])
            ),
        }
        command = [sys.executable, "-m", "consumers.asyncapi", "--out", "docs/asyncapi.yaml"]
        if subprocess.run(command, cwd=ROOT, env=env, check=False).returncode != 0:
            print("could not regenerate docs/asyncapi.yaml: run `make asyncapi`", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python devstack/rename_packages.py", description=__doc__)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if work is left")
    args = parser.parse_args(argv)

    planned = plan_moves()
    if args.check:
        left = [f"move {s.relative_to(ROOT)} -> {t.relative_to(ROOT)}" for s, t in planned]
        left += [f"rewrite {p.relative_to(ROOT)}" for p in rewrite_files(text_files(), write=False)]
        print("\n".join(left) or "nothing to rename")
        return 1 if left else 0

    clashes = apply_moves(planned)
    changed = rewrite_files(text_files(), write=True)
    for path in changed:
        print(f"rewrote {path.relative_to(ROOT)}")
    print(f"moved {len(planned) - len(clashes)} files, rewrote {len(changed)}")
    tidy(changed)
    for clash in clashes:
        print(f"not moved: {clash}", file=sys.stderr)
    return 2 if clashes else 0


if __name__ == "__main__":
    sys.exit(main())
