"""The building blocks of the settings tree (``dianabot_core/settings.py``), for every section's module.

A section is a frozen pydantic model that forbids unknown keys; the root ``Settings`` nests every
section under its name, so ``DIANABOT_SENDER__GLOBAL_RATE_PER_S`` is ``settings.sender.global_rate_per_s``.
Sections live beside the code they configure (``dianabot_core/telegram/settings.py``,
``dianabot_core/schedule/settings.py``, ...) and import only this module, never the root: the root
imports them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

ENV_PREFIX = "DIANABOT_"
ENV_NESTED_DELIMITER = "__"


class ConfigError(Exception):
    """The configuration cannot be used; the message is one readable line without secret values."""


class Section(BaseModel):
    """One section of the settings tree: frozen, and an unknown variable in it is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)
