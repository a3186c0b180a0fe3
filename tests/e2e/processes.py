"""The processes a deployment starts, each in its own process group, and stopping them all.

Every process is started with ``start_new_session`` so that stopping its group also stops what
it forked (LocalExecutor workers, Celery pool processes, the api-server's workers). The group
ids go to a pid file as they start: ``scripts/e2e.sh`` kills whatever is left in it should
this driver itself die before its ``finally`` runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A loopback port free now (another program could take it before we bind: rare enough)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Processes:
    """Starts named processes with their output in ``logdir/<name>.log``; stops them in reverse."""

    def __init__(self, logdir: Path, pidfile: Path) -> None:
        self.logdir = logdir
        self.pidfile = pidfile
        self.running: list[tuple[str, subprocess.Popen[bytes]]] = []
        # A run's logs are its own: the checks read them (the simulators' ports, the scheduler's).
        shutil.rmtree(logdir, ignore_errors=True)
        logdir.mkdir(parents=True)
        pidfile.write_text("")

    def log(self, name: str) -> Path:
        return self.logdir / f"{name}.log"

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        with self.log(name).open("ab") as out:
            process = subprocess.Popen(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env),
                cwd=ROOT,
                start_new_session=True,
            )
        self.running.append((name, process))
        with self.pidfile.open("a") as pids:
            pids.write(f"{process.pid} {name}\n")
        return process

    def check_alive(self) -> None:
        """Fail when a process ended on its own: the deployment is broken."""
        for name, process in self.running:
            if process.poll() is not None:
                tail = self.log(name).read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {process.returncode}; its log ends:\n{tail}")

    def stop_all(self, grace: float = 20.0) -> None:
        """SIGTERM every group, newest first; SIGKILL what is still there after ``grace`` s."""
        for _, process in reversed(self.running):
            _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for _, process in reversed(self.running):
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        for _, process in self.running:
            # The group may outlive its leader (a worker it forked): kill what remains.
            _signal_group(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        self.running.clear()
        self.pidfile.write_text("")

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
