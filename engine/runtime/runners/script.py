"""Script runs: a user's own training program in a device slot, watched and stopped like a built-in run.

A worker runs ScriptRunner instead of the trainer for a RunSpec with a
[script] table (DESIGN "Script runs"). Invariants:

- Start: the command (placeholders filled, no shell) runs in `script.workdir`,
  in its own session and process group, with the slot's CUDA_VISIBLE_DEVICES
  (empty for a CPU slot) and the TRIALDECK_* environment. It gets SIGKILL if its
  worker dies (PR_SET_PDEATHSIG), and whatever it left behind is killed before
  the run starts again, so a killed engine never leaves two copies training.
- Output: stderr passes through a pipe that a thread copies into the log in
  large chunks, keeping only its tail for the failure reason; stdout does too
  when the capture reads the output (`[script.capture]`, on by default), and
  is the run's log file itself when it does not. The capture scans the chunks
  in those threads (engine.capture: a known line shape costs a few
  microseconds), so a script printing 10,000 lines a second costs the engine
  a few percent of a core.
- Metrics: every epoch comes from one `RunMetrics` (engine.capture.session):
  the JSON lines the script appends to TRIALDECK_METRICS, and what the
  capture reads from its output and logs, the reported value winning for the
  same name and epoch. Each epoch goes through the RunRecorder like a built-in
  epoch (metrics.jsonl, the catalogue, the TUI and `runs follow` work
  unchanged) and through early stopping and the trial reporter. An epoch
  reported again (a resumed script going back to its checkpoint) replaces that
  epoch and every later one: a history never holds a duplicate, and has a gap
  only where the script skipped one. A watched metric (early stopping's
  monitor, a study's objective) that has not arrived is said once in the
  run's events, with the names that did, and again at the end.
- Stopping: early stopping, a pruner, cancel and engine stop send SIGTERM to
  the process group and to every process carrying the run's marker (its
  TRIALDECK_RUN_DIR, inherited by children that left the group), then SIGKILL
  after `grace_seconds`. No process of a run outlives it.

Reading the reported lines is catalogue.reported's, the capture
engine.capture's; finding, stopping and measuring the processes is
runners.proctree's.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

from trialdeck.engine.capture.scanner import failure_line
from trialdeck.engine.capture.session import RunMetrics
from trialdeck.engine.catalogue.reported import REPORTED, Change, ReportedEpoch, numeric
from trialdeck.engine.presets.schema import RunSpec, expand
from trialdeck.engine.runs.facts import Ended
from trialdeck.engine.runs.folder import FILES_NAME, LOG_NAME, REPORTED_NAME
from trialdeck.engine.runs.lifecycle import FactSink, Lifecycle
from trialdeck.engine.runtime.runners.base import Done, Runner, StopRequests
from trialdeck.engine.runtime.runners.proctree import MARKER_ENV, read_gpu_memory, run_processes, stop_processes
from trialdeck.engine.runtime.runners.recorder import RunRecorder
from trialdeck.engine.runtime.workers.messages import Channel, MemoryMeasured, StopGrace, WorkerNews
from trialdeck.engine.types import EpochRecord, EventKind, RunEvent, RunState, run_summary
from trialdeck.engine.workspace import Workspace, make_private_dir, private_open

POLL_SECONDS = 0.1
"""How often the runner looks for new lines, an exit and a stop request."""
TAIL_BYTES = 8192
"""How much of stderr's end is kept in memory for the failure reason."""
BATCH_BYTES, BATCH_SECONDS = 16384, 0.01
"""A pipe reader that got less than BATCH_BYTES waits BATCH_SECONDS before its next read."""


# ----------------------------------------------------------------------------- the command


def command_of(spec: RunSpec, run_dir: str | None = None, resume: bool = False) -> list[str]:
    """The command to start (the program as found when the run was queued; `resume_args` on a resume)."""
    assert spec.script is not None
    return spec.script.argv(spec.params, run_dir, resume)


