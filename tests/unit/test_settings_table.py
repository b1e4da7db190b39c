"""The README's settings table is the one printed from the settings tree."""

from __future__ import annotations

from pathlib import Path

from dianabot_core.settings import Settings, is_known_variable
from dianabot_core.settings_table import main, markdown, readme_table, sections

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readmes_table_is_the_generated_one() -> None:
    assert readme_table(README.read_text()) == markdown(), (
        "README.md's settings table is stale: run `python -m dianabot_core.settings_table --write README.md`"
    )


def test_every_section_and_variable_is_listed() -> None:
    titles = [title for title, _ in sections()]
    assert titles[0] == "general"
    assert set(titles[1:]) == {
        name for name, field in Settings.model_fields.items() if field.annotation is not str
    }
    names = [name for _, rows in sections() for name, _, _ in rows]
    assert "DIANABOT_SENDER__GLOBAL_RATE_PER_S" in names
    assert "DIANABOT_SCHEDULER__JOBS__<JOB>__CRON" in names
    assert all(is_known_variable(name.replace("<JOB>", "SCHEDULED_DAILY_CLEANUP")) for name in names)
    rows = {name: (default, meaning) for _, section in sections() for name, default, meaning in section}
    assert rows["DIANABOT_TELEGRAM__BOT_TOKEN"] == ("required", "Bot API token from @BotFather. Secret.")
    assert rows["DIANABOT_KAFKA__SASL_PASSWORD"][0] == "unset"
    assert rows["DIANABOT_SUBSCRIPTIONS__REMINDER_WINDOWS"][0] == '["P7D", "P1D"]'


def test_write_replaces_only_the_table(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    text = README.read_text()
    readme.write_text(text.replace(readme_table(text), "| stale |\n"))
    assert main(["--write", str(readme)]) == 0
    assert readme.read_text() == text
