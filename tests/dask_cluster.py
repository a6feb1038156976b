"""A real Dask cluster on 127.0.0.1 for the tests that place runs on one (tests/test_placement.py,
tests/test_cluster.py): `dask scheduler` and `dask worker` processes started the way the README
tells a user to, CPU only, one run per worker (`--nthreads 1`), no nanny (a killed worker stays dead).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.deck import until

START_TIMEOUT = 90.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaskCluster:
    """A scheduler and named workers, each its own process group; `stop` leaves nothing behind."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"tcp://127.0.0.1:{self.port}"
        self.scheduler: subprocess.Popen | None = None
        self.workers: dict[str, subprocess.Popen] = {}

    def _spawn(self, name: str, *argv: str) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
        with open(self.root / f"{name}.log", "ab") as log:  # the process keeps its own copy of the fd
            return subprocess.Popen([sys.executable, "-m", "dask", *argv], stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, start_new_session=True, cwd=self.root)

    def log(self, name: str) -> str:
        try:
            return (self.root / f"{name}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start_scheduler(self) -> None:
        self.scheduler = self._spawn("scheduler", "scheduler", "--host", "127.0.0.1", "--port", str(self.port),
                                     "--no-dashboard")
        scheduler = self.scheduler

        def listens() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                assert scheduler.poll() is None, f"dask scheduler exited:\n{self.log('scheduler')[-2000:]}"
                return False

        until(listens, START_TIMEOUT, "the dask scheduler to listen", interval=0.2)

    def start_workers(self, *names: str) -> None:
        seen = {name: len(self.log(name)) for name in names}  # a restarted worker's log goes on
        for name in names:
            (self.root / name).mkdir(exist_ok=True)
            self.workers[name] = self._spawn(name, "worker", self.url, "--nthreads", "1", "--no-nanny", "--name", name,
                                             "--no-dashboard", "--local-directory", str(self.root / name),
                                             "--preload", "trialdeck.engine.runtime.workers.dask")
        for name in names:
            def registered(name: str = name) -> bool:  # each worker's log says so once it registered
                assert self.workers[name].poll() is None, f"dask worker {name} exited:\n{self.log(name)[-2000:]}"
                return "Registered to" in self.log(name)[seen[name]:]

            until(registered, START_TIMEOUT, f"dask worker {name} to register", interval=0.2,
                  context=lambda name=name: self.log(name)[-2000:])

    def start(self, *names: str) -> DaskCluster:
        self.start_scheduler()
        self.start_workers(*names)
        return self

    def kill(self, proc: subprocess.Popen | None, sig: int = signal.SIGKILL) -> None:
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(15)

    def kill_worker(self, name: str) -> None:
        self.kill(self.workers.pop(name), signal.SIGKILL)

    def kill_scheduler(self) -> None:
        self.kill(self.scheduler, signal.SIGKILL)
        self.scheduler = None

    def stop(self) -> None:
        for name in list(self.workers):
            self.kill(self.workers.pop(name))
        self.kill(self.scheduler)
