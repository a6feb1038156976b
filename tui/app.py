"""The Textual app. `make_app()` is the one factory the CLI and the tests call.

The app owns every read and write of the workspace; screens only display what
it pushes down and post requests up (tui/messages.py):

- One thread worker (`_read_loop`) polls `store.version()` about twice a
  second and re-reads catalog.json only when it changed (the working set's runs
  without their configs, their briefs and the registry of sealed runs: never the
  whole catalogue); follows each running run's metrics.jsonl incrementally; samples
  the engine and the hardware every two seconds. It posts coalescing
  messages; the app keeps the latest values and sets them on the screens of
  the current stack.
- Writes (queue, cancel, requeue, reorder, save) run in thread workers via
  `spawn`; every worker's failure lands in the one `on_worker_state_changed`
  handler and becomes a notification, never a crash.
- Closing the app stops only the app: the engine and its runs go on, and a
  new app shows them again from the workspace.
"""

from __future__ import annotations

import gc
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from textual import events, work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.dom import DOMNode
from textual.notifications import SeverityLevel
from textual.screen import ModalScreen, Screen
from textual.widgets import Input
from textual.worker import Worker, WorkerState, get_current_worker

from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.errors import TrialdeckError
from trialdeck.engine.presets import preset_roots
from trialdeck.engine.types import RunRecord, RunState
from trialdeck.engine.workspace import Workspace
from trialdeck.tui import messages
from trialdeck.tui.composition import Composition, PresetLibrary
from trialdeck.tui.context import Context
from trialdeck.tui.control import Control, specs_for
from trialdeck.tui.keymap import ACTIONS, KEYS_FILE, Place, bind, check_clashes, described, load_keymap
from trialdeck.tui.live import (
    LOGGED_EVENTS,
    TOASTED_EVENTS,
    Catalog,
    EventFeed,
    LiveRun,
    LogEntry,
    MetricsFollower,
    finished_entry,
    finished_since,
)
from trialdeck.tui.probes import EngineSample, FixedProbe, HardwareSample, SystemProbe
from trialdeck.tui.screens.base import LiveScreen
from trialdeck.tui.screens.compare import CompareScreen
from trialdeck.tui.screens.dialogs import (
    ConfirmDialog,
    PresetNameDialog,
    PriorityDialog,
    QueueDialog,
    RerunDialog,
    StudyOrRunDialog,
    TunePresetDialog,
)
from trialdeck.tui.screens.help import HelpScreen
from trialdeck.tui.screens.presets import PresetsScreen
from trialdeck.tui.screens.queue import QueueScreen
from trialdeck.tui.screens.run_detail import RunDetailScreen
from trialdeck.tui.screens.runs import RunsScreen
from trialdeck.tui.screens.studies import StudiesScreen

STATUS_EVERY = 2.0
"""Seconds between engine/hardware samples."""
READ_BACKOFF = 6.0
READ_BACKOFF_MAX = 5.0
"""After a catalogue read that took t seconds, the next waits min(6 t, 5 s): ~15% of a core at most."""
LOG_KEEP = 200
TOAST_SEVERITY: dict[str, SeverityLevel] = {"failed": "error", "nan_loss": "error", "early_stopped": "warning",
                                             "pruned": "warning"}


