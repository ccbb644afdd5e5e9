"""Connectors that need no service: a synthetic generator, NDJSON files, and in-memory sinks for tests."""
