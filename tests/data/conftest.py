"""Data tests use the session fixtures of tests/conftest.py (synthetic_shards)."""
