"""Shared infrastructure of the DianaBot job service: settings, database, reliability machinery."""
