"""ClusterLink: the engine's one Dask client, in a thread of its own.

One job: every network call a Dask-placing engine makes (placement.dask), so
none blocks the engine's loop. The link runs its own asyncio loop with an
asynchronous `distributed.Client`; the engine posts commands (Submit,
SetControl, Forget, Close) without waiting, and the link answers with events
in `events` (Connected, ConnectionLost, WorkersChanged, WorkerRemoved,
TaskNewsArrived, TaskFinished, SubmitFailed), calling `wake` after each.
Invariants:

- Commands run one at a time in the order posted (a run's control never
  overtakes its submit, nor a requeued run's new submit its old `forget`).
- One connection at a time: when the scheduler goes away the link says "lost"
  once, closes that client (its futures die with it) and tries again every
  RETRY_SECONDS; commands for the lost cluster are dropped (a submit is
  answered SubmitFailed).
- The messages tasks put in the engine's `distributed.Queue` are read in order
  and handed on as they are; telling a current attempt's from a stale one's is
  the engine's job.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from trialdeck.engine.runtime.workers.dask import run_task
from trialdeck.engine.runtime.workers.dask_transport import control_name, queue_name
from trialdeck.engine.runtime.workers.messages import TaskControl, to_wire

CONNECT_TIMEOUT = 5.0
RETRY_SECONDS = 3.0
"""Between two attempts to reach a scheduler that went away (or never answered)."""
WORKERS_SECONDS = 2.0
"""How often the list of workers is read (joins and leaves also come as events at once)."""
POLL_BUSY, POLL_IDLE = 0.05, 0.5
"""Seconds between two reads of the engine's queue while runs are placed, and while none is."""
SCATTER_BYTES = 1 << 20
"""Files a resume needs go to the worker directly (client.scatter) from this size, not in the task itself."""


# ----------------------------------------------------------------------------- commands (engine -> link)


@dataclass(frozen=True)
class Submit:
    """Place a run's task on one worker (`address`), after setting its control variable."""

    run_id: str
    token: str
    payload: Mapping[str, Any]
    blobs: Mapping[str, bytes]
    address: str
    resources: Mapping[str, float] | None
    control: TaskControl


@dataclass(frozen=True)
class SetControl:
    run_id: str
    control: TaskControl


@dataclass(frozen=True)
class Forget:
    """The run ended or was requeued: silence any copy of its task (and cancel it, `cancel`)."""

    run_id: str
    cancel: bool


@dataclass(frozen=True)
class Close:
    pass


Command = Submit | SetControl | Forget | Close

# ----------------------------------------------------------------------------- events (link -> engine)

Workers = dict[str, dict[str, Any]]
"""Per worker address: name, nthreads, resources, memory_limit."""


@dataclass(frozen=True)
class Connected:
    workers: Workers


@dataclass(frozen=True)
class ConnectionLost:
    why: str


@dataclass(frozen=True)
class WorkersChanged:
    workers: Workers


@dataclass(frozen=True)
class WorkerRemoved:
    address: str | None


@dataclass(frozen=True)
class TaskNewsArrived:
    """An item from the engine's queue, as a task put it (runtime.workers.messages.TaskNews on the wire)."""

    item: Any


@dataclass(frozen=True)
class TaskFinished:
    run_id: str
    token: str
    error: str | None


@dataclass(frozen=True)
class SubmitFailed:
    run_id: str
    token: str
    why: str


LinkEvent = Connected | ConnectionLost | WorkersChanged | WorkerRemoved | TaskNewsArrived | TaskFinished | SubmitFailed


