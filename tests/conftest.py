"""Shared fixtures: the local stand-ins for AWS and Kafka (tests/localstack_fixtures.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from streamkit.connectors.local.memory_sink import MemoryDeadLetter, MemorySink

pytest_plugins = ["tests.localstack_fixtures"]


@pytest.fixture(autouse=True)
def _fresh_memory_sinks() -> Iterator[None]:
    """Memory sinks register by name; keep one test's sinks out of the next test's view."""
    MemorySink.instances.clear()
    MemoryDeadLetter.instances.clear()
    yield
    MemorySink.instances.clear()
    MemoryDeadLetter.instances.clear()
