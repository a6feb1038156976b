"""One script run's epochs from every source: what it reports, and what the capture reads.

A script run (runtime.runners.script) makes one `RunMetrics` per attempt. It is the
only thing the runner asks for epochs: `prepare()` rebuilds the history the
earlier attempts made, `env()` is what the program's environment gains
(the W&B stand-in), `feed()` takes the program's output as the runner's pipe
readers get it (from their threads), and `poll()` returns each change to the
history, as `Change`s, in the order they happened; `poll(final=True)` after
the program ended returns the rest.

Invariants:
- The history is one `ScriptHistory`: the lines the program appends to
  TRIALDECK_METRICS (`report()`), and each capture source's step records
  (engine.capture.steps) as sources of their own. For the same name at the
  same epoch the reported value wins.
- Nothing is lost across attempts: every captured record taken into the
  history is also appended to runs/<id>/captured.jsonl with how many reported
  lines had been taken before it and its attempt, so the next attempt
  replays both files in their first order and ends with the same history.
- Output is scanned in the pipe readers' threads, under one lock (a header
  on stdout is the step of a progress bar on stderr); files are polled from
  the runner's thread, at most every FILE_POLL_SECONDS.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trialdeck.engine.capture.files import CsvFollower, WandbFollower
from trialdeck.engine.capture.scanner import OutputScanner, clean
from trialdeck.engine.capture.steps import Observation, StepTable
from trialdeck.engine.catalogue.metrics import JsonlMetricsWriter, read_jsonl
from trialdeck.engine.catalogue.reported import REPORTED, Change, ReportedLines, ScriptHistory, numeric
from trialdeck.engine.presets.schema import CaptureConfig, expand

__all__ = ["CAPTURED_NAME", "STANDIN_DIR", "WANDB_NAME", "RunMetrics", "Sources"]

CAPTURED_NAME = "captured.jsonl"
"""runs/<id>/captured.jsonl: the captured records the history took, across attempts."""
WANDB_NAME = "wandb.jsonl"
"""runs/<id>/wandb.jsonl: the rows the W&B stand-in writes in this attempt (TRIALDECK_WANDB)."""
STANDIN_DIR = Path(__file__).resolve().parent / "standin"
"""Goes first on the program's PYTHONPATH with `wandb = true`: it holds the stand-in `wandb` package."""
FILE_POLL_SECONDS = 0.25
SETTLE_SECONDS = 0.3
"""A file source's last step is handed on after this long without a new value for it. With the
poll and the recorder's one-second coalescing, a TensorBoard scalar reaches the catalogue within
about 1.6 s of its writer's flush (bench/bench_script.py)."""
MAX_PARTIAL = 1 << 16
"""A line longer than this without a newline is scanned as it is (a bar redrawn with backspaces only)."""
PLACE_KEYS = ("epoch", "step")


