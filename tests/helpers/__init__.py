"""Shared test helpers (importable as `helpers.*` from tests)."""
