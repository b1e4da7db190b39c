"""devstack/rename_packages.py: what it rewrites, what it leaves alone, and that nothing is left to do."""

from __future__ import annotations

import pytest

from devstack import rename_packages
from devstack.rename_packages import rewrite


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("from core.settings import Settings", "from dianabot_core.settings import Settings"),
        ("import core.runtime", "import dianabot_core.runtime"),
        ("from core import metrics", "from dianabot_core import metrics"),
        (
            "from contracts.events import UserRegistered",
            "from dianabot_contracts.events import UserRegistered",
        ),
        ("from contracts import schema", "from dianabot_contracts import schema"),
        ("python -m core.cli dlq list", "python -m dianabot_core.cli dlq list"),
        ("python -m core", "python -m dianabot_core"),
        ("python -m contracts.schema --out DIR", "python -m dianabot_contracts.schema --out DIR"),
        ('mock.patch("core.telegram.sender.deliver")', 'mock.patch("dianabot_core.telegram.sender.deliver")'),
        ('["python", "-m", "core.probe"]', '["python", "-m", "dianabot_core.probe"]'),
        ("see core/outbox.py", "see dianabot_core/outbox.py"),
        ("(`contracts/topics.py`)", "(`contracts/dianabot_contracts/topics.py`)"),
        ("`core` never imports `consumers`", "`dianabot_core` never imports `consumers`"),
        ('PROJECT = {"core", "consumers"}', 'PROJECT = {"dianabot_core", "consumers"}'),
        ("from devstack.telegram_double import TelegramDouble", "from dianabot_double import TelegramDouble"),
        ('logging.getLogger("devstack.telegram_double")', 'logging.getLogger("dianabot_double")'),
        ("devstack/telegram_double/README.md", "dianabot_double/README.md"),
    ],
)
def test_the_old_names_become_the_new_ones(old: str, new: str) -> None:
    assert rewrite(old, python=True) == new
    assert rewrite(new, python=True) == new  # again: nothing changes


@pytest.mark.parametrize(
    "text",
    [
        "Idle: 19-29 % of a core, on a 2-core machine; the core of the pipeline",
        "from sqlalchemy.core import select; engine.core.thing; faststream._internal.core",
        "import asyncio  # asyncio.core is not ours",
        "the event contracts. Contracts/ and contracts/ the folder",
        "pip install ./contracts; pip install -e ./contracts",
        "https://example.org/core/page and lib/core/x.py",
        'logging.getLogger("dianabot.consumers")',
        "hardcore.x score.y encore/z",
        "dianabot_core.settings and contracts/dianabot_contracts/events.py",
        "Share of one core.",
    ],
)
def test_words_and_other_libraries_are_left_alone(text: str) -> None:
    assert rewrite(text, python=True) == text


def test_string_literals_are_names_only_in_python_files() -> None:
    json_text = '{"core": 2, "contracts": []}'
    assert rewrite(json_text, python=False) == json_text
    # "contracts" is still the folder of the contracts' distribution.
    assert rewrite('ROOT / "contracts" / "dianabot_contracts"', python=True) == (
        'ROOT / "contracts" / "dianabot_contracts"'
    )


def test_nothing_is_left_to_rename_in_this_tree(capsys: pytest.CaptureFixture[str]) -> None:
    """A merge that brings back `core.` or `contracts.` fails here: run the script again."""
    assert rename_packages.main(["--check"]) == 0, capsys.readouterr().out