class Sources:
    """The capture of one attempt: the output scanner and the file followers, each with its
    StepTable (see the module docstring). `feed` may be called from several threads."""

    def __init__(self, config: CaptureConfig, workdir: str, run_dir: Path, wandb_path: Path, started: float,
                 params: dict[str, Any] | None = None) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._partial: dict[str, bytes] = {}
        self.scanner: OutputScanner | None = None
        self.tables: dict[str, StepTable] = {}
        self.followers: list[tuple[str, Any]] = []
        self.wandb_path = wandb_path
        if config.reads_output:
            self.scanner = OutputScanner("auto" if config.auto_output else "patterns", config.patterns, config.rename)
            self.tables["output"] = StepTable(settle=None)

        def where(path: str) -> str:
            return str(Path(workdir) / Path(expand(path, params or {}, str(run_dir))).expanduser())

        if config.tensorboard:
            from trialdeck.engine.capture.tboard import TensorBoardFollower

            self.followers.append(("tensorboard", TensorBoardFollower(Path(where(config.tensorboard)), started,
                                                                      config.rename)))
        if config.csv:
            self.followers.append(("csv", CsvFollower(where(config.csv), started, config.rename)))
        if config.wandb:
            self.followers.append(("wandb", WandbFollower(wandb_path, config.rename)))
        for name, _ in self.followers:
            self.tables[name] = StepTable(settle=SETTLE_SECONDS)
        self._files_due = 0.0

    @property
    def reads_output(self) -> bool:
        return self.scanner is not None

    def env(self) -> dict[str, str]:
        """What the program's environment gains: the W&B stand-in first on PYTHONPATH."""
        if not self.config.wandb:
            return {}
        path = os.environ.get("PYTHONPATH")
        return {"PYTHONPATH": str(STANDIN_DIR) + (os.pathsep + path if path else ""), "TRIALDECK_WANDB": str(self.wandb_path)}

    def feed(self, stream: str, data: bytes) -> None:
        """Output as a pipe reader got it: whole lines are scanned, a partial one waits."""
        if self.scanner is None or not data:
            return
        with self._lock:
            buf = self._partial.pop(stream, b"") + data
            cut = max(buf.rfind(b"\n"), buf.rfind(b"\r")) + 1
            if cut == 0 and len(buf) <= MAX_PARTIAL:
                self._partial[stream] = buf
                return
            if cut == 0:
                cut = len(buf)
            if cut < len(buf):
                self._partial[stream] = buf[cut:]
            self._scan(buf[:cut])

    def _scan(self, data: bytes) -> None:
        assert self.scanner is not None
        table, now = self.tables["output"], time.monotonic()
        for obs in self.scanner.feed(data.decode("utf-8", "replace")):
            table.add(obs, now)

    def take(self, now: float | None = None) -> list[tuple[str, dict[str, Any]]]:
        """Step records ready now, as (source, report()-style line)."""
        now = time.monotonic() if now is None else now
        out: list[tuple[str, dict[str, Any]]] = []
        if self.scanner is not None:
            with self._lock:
                out += [("output", r.to_line()) for r in self.tables["output"].take(now)]
        if self.followers and now >= self._files_due:
            self._files_due = now + FILE_POLL_SECONDS
            for name, follower in self.followers:
                self._add(name, follower.poll(), now)
        for name, _ in self.followers:
            out += [(name, r.to_line()) for r in self.tables[name].take(now)]
        return out

    def close(self) -> list[tuple[str, dict[str, Any]]]:
        """The program ended: every partial line, the files' last rows, every open record."""
        out: list[tuple[str, dict[str, Any]]] = []
        if self.scanner is not None:
            with self._lock:
                for stream in list(self._partial):
                    self._scan(self._partial.pop(stream))
                out += [("output", r.to_line()) for r in self.tables["output"].flush()]
        for name, follower in self.followers:
            self._add(name, follower.poll(final=True), math.inf)
            out += [(name, r.to_line()) for r in self.tables[name].flush()]
        return out

    def _add(self, name: str, observations: list[Observation], now: float) -> None:
        table = self.tables[name]
        for obs in observations:
            table.add(obs, now)

    @property
    def thinned(self) -> int:
        return sum(t.thinned for t in self.tables.values())


class RunMetrics:
    """Every source of one script run's epochs (see the module docstring)."""

    def __init__(self, reported_path: Path, run_state_dir: Path, run_dir: Path, config: CaptureConfig, workdir: str,
                 params: dict[str, Any] | None = None) -> None:
        self.reported = ReportedLines(reported_path)
        self.journal_path = run_state_dir / CAPTURED_NAME
        self.wandb_path = run_state_dir / WANDB_NAME
        self.run_dir, self.config, self.workdir, self.params = run_dir, config, workdir, params or {}
        self.history = ScriptHistory()
        self.attempt = 0
        self.count = 0
        """Reported lines taken so far (the journal's `n`)."""
        self.sources: Sources | None = None
        self._journal: JsonlMetricsWriter | None = None

    def prepare(self) -> ScriptHistory:
        """Before an attempt starts: the history every earlier attempt made, replayed."""
        lines = self.reported.prepare()
        journal, _ = read_jsonl(self.journal_path)
        history, taken, attempt = ScriptHistory(), 0, None
        for entry in journal:
            n, line = entry.get("n"), entry.get("line")
            if not isinstance(n, int) or not isinstance(line, dict) or not isinstance(entry.get("src"), str):
                continue
            while taken < min(n, len(lines)):
                history.add(lines[taken])
                taken += 1
            if entry.get("a") != attempt:
                attempt = entry.get("a")
                history.new_attempt()
            history.add_from(entry["src"], line)
            self.attempt = max(self.attempt, int(entry.get("a") or 0))
        for line in lines[taken:]:
            history.add(line)
        history.new_attempt()
        self.history, self.count = history, len(lines)
        self.attempt += 1
        return history

    def start(self, started: float | None = None) -> Sources:
        """The capture of this attempt, reading files written from `started` (epoch seconds) on."""
        try:
            self.wandb_path.unlink()  # its rows are in the journal: this attempt's start a new file
        except FileNotFoundError:
            pass
        self.sources = Sources(self.config, self.workdir, self.run_dir, self.wandb_path,
                               time.time() if started is None else started, self.params)
        return self.sources

    def poll(self, final: bool = False) -> Iterator[Change]:
        """Changes to the history since the last poll, reported lines first, then captured records,
        each taken into the history as it is yielded: a caller that stops (an early stop) leaves
        the rest out, as the program's later epochs are."""
        for line in self.reported.read(final=final):
            self.count += 1
            yield self.history.add_from(REPORTED, line)
        if self.sources is not None:
            for source, line in (self.sources.close() if final else self.sources.take()):
                self._record(source, line)
                yield self.history.add_from(source, line)

    def _record(self, source: str, line: dict[str, Any]) -> None:
        if self._journal is None:
            self._journal = JsonlMetricsWriter(self.journal_path)
        self._journal.write({"n": self.count, "a": self.attempt, "src": source, "line": line})

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    def names(self) -> list[str]:
        """The metric names recorded so far, in the order they first came (numbers only)."""
        seen: dict[str, None] = {}
        for entry in self.history.entries:
            for key, value in entry.items():
                if key not in PLACE_KEYS and numeric(value) is not None:
                    seen.setdefault(key, None)
        return list(seen)


