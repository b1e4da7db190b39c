"""Telegram delivery: the one sender every job uses, its cluster-wide limits, the send ledger,
broadcast fan-out and message templates. Nothing outside this package calls aiogram.

Kept import-free on purpose: ``dianabot_core.models`` imports ``dianabot_core.telegram.models`` for Alembic.
"""
