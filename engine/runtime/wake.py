"""Waker: a socket pair that wakes the engine's loop (`multiprocessing.connection.wait` on `fd`).

The engine's signal handler writes to it (SIGUSR1 from a client), and a backend
whose news arrives on another thread (the Dask link) or in memory (the fake)
pokes it; the loop drains it and looks. Never blocks: a full buffer already wakes.
"""

from __future__ import annotations

import contextlib
import socket


class Waker:
    def __init__(self) -> None:
        self.fd, self._write = socket.socketpair()
        self.fd.setblocking(False)
        self._write.setblocking(False)

    def fileno_to_write(self) -> int:
        """For `signal.set_wakeup_fd`."""
        return self._write.fileno()

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):  # a full buffer already wakes the loop
            self._write.send(b"x")

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self.fd.recv(4096):
                pass