def forget(run_state_dir: Path) -> None:
    """Start a run over: its captured records go with its reported lines."""
    for name in (CAPTURED_NAME, WANDB_NAME):
        try:
            (run_state_dir / name).unlink()
        except FileNotFoundError:
            pass


ENGINE_LINE = re.compile(r"^\d\d:\d\d:\d\d (?:worker \d+ starting |\[epoch -?\d+\] |the script was asked to stop|"
                         r"epoch \d+ \w+(?: \(\w+\))? again: |\d+ line\(s\) of |[a-z_]+: )")
"""The lines the engine itself writes into a run's log (runtime.runners.recorder), left out when a run's log is read."""


def capture_log(config: CaptureConfig, text: str) -> list[dict[str, Any]]:
    """`presets capture`: the rows the output capture records from a saved log (a run's log.txt
    too: the engine's own lines are left out), one per step (`{"step": N, "epoch": N or None,
    NAME: value, ...}`), thinning off. With output off it reads nothing; with a file source set
    and no patterns, `auto` would read nothing either, so here it reads as `auto` (a preview)."""
    mode = config.output if config.output != "auto" or not config.files or config.patterns else "auto"
    if config.output == "auto" and config.files and config.patterns:
        mode = "patterns"
    scanner = OutputScanner(mode, config.patterns, config.rename)
    table = StepTable(settle=None, thin_after=None)
    lines = [line for line in clean(text).split("\n") if not ENGINE_LINE.match(line)]
    for obs in scanner.feed("\n".join(lines)):
        table.add(obs)
    return _rows(table.flush())


def capture_file(config: CaptureConfig, path: Path) -> list[dict[str, Any]]:
    """`presets capture` on a CSV log, a TensorBoard event file or folder, or the W&B stand-in's lines."""
    observations: list[Observation]
    if path.is_dir() or "tfevents" in path.name:
        from trialdeck.engine.capture.tboard import TensorBoardFollower

        folder, only = (path, None) if path.is_dir() else (path.parent, path)
        observations = TensorBoardFollower(folder, 0.0, config.rename, only=only).poll(final=True)
    elif path.suffix == ".csv":
        observations = CsvFollower(str(path), 0.0, config.rename).poll(final=True)
    else:
        observations = WandbFollower(path, config.rename).poll(final=True)
    table = StepTable(settle=None, thin_after=None)
    for obs in observations:
        table.add(obs)
    return _rows(table.flush())


def _rows(records: list) -> list[dict[str, Any]]:
    """Records as rows, a step that came back (a restarted program) replacing the later ones."""
    rows: list[dict[str, Any]] = []
    keys: list[int] = []
    for rec in records:
        while keys and keys[-1] >= rec.key:
            if keys[-1] == rec.key:
                rows[-1] = {**rows[-1], **rec.to_row()}
                break
            keys.pop()
            rows.pop()
        else:
            keys.append(rec.key)
            rows.append(rec.to_row())
    return rows