def script_file(argv: list[str], workdir: str) -> Path | None:
    """The file the command runs, for `code_hash`: the first argument before any `-m`/`-c` that
    is an existing file (`python3 -u train.py`), else the program itself when it is a script
    (`./train.sh`, starting with #!); None for `python -m pkg` (an interpreter is no script)."""
    for arg in argv[1:]:
        if arg in ("-m", "-c"):
            break  # a module or inline code: no file of its own
        if not arg.startswith("-") and (Path(workdir) / Path(arg).expanduser()).is_file():
            return (Path(workdir) / Path(arg).expanduser()).resolve()
    program = Path(workdir) / Path(argv[0]).expanduser()
    if "/" in argv[0] and program.is_file():
        try:
            with open(program, "rb") as f:
                if f.read(2) == b"#!":
                    return program.resolve()
        except OSError:
            pass
    return None


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def environment(spec: RunSpec, run_id: str, files: Path, reported: Path, device: str, resume: bool,
                threads: int | None = None) -> dict[str, str]:
    """The child's environment: the worker's, minus trialdeck's own settings, plus the run's
    variables, the slot's GPU, and `script.env` (placeholders filled)."""
    assert spec.script is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIALDECK_")}
    # A script's prints reach the log as they happen (stdout is a file, which Python buffers).
    env.setdefault("PYTHONUNBUFFERED", "1")
    if threads:  # the slot's share of the cores, as built-in runs get (torch, numpy and BLAS read these)
        env.setdefault("OMP_NUM_THREADS", str(threads))
        env.setdefault("MKL_NUM_THREADS", str(threads))
    env.update({k: expand(v, spec.params, str(files)) for k, v in spec.script.env.items()})
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    elif device.startswith("cuda:"):  # `trialdeck train --device cuda:1`; a worker's slot has set it already
        env["CUDA_VISIBLE_DEVICES"] = device[5:]
    env.update({
        "TRIALDECK_RUN_ID": run_id,
        MARKER_ENV: str(files),
        "TRIALDECK_PARAMS": json.dumps(spec.params, separators=(",", ":")),
        "TRIALDECK_METRICS": str(reported),
    })
    if resume:
        env["TRIALDECK_RESUME"] = "1"
    return env


_LIBC: Any = None


def _child_setup(parent: int) -> Callable[[], None] | None:
    """Runs in the child between fork and exec: die with the worker (Linux), and never start
    at all if the worker is already gone. Only a system call: nothing that takes a lock."""
    global _LIBC
    if not sys.platform.startswith("linux"):
        return None
    if _LIBC is None:
        _LIBC = ctypes.CDLL("libc.so.6", use_errno=True)  # loaded before the fork
    prctl = _LIBC.prctl

    def setup() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)

    return setup


class StderrTail(threading.Thread):
    """Copies one of the child's pipes (stderr; stdout when it is captured) into the log as it
    comes, in large chunks, keeping its tail, and hands each chunk to `on_data` (the capture)."""

    def __init__(self, pipe: int, log_fd: int, on_data: Callable[[bytes], None] | None = None,
                 name: str = "script-stderr") -> None:
        super().__init__(name=name, daemon=True)
        self.pipe, self.log_fd, self.on_data = pipe, log_fd, on_data
        self.tail = b""

    def run(self) -> None:
        while True:
            try:
                chunk = os.read(self.pipe, 1 << 16)
            except OSError:
                break
            if not chunk:
                break
            view = memoryview(chunk)
            while view:
                try:
                    view = view[os.write(self.log_fd, view):]
                except OSError:  # a full disk: keep draining, so the script is never blocked on us
                    break
            self.tail = (self.tail + chunk)[-TAIL_BYTES:]
            if self.on_data is not None:
                self.on_data(chunk)
            if len(chunk) < BATCH_BYTES:
                # A program printing line by line would wake this thread once a line: let a few
                # milliseconds of output gather in the pipe (64 KB) and take it in one read.
                time.sleep(BATCH_SECONDS)
        os.close(self.pipe)
        os.close(self.log_fd)

    def last_line(self) -> str | None:
        """The failure reason: the exception line of the last Python traceback, else the last line."""
        return failure_line(self.tail.decode("utf-8", "replace"))


def kill_leftovers(ws: Workspace, run_id: str, grace: float = 0.0) -> int:
    """Stop any process still carrying `run_id`'s marker (a killed worker's script and its
    children); how many there were. Light: the engine calls it on a dead worker's runs."""
    return stop_processes(str(ws.runs_dir / run_id / FILES_NAME), grace)


# ----------------------------------------------------------------------------- one run


