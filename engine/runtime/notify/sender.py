"""Tell a person when a run or a study ends: a webhook (Slack, Discord, anything that takes JSON) or a command.

Configured in `engine.toml` (off when there is no [notify] table):

    [notify]
    webhook = "https://hooks.slack.com/services/..."   # a JSON POST
    command = ["notify-send", "trialdeck", "{text}"]    # argv, no shell; {run} {state} {text} {preset} {study}
    on = ["completed", "failed", "early_stopped", "study_done"]   # the default
    trials = false      # also each trial run of a study (default: only the study's end)
    timeout = 10        # seconds per attempt
    retries = 3         # attempts after the first, 2 s, 4 s, 8 s apart

The webhook's body has `run`, `state`, `preset`, `summary`, `study`, `trial`,
`error`, and a human line as both `text` (Slack) and `content` (Discord).

Invariants:
- The engine's loop never waits on a notification: `run_ended` and
  `study_ended` put a small item on a bounded queue and return; one daemon
  thread reads the run's record, sends, and retries with backoff. A full
  queue drops the item and says so in engine.log.
- Every attempt has a timeout (the HTTP request, the command); a command
  that outlives it is killed with its process group.
- A failure is a line in engine.log, never an exception in the engine. The
  webhook's URL is logged as scheme://host only (Slack's path is a secret).
- One notification per ending: a run that ends, is resumed and ends again is
  two endings; the same ending reported twice is sent once.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from trialdeck.engine.runtime.notify.config import NotifyConfig

QUEUE_SIZE = 256
BACKOFF = 2.0
"""Seconds before the first retry; each next wait doubles."""


def run_message(record: Mapping[str, Any]) -> dict[str, Any]:
    """The notification for a run that ended: its id, state, preset, summary and a human line."""
    run_id, state, preset = record["id"], record.get("state"), record.get("preset") or ""
    summary = dict(record.get("summary") or {})
    hist = record.get("history") or []
    parts = [f"trialdeck: {run_id} {state}", preset]
    if hist:
        parts.append(f"{len(hist)} epochs")
    kept = summary.get("kept") or (hist[-1] if hist else {})
    metrics = [f"{k} {kept[k]:.4f}" for k in ("val_loss", "val_acc", "val_mae") if isinstance(kept.get(k), (int, float))]
    if metrics:
        parts.append(", ".join(metrics))
    if record.get("study") is not None:
        parts.append(f"study {record['study']} trial {record.get('trial')}")
    if record.get("error"):
        parts.append(f"error: {record['error']}")
    text = " · ".join(p for p in parts if p)
    return {"kind": "run", "run": run_id, "state": state, "preset": preset, "summary": summary,
            "study": record.get("study"), "trial": record.get("trial"), "error": record.get("error"),
            "tags": list(record.get("tags") or []), "text": text, "content": text}


def study_message(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The notification for a study that ended (completed, stopped or failed)."""
    name, state = doc["name"], doc.get("state")
    best = doc.get("best") or {}
    parts = [f"trialdeck: study {name} {state}", doc.get("preset") or "", f"{doc.get('n_done', 0)} trials done"]
    if best.get("value") is not None:
        parts.append(f"best {doc.get('metric')} {best['value']:.4g} (trial {best.get('number')}, run {best.get('run_id')})")
    if doc.get("error"):
        parts.append(f"error: {doc['error']}")
    text = " · ".join(p for p in parts if p)
    summary = {"metric": doc.get("metric"), "direction": doc.get("direction"), "best": best or None,
               "n_done": doc.get("n_done"), "counts": doc.get("counts")}
    return {"kind": "study", "run": None, "study": name, "state": "study_done", "study_state": state,
            "preset": doc.get("preset"), "summary": summary, "error": doc.get("error"), "text": text, "content": text}


