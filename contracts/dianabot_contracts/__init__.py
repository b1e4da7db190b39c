"""Event contracts of the DianaBot job service: pure pydantic data, importable by any bot service."""