class ClusterLink(threading.Thread):
    """The engine's one Dask client, in its own thread and asyncio loop (see the module docstring)."""

    def __init__(self, url: str, tag: str, wake: Callable[[], None]) -> None:
        super().__init__(name="trialdeck-dask", daemon=True)
        self.url, self.tag, self.wake = url, tag, wake
        self.events: collections.deque[LinkEvent] = collections.deque()
        self.loop = asyncio.new_event_loop()
        self._commands: asyncio.Queue[Command] | None = None
        self._ready = threading.Event()
        self._closing = False
        self._futures: dict[str, tuple[str, list[Any]]] = {}
        """run id -> (token, the futures the run holds: its task, its scattered files)."""

    def _emit(self, event: LinkEvent) -> None:
        self.events.append(event)
        self.wake()

    def start(self) -> None:
        super().start()
        self._ready.wait(10)

    def post(self, command: Command) -> None:
        """Queue a command for the link (thread-safe, never blocks)."""
        if self._commands is not None and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop just closed: the engine is stopping
                self.loop.call_soon_threadsafe(self._commands.put_nowait, command)

    def close(self) -> None:
        self._closing = True
        self.post(Close())
        self.join(15)

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        finally:
            self.loop.close()

    async def _main(self) -> None:
        from distributed import Client  # the one place the engine imports distributed

        # distributed logs every failed reconnection with a traceback; the engine says it once
        # (set after the import: importing distributed configures its loggers).
        for name in [n for n in logging.root.manager.loggerDict if n.startswith("distributed")] + ["distributed"]:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        self._commands = asyncio.Queue()
        self._ready.set()
        while not self._closing:
            try:
                client = await asyncio.wait_for(
                    Client(self.url, asynchronous=True, timeout=CONNECT_TIMEOUT, set_as_default=False),
                    CONNECT_TIMEOUT * 2)
            except Exception as exc:  # noqa: BLE001 - unreachable, refused, bad address: retried
                self._emit(ConnectionLost(f"cannot reach the scheduler: {describe(exc)}"))
                if await self._idle(RETRY_SECONDS):
                    return
                continue
            why = await self._serve(client)
            self._futures.clear()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(timeout=2), 5)
            if self._closing:
                return
            self._emit(ConnectionLost(why))
            if await self._idle(RETRY_SECONDS):
                return

    async def _idle(self, seconds: float) -> bool:
        """Wait `seconds` for a retry, dropping commands meant for the lost cluster; True on close."""
        assert self._commands is not None
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                command = await asyncio.wait_for(self._commands.get(), left)
            except TimeoutError:
                break
            match command:
                case Close():
                    return True
                case Submit(run_id, token):
                    self._emit(SubmitFailed(run_id, token, "the Dask scheduler is not reachable"))
        return self._closing

    async def _serve(self, client: Any) -> str:
        """Run one connection until it is lost (the reason) or the link closes."""
        from distributed import Queue

        try:
            queue = await Queue(queue_name(self.tag), client=client)
            info = await client.scheduler.identity(n_workers=-1)
        except Exception as exc:  # noqa: BLE001 - lost while setting up: retried
            return f"lost while connecting: {describe(exc)}"
        refresh = asyncio.Event()

        def on_event(event: tuple) -> None:
            msg = event[1] if isinstance(event, tuple) and len(event) > 1 else {}
            if isinstance(msg, dict) and msg.get("action") == "remove-worker":
                self._emit(WorkerRemoved(msg.get("worker")))
            if isinstance(msg, dict) and msg.get("action") in ("add-worker", "remove-worker"):
                refresh.set()

        client.subscribe_topic("all", on_event)
        self._emit(Connected(_workers(info)))
        jobs = [asyncio.ensure_future(job) for job in
                (self._consume(queue), self._refresh(client, refresh), self._run_commands(client), self._watch(client))]
        done, pending = await asyncio.wait(jobs, return_when=asyncio.FIRST_COMPLETED)
        for job in pending:
            job.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*pending, return_exceptions=True)
        try:
            return str(next(iter(done)).result())
        except Exception as exc:  # noqa: BLE001 - one of the jobs failed on the lost connection
            return describe(exc)

    async def _consume(self, queue: Any) -> str:
        # Polled (`batch=True` never waits): a blocking get would leave the scheduler waiting on a
        # dead connection after a loss, ready to swallow the next item, and a get with a timeout
        # makes the scheduler log an error each time it expires.
        while True:
            try:
                items = await queue.get(batch=True)
            except Exception as exc:  # noqa: BLE001 - the scheduler went away
                return f"lost the scheduler's queue: {describe(exc)}"
            for item in items:
                self._emit(TaskNewsArrived(item))
            if not items:
                await asyncio.sleep(POLL_BUSY if self._futures else POLL_IDLE)

    async def _refresh(self, client: Any, refresh: asyncio.Event) -> str:
        last = None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(refresh.wait(), WORKERS_SECONDS)
            refresh.clear()
            try:
                info = await client.scheduler.identity(n_workers=-1)
            except Exception as exc:  # noqa: BLE001
                return f"lost the scheduler: {describe(exc)}"
            workers = _workers(info)
            if workers != last:
                last = workers
                self._emit(WorkersChanged(workers))

    async def _watch(self, client: Any) -> str:
        while True:
            await asyncio.sleep(0.5)
            if client.status != "running":
                return "lost the connection to the scheduler"

    async def _run_commands(self, client: Any) -> str:
        from distributed import Variable

        assert self._commands is not None
        while True:
            command = await self._commands.get()
            try:
                match command:
                    case Close():
                        return "closed"
                    case Submit():
                        await self._submit(client, command)
                    case SetControl(run_id, control):
                        await Variable(control_name(self.tag, run_id), client=client).set(to_wire(control))
                    case Forget(run_id, cancel):  # the run ended or was requeued: silence any copy of its task
                        await Variable(control_name(self.tag, run_id), client=client).set(to_wire(TaskControl(None)))
                        _, futures = self._futures.pop(run_id, ("", []))
                        if cancel and futures:
                            await client.cancel(futures[:1], force=True)
            except Exception as exc:  # noqa: BLE001 - one command failing must not end the link
                if isinstance(command, Submit):
                    self._emit(SubmitFailed(command.run_id, command.token, describe(exc)))
                if client.status != "running":
                    return f"lost the scheduler: {describe(exc)}"

    async def _submit(self, client: Any, submit: Submit) -> None:
        from distributed import Variable

        run_id, token = submit.run_id, submit.token
        await Variable(control_name(self.tag, run_id), client=client).set(to_wire(submit.control))
        held: list[Any] = []
        argument: Any = dict(submit.blobs)
        if sum(len(b) for b in submit.blobs.values()) >= SCATTER_BYTES:
            # Big files go to the worker directly, not through the scheduler inside the task.
            [argument] = await client.scatter([argument], workers=[submit.address], hash=False)
            held.append(argument)
        future = client.submit(run_task, dict(submit.payload), argument, key=f"trialdeck-{self.tag}-{run_id}-{token}",
                               workers=[submit.address], allow_other_workers=False,
                               resources=dict(submit.resources) if submit.resources else None, pure=False)
        self._futures[run_id] = (token, [future, *held])
        asyncio.ensure_future(self._await_task(run_id, token, future))

    async def _await_task(self, run_id: str, token: str, future: Any) -> None:
        try:
            await future
        except BaseException as exc:  # noqa: BLE001 - the task's failure (or its cancel) is the run's news
            self._emit(TaskFinished(run_id, token, describe(exc)))
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            return
        self._emit(TaskFinished(run_id, token, None))


def describe(exc: BaseException) -> str:
    """An exception in one line, without distributed's `in <TCP ... remote=...>: ` preamble."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = re.sub(r"in <[^>]*>:\s*", "", text)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _workers(info: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The scheduler's `identity` reduced to what placement needs, per worker address."""
    out = {}
    for address, w in sorted((info.get("workers") or {}).items()):
        resources = {k: float(v) for k, v in (w.get("resources") or {}).items()}
        name = str(w.get("name", address))
        name = name.split("://", 1)[-1]  # an unnamed worker goes by its address: host:port is enough
        out[address] = {"name": name, "nthreads": int(w.get("nthreads") or 1),
                        "resources": resources, "memory_limit": w.get("memory_limit")}
    return out
