"""``python -m consumers.asyncapi``: the consumers' AsyncAPI document, as committed in docs/asyncapi.yaml.

``make asyncapi`` writes it; ``--check`` exits 1 when the file differs from what the code generates
(tests/unit/test_contracts.py fails on that drift too). The document depends on the code alone:
the app is built with fixed settings (the default local Kafka address as the server, no
environment, no ``.env``), connecting to nothing, and channels, operations, messages and schemas
are sorted by name (FastStream keeps publishers in a weak set, whose order changes between runs).
Needs PyYAML (the dev extra).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr

from consumers.app import create_app
from consumers.services import Services
from dianabot_core.settings import KafkaSettings, Settings, TelegramSettings

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "asyncapi.yaml"
# Maps whose entries are named by topic and group: written in name order.
_SORTED = (("channels",), ("operations",), ("components", "messages"), ("components", "schemas"))


def generate() -> dict[str, Any]:
    """The document as JSON-compatible data, entries sorted by name."""
    settings = Settings(
        _env_file=None,  # pydantic-settings: read no .env file
        kafka=KafkaSettings(),
        telegram=TelegramSettings(bot_token=SecretStr("123456:asyncapi"), admin_chat_id=-1),
    )
    app = create_app(settings, services=Services())  # no sender: connects to nothing
    document: dict[str, Any] = app.schema.to_specification().to_jsonable()
    for path in _SORTED:
        parent = document
        for key in path[:-1]:
            parent = parent.get(key, {})
        if path[-1] in parent:
            parent[path[-1]] = dict(sorted(parent[path[-1]].items()))
    return document


def render(document: dict[str, Any]) -> str:
    """YAML as ``faststream docs gen --yaml`` writes it (keys in document order)."""
    text: str = yaml.dump(document, sort_keys=False, allow_unicode=True)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m consumers.asyncapi", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="default: docs/asyncapi.yaml")
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if --out differs from the generated one"
    )
    args = parser.parse_args(argv)
    generated = render(generate())
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else None
        if current != generated:
            print(f"{args.out} is out of date with the code: run `make asyncapi`", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date")
        return 0
    args.out.write_text(generated, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