class Notifier:
    """Sends notifications from one background thread (see the module docstring)."""

    def __init__(self, config: NotifyConfig, store: Any, log: Callable[[str], None], *,
                 queue_size: int = QUEUE_SIZE) -> None:
        self.config = config
        self.store = store
        self.log = log
        self._queue: queue.Queue[tuple[str, str, str] | None] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._sent: dict[tuple[str, str], Any] = {}
        self._thread = threading.Thread(target=self._loop, name="trialdeck-notify", daemon=True)

    def start(self) -> Notifier:
        self._thread.start()
        targets = [t for t in (self._host(), self.config.command and self.config.command[0]) if t]
        self.log(f"notifications on {', '.join(sorted(self.config.on))} go to {' and '.join(targets)}")
        return self

    # -- the engine's side: never blocks -----------------------------------------------------

    def run_ended(self, run_id: str, state: str) -> None:
        if state in self.config.on:
            self._put(("run", run_id, state))

    def study_ended(self, name: str, state: str) -> None:
        if "study_done" in self.config.on:
            self._put(("study", name, state))

    def _put(self, item: tuple[str, str, str]) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.log(f"notify: {item[0]} {item[1]} {item[2]} not sent: {self._queue.maxsize} notifications are waiting already")

    def close(self, grace: float = 2.0) -> None:
        """Stop after what is being sent now (at most `grace` seconds); what is still queued is logged as dropped."""
        self._stop.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        self._thread.join(grace)
        left = self._queue.qsize()
        if left > 1 or (left == 1 and self._thread.is_alive()):
            self.log(f"notify: the engine stopped with about {left} notification(s) unsent")

    # -- the thread --------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            item = self._queue.get()
            if item is None:
                return
            try:
                message = self._message(*item)
                if message is not None:
                    self._deliver(message)
            except Exception as exc:  # noqa: BLE001 - a bad record must not end notifications for the rest
                self.log(f"notify: {item[0]} {item[1]}: {type(exc).__name__}: {exc}")

    def _message(self, kind: str, name: str, state: str) -> dict[str, Any] | None:
        if kind == "study":
            doc = self.store.get_study(name)
            if doc is None:
                return None
            key, ending = ("study", name), (doc.get("state"), doc.get("finished_at"))
            message = study_message(doc)
        else:
            record = self.store.get_run(name)
            if record is None or (record.get("study") is not None and not self.config.trials):
                return None
            key, ending = ("run", name), (record.get("state"), record.get("finished_at"))
            message = run_message(record)
        if self._sent.get(key) == ending:
            return None
        self._sent[key] = ending
        if len(self._sent) > 10_000:  # a long-lived engine: forget the oldest endings
            for old in list(self._sent)[:5_000]:
                del self._sent[old]
        return message

    def _deliver(self, message: dict[str, Any]) -> None:
        what = message["run"] or f"study {message['study']}"
        if self.config.webhook:
            self._attempts(f"webhook {self._host()} for {what}", lambda: self._post(message))
        if self.config.command:
            self._attempts(f"command {self.config.command[0]} for {what}", lambda: self._run(message))

    def _attempts(self, what: str, send: Callable[[], None]) -> None:
        tries = self.config.retries + 1
        for attempt in range(1, tries + 1):
            try:
                send()
                return
            except Exception as exc:  # noqa: BLE001 - every failure is reported the same way: a line, then a retry
                reason = _reason(exc)
            if attempt == tries or self._stop.is_set():
                self.log(f"notify: {what} failed {attempt} time(s), giving up: {reason}")
                return
            delay = BACKOFF * 2 ** (attempt - 1)
            self.log(f"notify: {what} failed (attempt {attempt} of {tries}): {reason}; retrying in {delay:g} s")
            if self._stop.wait(delay):
                self.log(f"notify: {what} not retried: the engine is stopping")
                return

    def _post(self, message: dict[str, Any]) -> None:
        assert self.config.webhook is not None
        body = json.dumps(message, default=str).encode()
        request = urllib.request.Request(self.config.webhook, data=body, method="POST",
                                         headers={"Content-Type": "application/json", "User-Agent": "trialdeck"})
        with urllib.request.urlopen(request, timeout=self.config.timeout) as response:
            response.read(65536)

    def _run(self, message: dict[str, Any]) -> None:
        assert self.config.command is not None
        values = {"{run}": message["run"] or "", "{state}": str(message["state"]), "{text}": message["text"],
                  "{preset}": str(message.get("preset") or ""), "{study}": str(message.get("study") or "")}
        argv = [_fill(arg, values) for arg in self.config.command]
        env = {**os.environ, "TRIALDECK_NOTIFICATION": json.dumps(message, default=str)}
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=env, start_new_session=True)
        try:
            _, stderr = proc.communicate(timeout=self.config.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise TimeoutError(f"still running after {self.config.timeout:g} s; killed") from None
        if proc.returncode != 0:
            last = (stderr or b"").decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise RuntimeError(f"exited with status {proc.returncode}" + (f": {last[0]}" if last[0] else ""))

    def _host(self) -> str:
        if not self.config.webhook:
            return ""
        parts = urlsplit(self.config.webhook)
        return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def _fill(arg: str, values: Mapping[str, str]) -> str:
    for key, value in values.items():
        arg = arg.replace(key, value)
    return arg


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(cause, TimeoutError) or "timed out" in str(cause):
        return "no answer within the timeout"
    if isinstance(exc, urllib.error.URLError):
        return f"cannot connect: {exc.reason}"
    if isinstance(exc, FileNotFoundError):
        return f"no such program: {exc.filename}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
