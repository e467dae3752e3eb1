"""Detached child processes with pid files, so ``mlp down`` stops exactly what ``mlp up`` started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


class ProcessTable:
    """Pid files under ``<state>/run``; logs under ``<state>/logs``."""

    def __init__(self, state_dir: Path) -> None:
        self.run_dir = state_dir / "run"
        self.log_dir = state_dir / "logs"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)

    def pid_file(self, name: str) -> Path:
        """Where the pid of ``name`` is kept."""
        return self.run_dir / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        """Where the output of ``name`` goes."""
        return self.log_dir / f"{name}.log"

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str], cwd: Path | None = None) -> int:
        """Start ``argv`` in its own session (so the whole group can be stopped) and record its pid."""
        log = open(self.log_file(name), "ab")
        proc = subprocess.Popen(  # noqa: S603 - argv is built by the launcher, not from user input
            list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(env), cwd=cwd, start_new_session=True)
        log.close()
        self.pid_file(name).write_text(str(proc.pid))
        return proc.pid

    def pid(self, name: str) -> int | None:
        """The recorded pid if that process is still alive."""
        path = self.pid_file(name)
        if not path.exists():
            return None
        try:
            pid = int(path.read_text().strip())
        except ValueError:
            return None
        return pid if _alive(pid) else None

    def names(self) -> list[str]:
        """Every component with a pid file."""
        return sorted(p.stem for p in self.run_dir.glob("*.pid"))

    def stop(self, name: str, timeout: float = 10.0) -> bool:
        """SIGTERM the process group, then SIGKILL after ``timeout``; True if something was stopped."""
        path = self.pid_file(name)
        pid = self.pid(name)
        if pid is None:
            path.unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _group_alive(pid):
            time.sleep(0.1)
        if _group_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            time.sleep(0.2)
        path.unlink(missing_ok=True)
        return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _alive(pgid) or any(_in_group(p, pgid) for p in _all_pids())


def _all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def _in_group(pid: int, pgid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[2]) == pgid and fields[0] != "Z"
    except (OSError, IndexError, ValueError):
        return False