class TrialdeckApp(App[None]):
    TITLE = "trialdeck"
    CSS_PATH = "trialdeck.tcss"
    MODES = {"runs": RunsScreen, "presets": PresetsScreen, "queue": QueueScreen, "studies": StudiesScreen}
    DEFAULT_MODE = "runs"
    # The mode bar at the top names the four views with their keys: the footer leaves them
    # out, so that at 80 columns it has room for each view's own keys, help and quit.
    BINDINGS = [
        bind("show_runs", "show_mode('runs')", show=False),
        bind("show_presets", "show_mode('presets')", show=False),
        bind("show_queue", "show_mode('queue')", show=False),
        bind("show_studies", "show_mode('studies')", show=False),
        bind("help"),
        bind("quit"),
    ]

    def __init__(self, ws: Workspace, *, start_engine: bool = True, clock: Callable[[], float] | None = None,
                 probe: Any = None, interval: float = 0.5, cursor_blink: bool = True,
                 storages: Iterable[str] = ()) -> None:
        super().__init__()
        self.ws = ws
        store = Store(ws)
        self.ctx = Context(ws=ws, store=store, library=PresetLibrary(preset_roots(ws.presets_dir)),
                           control=Control(ws, store, start_engine=start_engine), clock=clock or time.time,
                           storages=list(storages))
        self.probe = probe if probe is not None else SystemProbe(ws)
        self.interval = interval
        self.cursor_blink = cursor_blink
        self.catalog: Catalog | None = None
        self._frozen = False
        self.live: Mapping[str, LiveRun] = {}
        self.status: tuple[EngineSample, HardwareSample] | None = None
        self.entries: deque[tuple[int, LogEntry]] = deque(maxlen=LOG_KEEP)
        self._seq = 0
        self._poke = threading.Event()
        self._pending: dict[Worker, tuple[Callable[[Any], Any] | None, DOMNode | None]] = {}
        keymap, problems = load_keymap(ws.root)
        self._keymap, clashes = check_clashes(keymap, *binding_places(type(self)), path=ws.root / KEYS_FILE)
        self._keymap_problems = problems + clashes

    # ----------------------------------------------------------------- start-up

    def on_mount(self) -> None:
        if self._keymap:
            self.set_keymap(self._keymap)
        for problem in self._keymap_problems:
            self.notify(problem, title="keys.toml", severity="warning", timeout=10, markup=False)
        self._read_loop()

    def on_unmount(self) -> None:
        if self._frozen:
            gc.unfreeze()  # what the app built may be collected again once it is gone
        self.workers.cancel_group(self, "reader")
        self._poke.set()  # the reader sees the cancellation now, not at its next tick

    def get_key_display(self, binding: Binding) -> str:
        # "␣" for space: the 80-column runs footer has no room for the five letters.
        if binding.key == "space" and not binding.key_display:
            return "␣"
        return super().get_key_display(binding)

    def key_for(self, binding_id: str) -> str:
        """How the footer shows the (first) key of a binding id, after keys.toml."""
        keys = self._keymap.get(binding_id, ACTIONS[binding_id][0])
        return self.get_key_display(Binding(keys.split(",")[0], ""))

    def mode_keys(self) -> tuple[str, ...]:
        """Display keys of the four views, after keys.toml."""
        return tuple(self.key_for(b) for b in ("show_runs", "show_presets", "show_queue", "show_studies"))

    # ----------------------------------------------------------------- the reader

    @work(thread=True, exclusive=True, group="reader", name="reader", exit_on_error=False)
    def _read_loop(self) -> None:
        """Poll the catalogue version, follow metric streams, sample the engine; post what changed."""
        worker = get_current_worker()
        store = self.ctx.store
        follower = MetricsFollower(self.ws)
        feed = EventFeed()
        catalog: Catalog | None = None
        event_counts: dict[str, int] = {}
        next_status = next_read = 0.0
        last_error = ""
        while not worker.is_cancelled:
            try:
                version = store.version()
                if (catalog is None or version != catalog.version) and time.monotonic() >= next_read:
                    started = time.monotonic()
                    # The working set (unfinished and recent runs) and the registry of sealed runs:
                    # the runs table reads older runs a segment at a time as it shows them.
                    working = store.working(omit=("config",))
                    runs = [dict(r) for r in working.runs]
                    counts = {r["id"]: len(r.pop("events", None) or ()) for r in runs}
                    grew = any(n > event_counts.get(k, 0) for k, n in counts.items())
                    event_counts = counts
                    new = Catalog(working.version, tuple(runs), tuple(working.studies), working.briefs,
                                  working.segments)
                    self.post_message(messages.CatalogLoaded(new))
                    if catalog is None:
                        backlog = [e for e in store.events() if e.get("kind") in LOGGED_EVENTS]
                        entries = feed.prime(backlog)
                        entries += [finished_entry(r) for r in runs if r["state"] == RunState.COMPLETED]
                        entries.sort(key=lambda e: e.time)
                        self.post_message(messages.EventsArrived(tuple(entries[-LOG_KEEP:]), initial=True))
                    else:
                        # store.events() parses the catalogue again: only when some run has new events.
                        found = feed.take(store.events(since=feed.since())) if grew else []
                        fresh = [e for e in found if e.kind in LOGGED_EVENTS] + finished_since(catalog, new)
                        if fresh:
                            self.post_message(messages.EventsArrived(tuple(fresh)))
                    catalog = new
                    # A big working set costs a parse per read; space reads so that
                    # reading stays a small share of a core however often it changes.
                    next_read = time.monotonic() + min(READ_BACKOFF_MAX, READ_BACKOFF * (time.monotonic() - started))
                live = follower.poll(catalog.active_ids) if catalog is not None else None
                if live is not None:
                    self.post_message(messages.MetricsUpdated(live))
                if time.monotonic() >= next_status:
                    next_status = time.monotonic() + STATUS_EVERY
                    self.post_message(messages.StatusSampled(self.probe.engine(), self.probe.hardware()))
                last_error = ""
            except TrialdeckError as exc:  # a corrupt or locked catalogue: say so once, keep trying
                if exc.message != last_error:
                    last_error = exc.message
                    self.post_message(messages.ReaderFailed(exc.message))
            self._poke.wait(self.interval)
            self._poke.clear()

    def poke(self) -> None:
        """Look again now (after a write) rather than at the next tick."""
        self._poke.set()

    # ----------------------------------------------------------------- reports from the reader

    def on_catalog_loaded(self, message: messages.CatalogLoaded) -> None:
        if not self._frozen:
            # The app is built and its first screen filled: what exists now (Textual, the widgets,
            # their styles: ~100,000 objects) lives as long as the app. Out of the cyclic GC's sight,
            # a full collection no longer walks it (measured: 40-100 ms, in the middle of a key press).
            self.call_after_refresh(gc.freeze)
            self._frozen = True
        self.catalog = message.catalog
        self._feed(catalog=message.catalog)

    def on_metrics_updated(self, message: messages.MetricsUpdated) -> None:
        self.live = message.live
        self._feed(live=message.live)

    def on_status_sampled(self, message: messages.StatusSampled) -> None:
        self.status = (message.engine, message.hardware)
        self._feed(status=self.status)

    def on_events_arrived(self, message: messages.EventsArrived) -> None:
        for entry in message.entries:
            self._seq += 1
            self.entries.append((self._seq, entry))
            if not message.initial and entry.kind in TOASTED_EVENTS:
                self.notify(f"{entry.run} {entry.kind}: {entry.message}", title=entry.kind.replace("_", " "),
                            severity=TOAST_SEVERITY.get(entry.kind, "information"), timeout=6, markup=False)
        self._feed(entries=tuple(self.entries))

    def on_reader_failed(self, message: messages.ReaderFailed) -> None:
        self.notify(message.error, title="cannot read the workspace", severity="error", timeout=10, markup=False)

    def _feed(self, screens: Iterable[Screen] | None = None, **values: Any) -> None:
        """Set the pushed data on the screens of the current stack (all values when none given)."""
        if not values:
            values = {"catalog": self.catalog, "live": self.live, "status": self.status, "entries": tuple(self.entries)}
            values = {k: v for k, v in values.items() if v is not None}
        for screen in screens if screens is not None else self.screen_stack:
            if isinstance(screen, LiveScreen):
                for name, value in values.items():
                    setattr(screen, name, value)

    # ----------------------------------------------------------------- navigation

    async def action_show_mode(self, mode: str) -> None:
        await self.switch_mode(mode)
        self._feed()

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            self.pop_screen()
            return
        self.push_screen(HelpScreen(self._key_rows(self.screen)))

    def _key_rows(self, screen: Screen) -> list[tuple[str, str, bool]]:
        """(key, description, available) for our bindings active on `screen`."""
        rows = []
        for active in screen.active_bindings.values():
            if active.binding.id in ACTIONS:
                rows.append((self.get_key_display(active.binding), described(active.binding), active.enabled))
        return rows

    def on_open_run(self, message: messages.OpenRun) -> None:
        screen = RunDetailScreen(message.run_id)
        self.push_screen(screen)
        self._feed([screen])

    def on_compare_runs(self, message: messages.CompareRuns) -> None:
        screen = CompareScreen(message.run_ids)
        self.push_screen(screen)
        self._feed([screen])

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """Every trialdeck action available on `screen`, in the command palette."""
        seen = set()
        for active in screen.active_bindings.values():
            binding = active.binding
            if binding.id not in ACTIONS or binding.id == "quit" or not active.enabled or binding.id in seen:
                continue  # (Textual's own palette already offers Quit)
            seen.add(binding.id)
            node = active.node
            yield SystemCommand(described(binding), f"key: {self.get_key_display(binding)}",
                                lambda action=binding.action, node=node: self.run_action(action, node))
        if "tune" not in seen:  # starting a study is never more than a palette search away
            yield SystemCommand(ACTIONS["tune"][1], "pick a preset that has a tune block", self.action_start_study)
        yield from super().get_system_commands(screen)

    def action_start_study(self) -> None:
        """Pick a preset with a [tune] block, then start its study (the palette's way in)."""
        library = self.ctx.library

        def choices() -> list[tuple[str, int, str]]:
            from trialdeck.engine.tuning.launch import target_trials

            return [(name, target_trials(spec.tune, None), spec.tune.sampler)
                    for name, spec in library.tuning() if spec.tune is not None]

        def picked(name: str | None) -> None:
            if name is not None:
                self.post_message(messages.StartStudy(Composition((name,))))

        self.spawn(choices, lambda found: self.push_screen(TunePresetDialog(found), picked), name="tune-presets")

    # ----------------------------------------------------------------- requests from screens

    def spawn(self, fn: Callable[[], Any], done: Callable[[Any], Any] | None = None, *, owner: DOMNode | None = None,
              name: str, exclusive: bool = False) -> Worker:
        """Run `fn` in a thread; `done(result)` on the UI thread (skipped if `owner` has gone)."""
        worker = self.run_worker(fn, name=name, group=name, thread=True, exclusive=exclusive, exit_on_error=False)
        self._pending[worker] = (done, owner)
        return worker

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The one place where background failures become messages a person can act on."""
        worker = event.worker
        if event.state == WorkerState.SUCCESS:
            done, owner = self._pending.pop(worker, (None, None))
            if done is not None and (owner is None or owner.is_attached):
                try:
                    done(worker.result)
                except Exception as exc:  # noqa: BLE001 - a display bug must not end the session
                    self._report(exc, worker.name)
        elif event.state == WorkerState.ERROR:
            self._pending.pop(worker, None)
            self._report(worker.error, worker.name)
            if worker.name == "reader":
                self.set_timer(2.0, self._read_loop)
        elif event.state == WorkerState.CANCELLED:
            self._pending.pop(worker, None)

    def _report(self, error: BaseException | None, what: str) -> None:
        if isinstance(error, TrialdeckError):
            self.notify(error.message, title=what, severity="error", timeout=8, markup=False)
        else:
            self.log.error(f"{what} failed: {error!r}")
            self.notify(f"{type(error).__name__}: {error}", title=f"{what} failed", severity="error", timeout=8,
                        markup=False)

    def _write(self, fn: Callable[[], Any], done: Callable[[Any], Any] | None, name: str) -> None:
        def then(result: Any) -> None:
            self.poke()
            if done is not None:
                done(result)

        self.spawn(fn, then, name=name)

    def on_queue_runs(self, message: messages.QueueRuns) -> None:
        request = message.request
        ctx = self.ctx

        def queue() -> list[RunRecord]:
            return ctx.control.enqueue(specs_for(ctx.library, request), request.priority)

        self._write(queue, lambda records: self.notify(
            f"queued {', '.join(r['id'] for r in records)}: {records[0]['preset']}", title="queued", markup=False),
            "queue")

    def on_cancel_run(self, message: messages.CancelRun) -> None:
        self._write(lambda: self.ctx.control.cancel(message.run_id),
                    lambda text: self.notify(text, title="cancel", markup=False), "cancel")

    def on_requeue_run(self, message: messages.RequeueRun) -> None:
        how = f"{message.run_id}'s config with {', '.join(message.sets)}" if message.sets else \
            f"same config as {message.run_id}"
        self._write(lambda: self.ctx.control.requeue(message.run_id, message.sets),
                    lambda r: self.notify(f"queued {r['id']}: {r['preset']} ({how})", title="queued", markup=False),
                    "requeue")

    def on_start_study(self, message: messages.StartStudy) -> None:
        """Start or resume a study as `trialdeck tune` does, off the UI thread (it may start the engine)."""
        ctx = self.ctx

        def start():
            return ctx.control.start_study(ctx.library.resolve(message.composition))

        studies_key = self.mode_keys()[3]
        self._write(start, lambda started: self.notify(f"{started.describe()} ({studies_key}: the Studies view)",
                                                       title="study", markup=False), "study")

    def on_save_trial_preset(self, message: messages.SaveTrialPreset) -> None:
        ctx = self.ctx

        def saved(result) -> None:
            path, _spec, trial = result
            ctx.library.reload()
            self.notify(f"saved trial #{trial['number']} of {message.study} as {message.name} ({path}); "
                        f"r on it in the Presets view queues it", title="preset saved", markup=False)

        self.spawn(lambda: ctx.control.save_trial(message.study, message.number, message.name), saved, name="save")

    def on_resume_run(self, message: messages.ResumeRun) -> None:
        self._write(lambda: self.ctx.control.resume(message.run_id),
                    lambda text: self.notify(text, title="resumed", markup=False), "resume")

    def on_move_run(self, message: messages.MoveRun) -> None:
        self._write(lambda: self.ctx.control.move(message.run_id, message.where), None, "move")

    def on_set_priority(self, message: messages.SetPriority) -> None:
        self._write(lambda: self.ctx.control.set_priority(message.run_id, message.priority),
                    lambda r: self.notify(f"{r['id']} priority {r['priority']}", title="priority"), "priority")

    def on_clear_queue(self, message: messages.ClearQueue) -> None:
        self._write(self.ctx.control.clear, lambda n: self.notify(f"cancelled {n} queued run(s)", title="queue"),
                    "clear")

    def on_save_preset(self, message: messages.SavePreset) -> None:
        from trialdeck.engine.presets.authoring import write_preset

        comp, ctx = message.composition, self.ctx

        def save():
            path, _spec = write_preset(ctx.ws.presets_dir, comp.name, parents=list(comp.parents), sets=list(comp.sets),
                                       description=message.description, roots=ctx.library.roots)
            return path

        def saved(path) -> None:
            ctx.library.reload()
            self.notify(f"saved {comp.name} to {path}", title="preset saved", markup=False)
            for screen in self.screen_stack:
                if isinstance(screen, PresetsScreen):
                    screen.presets_changed(comp.name)

        self.spawn(save, saved, name="save")

    # ----------------------------------------------------------------- small things

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        if not self.cursor_blink and isinstance(event.widget, Input):
            event.widget.cursor_blink = False


SCREEN_NAMES: dict[type[Screen], str] = {
    RunsScreen: "the Runs view", PresetsScreen: "the Presets view", QueueScreen: "the Queue view",
    StudiesScreen: "the Studies view", RunDetailScreen: "a run's detail", HelpScreen: "the help screen",
    CompareScreen: "the compare view",
    QueueDialog: "the queue dialog", PriorityDialog: "the priority dialog", ConfirmDialog: "a yes/no question",
    StudyOrRunDialog: "the study-or-run question", TunePresetDialog: "the study's preset picker",
    PresetNameDialog: "the preset name dialog", RerunDialog: "the run-again dialog",
}
"""Every screen that binds keys, named as keys.toml's warnings name it."""


