"""Telegram delivery: the one sender every job uses, its cluster-wide limits, the send ledger,
broadcast fan-out and message templates. Nothing outside this package calls aiogram.

Kept import-free on purpose: ``core.models`` imports ``core.telegram.models`` for Alembic.
"""