class ScriptRunner(Runner):
    """A run whose [script] is the user's own program (runners.base chooses it from the run's config)."""

    def run(self, done: Done) -> None:
        (record,) = self.records
        ctx, run_id = self.ctx, record["id"]
        recorder = None
        try:
            spec = RunSpec.model_validate(record["config"])
            observer = StopRequests(ctx.stop, run_id, ctx.extra_for(record))
            recorder = RunRecorder(ctx.store, run_id, ctx.ws.run_dir(run_id), observer=observer, facts=ctx.facts)
            state = ScriptRun(ctx.store, ctx.ws, dict(record), spec, ctx.device, recorder, ctx.channel, ctx.threads,
                              facts=ctx.facts).run()
        except Exception as exc:  # noqa: BLE001 - the run fails alone, with its reason
            if recorder is not None:
                recorder.log(traceback.format_exc())
            state = ctx.fail(run_id, f"{type(exc).__name__}: {exc}").value
        finally:
            if recorder is not None:
                recorder.close()
        done(run_id, RunState(state))

    @classmethod
    def clean_up_after(cls, ws: Workspace, run_id: str) -> None:
        kill_leftovers(ws, run_id)  # the script dies with its worker; its children may not have


class ScriptRun:
    """One attempt of a script run (see the module docstring); `run` returns its final state."""

    def __init__(self, store: Any, ws: Workspace, record: Mapping[str, Any], spec: RunSpec, device: str,
                 recorder: RunRecorder, conn: Channel | None = None, threads: int | None = None,
                 facts: FactSink | None = None) -> None:
        assert spec.script is not None
        self.store, self.ws, self.record, self.spec, self.device = store, ws, record, spec, device
        self.recorder, self.conn, self.threads = recorder, conn, threads
        self.facts: FactSink = facts if facts is not None else Lifecycle(store)
        """Where the run's end goes (default: a lifecycle over `store`, a Store)."""
        self.run_id = record["id"]
        run_dir = ws.run_dir(self.run_id)
        self.files = make_private_dir(run_dir / FILES_NAME)
        self.marker = str(self.files)
        self.workdir = spec.script.workdir or record.get("workdir") or ""
        self.metrics = RunMetrics(run_dir / REPORTED_NAME, run_dir, self.files, spec.script.capture, self.workdir,
                                  spec.params)
        self.reported = self.metrics.reported
        self.resume = self.reported.path.exists()
        self.grace = spec.script.grace_seconds
        es = spec.early_stopping
        self.monitor = es.monitor if es.enabled else (spec.tune.metric if spec.tune else "val_loss")
        self.mode = es.resolved_mode if es.enabled else (
            "max" if spec.tune and spec.tune.direction == "maximize" else "min")
        self.stopper: Any = None
        self.out_pump: StderrTail | None = None
        self.stop: Any = None
        """The Stop decided (early stop, prune, cancel, engine stop); None while it runs on."""
        self.watched = self._watched(record)
        """(what watches it, metric) for early stopping's monitor and a trial's objective."""
        self.missing_said: set[str] = set()
        self.arrived: set[str] = set()
        """Watched metrics some epoch has held as a number."""
        self.started = time.perf_counter()
        self.peak: int | None = None
        self.memory_read = False
        """This attempt's GPU memory went to the engine (once, after its first epoch)."""

    # -- the attempt -------------------------------------------------------------------------

    def run(self) -> str:
        kill_leftovers(self.ws, self.run_id)  # an earlier attempt's processes, should a kill have missed any
        self.history = self.metrics.prepare()
        self.sources = self.metrics.start()
        self.arrived = {name for _, name in self.watched
                        if any(numeric(e.get(name)) is not None for e in self.history.entries)}
        self._replay_stopper()
        argv = command_of(self.spec, str(self.files), self.resume)
        info = {"device": self.record.get("device") or self.device, "params": None, "command": argv,
                "workdir": self.workdir, "resumed": self.resume, "start_epoch": self.history.last_epoch or 0,
                "history": list(self.history.entries)}
        self.recorder.on_start(info)
        if self.conn is not None:
            self._send(StopGrace(self.run_id, self.grace))  # the engine waits this long before it kills the worker
        proc, tail = self._start(argv)
        if proc is None:
            assert isinstance(tail, str)
            return self._finish(RunState.FAILED, tail)
        self.proc = proc
        try:
            return self._follow(proc, tail)
        except BaseException:  # a bug of ours, or a recorder that cannot write: the script must not go on alone
            stop_processes(self.marker, self.grace, proc)
            raise
        finally:
            self.metrics.close()

    def _follow(self, proc: subprocess.Popen, tail: StderrTail | str) -> str:
        """Watch the started script to its end, stop it when asked, and record the result."""
        try:
            code = self._watch(proc)
        except KeyboardInterrupt:  # `trialdeck train` in a terminal: the script has its own session
            from trialdeck.engine.training.callbacks import Stop

            self.stop = Stop(RunState.INTERRUPTED, RunEvent(EventKind.INTERRUPTED.value, self.history.last_epoch,
                                                            "interrupted by the user (Ctrl-C)"))
            code = None
        if self.stop is not None:
            left = stop_processes(self.marker, self.grace, proc)
            how = f"; {left} process(es) did not stop within {self.grace:g} s and were killed" if left else ""
            self.recorder.log(f"the script was asked to stop ({self.stop.state.value}){how}")
            code = proc.returncode
        # Children the script left behind (or that outlived it) go with it.
        stop_processes(self.marker, min(self.grace, 2.0), proc)
        assert isinstance(tail, StderrTail)
        tail.join(5)
        if self.out_pump is not None:
            self.out_pump.join(5)
        ended = self.stop is not None
        if self.stop is None or self.stop.state in (RunState.INTERRUPTED, RunState.CANCELLED):
            for change in self.metrics.poll(final=True):  # what it reported and printed up to its exit
                self._epoch(change, decide=not ended)
                if self.stop is not None and not ended:
                    break  # decided on the way (it outran us): its history ends where it would have stopped
        self._log_problems()
        self._say_missing(final=True)
        if self.stop is not None and (ended or code == 0):
            return self._finish(self.stop.state, None, self.stop.event)
        if code == 0:
            return self._finish(RunState.COMPLETED, None)
        return self._finish(RunState.FAILED, self._reason(code, tail.last_line()))

    def _start(self, argv: list[str]) -> tuple[subprocess.Popen | None, StderrTail | str]:
        """Start the command; (process, stderr reader), or (None, why it could not start)."""
        if not self.workdir or not Path(self.workdir).is_dir():
            return None, f"cannot start the script: its workdir {self.workdir or '(none)'} does not exist"
        path = script_file(argv, self.workdir)
        fields: dict[str, Any] = {}
        if path is not None:
            fields.update(code_hash=file_hash(path), code_file=str(path))
        env = environment(self.spec, self.run_id, self.files, self.reported.path, self.device, self.resume, self.threads)
        env.update(self.sources.env())
        log_fd = private_open(self.ws.run_dir(self.run_id) / LOG_NAME)
        self.recorder.log(f"worker {os.getpid()} starting {self.run_id} on {self.device}: {_shell_words(argv)} "
                          f"(in {self.workdir}{'; TRIALDECK_RESUME=1' if self.resume else ''})")
        read_end, write_end = os.pipe()
        # Captured output reaches the log through a pipe the capture reads; else the child writes the log itself.
        out_read, out_write = os.pipe() if self.sources.reads_output else (None, log_fd)
        try:
            proc = subprocess.Popen(argv, cwd=self.workdir, env=env, stdin=subprocess.DEVNULL, stdout=out_write,
                                    stderr=write_end, start_new_session=True, close_fds=True,
                                    preexec_fn=_child_setup(os.getpid()))
        except OSError as exc:
            for fd in (read_end, out_read):
                if fd is not None:
                    os.close(fd)
            if isinstance(exc, FileNotFoundError):
                return None, f"cannot start {argv[0]!r}: not found (looked in {self.workdir} and on PATH)"
            if isinstance(exc, PermissionError):
                return None, f"cannot start {argv[0]!r}: permission denied (is it executable?)"
            return None, f"cannot start {argv[0]!r}: {exc.strerror or exc}"
        finally:
            os.close(write_end)
            os.close(log_fd)
            if out_read is not None:
                os.close(out_write)
        log = self.ws.run_dir(self.run_id) / LOG_NAME
        capture = self.sources.feed if self.sources.reads_output else None
        tail = StderrTail(read_end, private_open(log), capture and (lambda data: capture("stderr", data)))
        tail.start()
        if out_read is not None:
            self.out_pump = StderrTail(out_read, private_open(log), lambda data: self.sources.feed("stdout", data),
                                       name="script-stdout")
            self.out_pump.start()
        self.store.update_run(self.run_id, script_pid=proc.pid, **fields)
        return proc, tail

    def _watch(self, proc: subprocess.Popen) -> int | None:
        """Until the script exits or a stop is decided: its exit code (None when stopped)."""
        while True:
            for change in self.metrics.poll():
                self._epoch(change)
                if self.stop is not None:
                    return None
            self.recorder.tick()
            self.stop = self.recorder.poll()  # cancel, engine stop
            if self.stop is not None:
                return None
            code = proc.poll()
            if code is not None:
                return code
            time.sleep(POLL_SECONDS)

    # -- epochs ------------------------------------------------------------------------------

    def _replay_stopper(self, entries: list[dict[str, Any]] | None = None) -> None:
        """Early stopping's state after the epochs so far (a resumed run goes on counting)."""
        es = self.spec.early_stopping
        if not es.enabled:
            return
        # Deferred: the tracker module imports torch, which only a worker has loaded.
        from trialdeck.engine.training.tracker import EarlyStopper

        self.stopper = EarlyStopper(self.monitor, self.mode, es.patience, es.min_delta)
        for entry in self.history.entries if entries is None else entries:
            value = numeric(entry.get(self.monitor))
            if value is not None:
                self.stopper.update(entry["epoch"], value)

    def _epoch(self, change: Change, decide: bool = True) -> None:
        """Take one change to the history. A new epoch goes to the recorder, early stopping and the
        trial's pruner. A changed or replaced one (a source went back, or brought values for an
        epoch already recorded) restarts the recorder from the entries before it and publishes
        the rest again; early stopping counts from there again (Optuna keeps a step's first value)."""
        from trialdeck.engine.training.callbacks import Stop

        entries = self.history.entries
        todo = entries[-1:]
        if change.how != "new":
            cut = next((i for i, e in enumerate(entries) if e["epoch"] >= change.since), len(entries))
            if change.how == "rewound" and change.replaced:
                self.recorder.log(self._went_back(change))
            self.recorder.on_start({"device": self.record.get("device") or self.device, "params": None,
                                    "history": entries[:cut], "rewound": change.since})
            self._replay_stopper(entries[:cut])
            todo = entries[cut:]
        early, stop = False, None
        with warnings.catch_warnings():  # a step Optuna heard already: it keeps the first value, and warns
            warnings.filterwarnings("ignore", message=".*is already reported")
            for entry in todo:
                record = ReportedEpoch(entry["epoch"], {k: v for k, v in entry.items() if k != "epoch"})
                self.arrived.update(name for _, name in self.watched if record.metric(name) is not None)
                events: list[RunEvent] = []
                value = record.metric(self.monitor)
                if self.stopper is not None and decide and not early and value is not None:
                    _, early = self.stopper.update(record.epoch, value)
                    if early:
                        events.append(self._early_stopped_event(record.epoch))
                # A reported epoch is an epoch record by duck type (`epoch`, `to_json`), with the script's own names.
                stop = self.recorder.on_epoch(cast(EpochRecord, record), events) or stop
        if not self.memory_read and self.conn is not None and self.device.startswith("cuda"):
            self.memory_read = True
            self._report_memory()
        self._say_missing()
        if not decide:
            return
        if early:
            self.stop = Stop(RunState.EARLY_STOPPED, None)  # its event went with the epoch
        elif stop is not None and self.stop is None:
            self.stop = stop

    def _went_back(self, change: Change) -> str:
        """Why the history lost epochs, in words: a program that went back to a checkpoint of its
        own, or one that simply started again."""
        epoch = change.record.epoch
        what = "reported" if change.source == REPORTED else "printed" if change.source == "output" \
            else f"logged ({change.source})"
        first, last = change.replaced or (epoch, epoch)
        span = f"epoch {first} is" if first == last else f"epochs {first}..{last} are"
        if change.restarted:
            return (f"epoch {epoch} {what} again: the script started over (it did not resume from a checkpoint "
                    f"of its own); its {span} replaced")
        return f"epoch {epoch} {what} again: the script went back to an earlier checkpoint; its {span} replaced"

    def _watched(self, record: Mapping[str, Any]) -> list[tuple[str, str]]:
        out = []
        if self.spec.early_stopping.enabled:
            out.append(("early stopping", self.spec.early_stopping.monitor))
        if record.get("study") is not None and self.spec.tune is not None:
            kind = getattr(self.spec.tune.pruner, "kind", self.spec.tune.pruner)  # a name, or a [tune.pruner] table
            pruner = "" if kind == "none" else " and its pruner"
            out.append((f"study {record['study']}{pruner}", self.spec.tune.metric))
        return out

    def _say_missing(self, final: bool = False) -> None:
        """A watched metric the program has not reported, said once after its first epoch and
        again at its end, with the names it did report (DESIGN "Nothing silent")."""
        if not self.history.entries:
            return
        for who, name in self.watched:
            if (name in self.missing_said and not final) or name in self.arrived:
                continue
            names = ", ".join(self.metrics.names()) or "none"
            if final:
                message = f"{who} watched {name}, which never arrived (recorded: {names})"
            else:
                message = f"{who} watches {name}; the program has reported none (captured so far: {names})"
            self.missing_said.add(name)
            self.recorder.on_event(RunEvent(EventKind.METRIC_MISSING.value, self.history.last_epoch, message,
                                            {"metric": name, "recorded": self.metrics.names()}))

    def _early_stopped_event(self, epoch: int) -> RunEvent:
        es, stopper = self.spec.early_stopping, self.stopper
        return RunEvent(
            EventKind.EARLY_STOPPED.value, epoch,
            f"{es.monitor} did not improve by more than {es.min_delta:g} for {es.patience} epochs; "
            f"best {stopper.best:.4f} at epoch {stopper.best_epoch}; the script was asked to stop",
            {"best_epoch": stopper.best_epoch, "best_value": stopper.best, "patience": es.patience,
             "monitor": es.monitor, "restored": False},
        )

    def _report_memory(self) -> None:
        """The script's GPU memory after its first epoch, for packing (like a built-in run's peak)."""
        gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        if not gpu or "," in gpu:
            return
        leader = self.proc.pid if self.proc.poll() is None else None
        pids = [p.pid for p in run_processes(self.marker, leader, leader)]
        used = read_gpu_memory(pids, gpu)
        if used:
            self.peak = max(self.peak or 0, used)
            self._send(MemoryMeasured(self.run_id, used))

    def _send(self, message: WorkerNews) -> None:
        assert self.conn is not None
        try:
            self.conn.send(message)
        except (BrokenPipeError, OSError):
            pass

    # -- the end -----------------------------------------------------------------------------

    def _reason(self, code: int | None, last_line: str | None) -> str:
        if last_line:
            return last_line
        if code is not None and code < 0:
            try:
                return f"the script was killed by signal {signal.Signals(-code).name}"
            except ValueError:
                return f"the script was killed by signal {-code}"
        return f"the script exited with code {code} (nothing on stderr)"

    def _log_problems(self) -> None:
        problems = self.reported.problems
        if problems:
            self.recorder.log(f"{len(problems)} line(s) of {self.reported.path.name} were not a JSON object and were "
                              f"skipped, the first: {problems[0]!r}")
            problems.clear()

    def _finish(self, state: RunState, error: str | None, event: RunEvent | None = None) -> str:
        if event is not None:
            self.recorder.on_event(event)
        if state is RunState.FAILED:
            self.recorder.on_event(RunEvent(EventKind.FAILED.value, self.history.last_epoch, error or "failed"))
        pending = self.recorder.pending()
        fields = {**pending["fields"], "history": self.history.entries, "summary": self._summary(), "kept_epoch": None}
        fields.pop("n_params", None)
        if self.peak:
            fields["peak_memory"] = self.peak
        final = self.facts.apply(Ended(self.run_id, state, error, tuple(pending["events"]), fields))
        if final is None:  # no longer running (cancelled directly while no engine was alive)
            return (self.store.get_run(self.run_id) or {}).get("state", state.value)
        return final["state"]

    def _summary(self) -> dict[str, Any]:
        """The record's `summary`, as a built-in run's (types.run_summary), with no weights kept by
        the engine (the script keeps its own): the monitor's best from early stopping, else the history."""
        hist = self.history.entries
        if self.stopper is not None and self.stopper.best is not None:
            best_epoch, best_value = self.stopper.best_epoch, self.stopper.best
        else:
            scored = [(value, h["epoch"]) for h in hist if (value := numeric(h.get(self.monitor))) is not None]
            pick = min if self.mode == "min" else max
            best_value, best_epoch = pick(scored, key=lambda s: s[0]) if scored else (None, None)
        return run_summary(hist, monitor=self.monitor, best_epoch=best_epoch, best_value=best_value, kept_epoch=None,
                           seconds=time.perf_counter() - self.started)


def _shell_words(argv: list[str]) -> str:
    import shlex

    return " ".join(shlex.quote(a) for a in argv)