def binding_places(app: type[App]) -> tuple[Place, list[Place]]:
    """The app's binding ids and each screen's, for keys.toml's clash check."""

    def ids(cls: type[App] | type[Screen]) -> frozenset[str]:
        return frozenset(b.id for b in cls.BINDINGS if isinstance(b, Binding) and b.id in ACTIONS)

    screens = [Place(name, ids(cls), under_app=not issubclass(cls, ModalScreen)) for cls, name in SCREEN_NAMES.items()]
    return Place("everywhere", ids(app)), screens


def make_app(ws: Workspace | None = None, *, start_engine: bool = True, clock: Callable[[], float] | None = None,
             probe: Any = None, interval: float = 0.5, cursor_blink: bool = True,
             storages: Iterable[str] = ()) -> TrialdeckApp:
    """The app on workspace `ws` (default: $TRIALDECK_HOME or ~/.trialdeck).

    Tests pass `start_engine=False` (queueing writes the store and wakes a live
    engine but starts none), a fixed `clock` and a `FixedProbe`, and
    `cursor_blink=False`, so screenshots are deterministic. `storages`: Optuna
    storage URLs whose studies the Studies view shows too (`trialdeck tui --storage`).
    """
    return TrialdeckApp(ws or Workspace.resolve().ensure(), start_engine=start_engine, clock=clock, probe=probe,
                        interval=interval, cursor_blink=cursor_blink, storages=storages)


__all__ = ["Context", "FixedProbe", "TrialdeckApp", "make_app"]


def main(argv: list[str] | None = None) -> None:
    """`python -m trialdeck.tui.app [--home DIR]`: the app without the CLI around it (debugging)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m trialdeck.tui.app", description="Open the trialdeck TUI.")
    parser.add_argument("--home", default=None, help="workspace folder (default: $TRIALDECK_HOME, else ~/.trialdeck)")
    args = parser.parse_args(argv)
    make_app(Workspace.resolve(args.home).ensure()).run()


if __name__ == "__main__":
    main()
