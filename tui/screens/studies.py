"""Studies: the list, the chosen study's best trial (or Pareto front) and trial table (sort,
filter, page), its optimisation history, a slice per parameter, intermediate values,
importances per objective, and for several objectives the Pareto front, hypervolume,
parallel coordinates and the EDF; start a study from a tuning preset, and take a trial
further: save it as a preset, or run it again with overrides (longer).

Besides the workspace's own studies, the list shows every study of the Optuna
storages opened with `trialdeck tui --storage URL` or `o` here, trialdeck's or
not, read-only (engine/tuning/storages.py). Those are read again every
STORAGE_EVERY seconds in a worker, so a study another process writes shows its
new trials.

Trials are read (one study at a time) in a worker when the chosen study's
summary changes; sorting, filtering and paging happen on that copy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.widgets import Footer, Input, Select, Static, TabbedContent, TabPane

from trialdeck.engine.errors import BadInput
from trialdeck.tui import messages
from trialdeck.tui import study_sources as sources
from trialdeck.tui.keymap import bind
from trialdeck.tui.screens.base import LiveScreen
from trialdeck.tui.screens.dialogs import PresetNameDialog, RerunDialog, StorageDialog
from trialdeck.tui.trials import (
    OBJ,
    best_text,
    columns_for,
    directions_of,
    fmt,
    history,
    intermediate_curves,
    objective_names,
    page_of,
    param_names,
    parse_filter,
    short_names,
    slice_of,
    sort_trials,
    trial_cells,
)
from trialdeck.tui.widgets.filter_bar import FilterBar
from trialdeck.tui.widgets.live_table import STATE_STYLES, LiveTable
from trialdeck.tui.widgets.mode_bar import ModeBar
from trialdeck.tui.widgets.plots import BarList, CurvePlot, Series
from trialdeck.tui.widgets.study_plots import (
    EdfPane,
    HypervolumePane,
    ImportancePane,
    ParallelPane,
    ParetoPane,
    StudyPane,
    StudyView,
)

TABS = ("tab-trials", "tab-history", "tab-slice", "tab-intermediate", "tab-importance", "tab-pareto", "tab-hv",
        "tab-parallel", "tab-edf")
STORAGE_EVERY = 2.0
"""Seconds between reads of the opened storages: a trial another process adds shows within this."""
SEP = "\x1f"
"""Between a storage study's name and its storage URL in its key (own studies are keyed by name)."""


class StudyTable(LiveTable):
    # The states a study takes (engine/tuning): running, stopping, stopped, completed, failed.
    COLUMNS = (("name", "study", 17), ("state", "state", 9), ("done", "done", 5), ("best", "best", 7))
    STYLED = {"state": {"running": "bold green", "completed": "green", "failed": "bold red", "stopping": "yellow",
                        "stopped": "yellow"}}


class TrialTable(LiveTable):
    COLUMNS = (("number", "#", 5), ("state", "state", 9), ("value", "value", 10), ("duration", "time", 8))
    STYLED = {"state": STATE_STYLES}


def study_row(s: Mapping[str, Any], foreign: bool = False) -> tuple[str, ...]:
    """A study list row; a study read from a storage (`--storage`, `o`) is marked "↗"."""
    best = s.get("best") or {}
    target = s.get("n_trials") or s.get("trials")
    done = f"{s.get('n_done', 0)}" + (f"/{target}" if target and not foreign else "")
    shown = f"front {len(s['pareto'])}" if s.get("pareto") is not None else fmt(best.get("value"))
    return (("↗" if foreign else "") + s["name"], str(s.get("state", "")), done, shown)


SORT_KEYS = Binding.Group("Sort", compact=True)
PAGE_KEYS = Binding.Group("Page", compact=True)


class StudiesScreen(LiveScreen):
    """Keys: enter goes from the study list into its trials and opens a trial's run, escape goes back to
    the study list, s/S sort, / filter, [ ] page, v next view."""

    # Short footer words and grouped keys: at 80 columns the footer holds these, help and quit
    # (help and the palette say them in full).
    BINDINGS = [
        bind("open", "open_trial", description="Open", priority=True),
        # Early in the list: the footer is narrow, and this is the way back from the trials.
        bind("back", "focus_studies", description="Study list"),
        bind("sort", "sort", short="Sort", group=SORT_KEYS),
        bind("reverse", "reverse", short="Reverse", group=SORT_KEYS),
        bind("filter"),
        bind("prev_page", "page(-1)", short="Previous", group=PAGE_KEYS),
        bind("next_page", "page(1)", short="Next", group=PAGE_KEYS),
        bind("view", "next_tab", short="View"),
        # Not in the footer (full at 80 columns): the caption says how, and what is marked.
        bind("mark", show=False),
        bind("compare", show=False),
        # From a study to a final model: start one, and from a trial, save it or train it longer.
        # Not in the footer (no room at 80 columns): the best-trial panel names them, as do help
        # and the palette.
        bind("tune", "start_study", description="Start a study (tune a preset)", show=False),
        bind("queue", "rerun_trial", description="Run the trial again (e.g. longer)", show=False),
        bind("save", "save_trial", description="Save the trial as a preset", show=False),
        # Any Optuna study, and the objective the one-objective views show (several objectives).
        bind("open_storage", "open_storage", description="Open an Optuna storage (any study, read-only)", show=False),
        bind("metric", "next_objective", description="Next objective (several objectives)", show=False),
    ]

    study: reactive[str | None] = reactive(None, init=False)
    """The key of the study under the cursor of the study list (its name; name and storage for a
    study read from a storage)."""
    objective: reactive[int] = reactive(0, init=False)
    """The objective the one-objective views show (History, Slice, Intermediate, Parallel, EDF)."""
    trials: reactive[tuple[dict[str, Any], ...]] = reactive((), init=False)
    """All trials of `study`, as read from the catalogue."""

    def __init__(self) -> None:
        super().__init__()
        self.sort_column = "number"
        self.sort_reverse = False
        self.page = 0
        self.filter_text = ""
        self._shown: list[dict[str, Any]] = []
        self._study_mark: Any = None
        self._params: list[str] = []
        self._objectives: list[str] = []
        self._storage_docs: dict[str, dict[str, Any]] = {}
        """Studies read from storages, by key."""
        self._storage_problems: dict[str, str] = {}
        """The last failure said for each storage (said once, not at every read)."""
        self._version = 0
        self._polling = False

    def compose(self) -> ComposeResult:
        yield ModeBar("studies", id="mode-bar")
        with Horizontal(id="studies-top"):
            yield StudyTable(id="study-table")
            yield Static("no studies yet: t starts one (or `trialdeck tune seed/activations`)", id="study-best")
        with TabbedContent(id="study-tabs"):
            with TabPane("Trials", id="tab-trials"):
                with Vertical():
                    yield Static("", id="trial-caption")
                    yield TrialTable(id="trial-table")
            with TabPane("History", id="tab-history"):
                yield CurvePlot("optimisation history", xlabel="trial", id="plot-history")
            with TabPane("Slice", id="tab-slice"):
                with Vertical():
                    yield Select([], prompt="parameter", id="slice-param", compact=True)
                    yield CurvePlot("value by parameter", id="plot-slice")
            with TabPane("Intermediate", id="tab-intermediate"):
                yield CurvePlot("intermediate values", xlabel="epoch", id="plot-intermediate")
            with TabPane("Importance", id="tab-importance"):
                yield ImportancePane(id="pane-importance")
            with TabPane("Pareto", id="tab-pareto"):
                yield ParetoPane(id="pane-pareto")
            with TabPane("Hypervolume", id="tab-hv"):
                yield HypervolumePane(id="pane-hv")
            with TabPane("Parallel", id="tab-parallel"):
                yield ParallelPane(id="pane-parallel")
            with TabPane("EDF", id="tab-edf"):
                yield EdfPane(id="pane-edf")
        yield FilterBar("state and ranges: complete lr<0.01 units=64..256 value<0.3", id="trial-filter")
        yield Footer()

    def on_mount(self) -> None:
        self._ready = True
        self.query_one(FilterBar).display = False
        self.query_one(StudyTable).focus()
        self.watch_catalog()
        if self.ctx.storages:
            self._poll_storages()
            self._start_polling()

    # -- data --------------------------------------------------------------------------------

    def watch_catalog(self) -> None:
        if not self._ready or self.catalog is None:
            return
        self._show_studies()

    def _show_studies(self) -> None:
        studies = list(self.catalog.studies) if self.catalog is not None else []
        table = self.query_one(StudyTable)
        rows = [(s["name"], study_row(s)) for s in studies]
        rows += [(key, study_row(doc, foreign=True)) for key, doc in self._storage_docs.items()]
        table.show(rows)
        if self.study is None and rows:
            self.study = table.current_key or rows[0][0]
        doc = self._doc(self.study)
        if doc is not None:
            text = Text(best_text(doc))
            text.append(f"\n{self._keys_line()}", style="dim")
            self.query_one("#study-best", Static).update(text)
            stored = tuple((k, float(v)) for k, v in (doc.get("importances") or {}).items() if isinstance(v, (int, float)))
            computed = self.query_one(ImportancePane).result
            if stored and (computed is None or computed[0].key != self.study):
                self.query_one(BarList).bars = stored  # what the study stored, until its tab computes them
            mark = (doc.get("synced_at"), doc.get("n_done"), doc.get("n_trials"), doc.get("progress"),
                    tuple(sorted((doc.get("counts") or {}).items())))
            if mark != self._study_mark:
                self._study_mark = mark
                self._load_trials()

    def _doc(self, key: str | None) -> Mapping[str, Any] | None:
        if key is None:
            return None
        if SEP in key:
            return self._storage_docs.get(key)
        return next((s for s in (self.catalog.studies if self.catalog else ()) if s["name"] == key), None)

    def watch_study(self, name: str | None) -> None:
        self._study_mark = None
        self.page = 0
        self.trials = ()
        self.objective = 0
        self.query_one(TrialTable).set_marks(())  # marks are trials of one study
        self.query_one(ImportancePane).result = None
        self.query_one(BarList).bars = ()
        self._show_studies()

    def _keys_line(self) -> str:
        """This view's study keys, as keys.toml maps them: the footer has no room for them at 80 columns."""
        shown = {a.binding.id: self.app.get_key_display(a.binding) for a in self.active_bindings.values()}
        words = [("tune", "new study"), ("queue", "rerun trial"), ("save", "save trial as preset"),
                 ("open_storage", "open a storage")]
        if len(objective_names(self._doc(self.study) or {})) > 1:
            words.append(("metric", "next objective"))
        return "  ".join(f"{shown[i]} {w}" for i, w in words if i in shown)

    def _load_trials(self) -> None:
        key, store = self.study, self.ctx.store
        if key is None:
            return
        if SEP in key:
            name, url = key.split(SEP, 1)

            def read() -> tuple[str, tuple[dict[str, Any], ...]]:
                from trialdeck.engine.tuning import storages

                doc, trials = storages.read_study(url, name)
                self._storage_docs[key] = doc
                return key, tuple(trials)

            self.spawn(read, self._trials_loaded, name="trials")
            return
        self.spawn(lambda: (key, tuple(store.list_trials(key))), self._trials_loaded, name="trials")

    def _trials_loaded(self, result: tuple[str, tuple[dict[str, Any], ...]]) -> None:
        name, trials = result
        if name == self.study:
            self.trials = trials

    def watch_trials(self) -> None:
        self._params = param_names(self.trials)
        doc = self._doc(self.study) or {}
        self._objectives = objective_names(doc)
        select = self.query_one("#slice-param", Select)
        options = [(p, p) for p in self._params]
        current = select.value
        select.set_options(options)
        if current in self._params:
            select.value = current
        elif self._params:
            select.value = self._params[0]
        self._show_trials()
        self._show_plots()

    def watch_objective(self) -> None:
        self._show_plots()

    def _show_trials(self) -> None:
        table = self.query_one(TrialTable)
        bar = self.query_one(FilterBar)
        objectives = self._objectives if len(self._objectives) > 1 else []
        labels = {"number": "#", "duration": "time", **short_names(self._params),
                  **{f"{OBJ}{i}": name for i, name in enumerate(objectives)}}
        spec = [(c, labels.get(c, c), {"number": 5, "state": 9, "value": 10, "duration": 8}.get(c, 12))
                for c in columns_for(self._params, objectives)]
        table.set_columns(spec)
        try:
            keep = parse_filter(self.filter_text, self._params, objectives)
            bar.error = ""
        except BadInput as exc:
            bar.error = exc.message
            keep = parse_filter("", self._params)
        selected = [t for t in self.trials if keep(t)]
        ordered = sort_trials(selected, self.sort_column, self.sort_reverse)
        self._shown, self.page, pages = page_of(ordered, self.page)
        table.show([(str(t["number"]), trial_cells(t, self._params, objectives)) for t in self._shown])
        arrow = "↓" if self.sort_reverse else "↑"
        column = labels.get(self.sort_column, self.sort_column)
        where = f" page {self.page + 1}/{pages} ([ ])" if pages > 1 else ""
        filt = f"  filter: {self.filter_text}" if self.filter_text.strip() else ""
        self._counts = f"{len(selected)} of {len(self.trials)} trials, sorted by {column} {arrow}{where}{filt}"
        self._show_caption()
        self.sync_bindings()

    _counts = ""

    def _show_caption(self) -> None:
        """The trial list's counts, or why the highlighted trial was pruned or failed."""
        trial = self._selected_trial() if self.query_one(TrialTable).has_focus else None
        why = trial and (trial.get("fail_reason") or trial.get("prune_reason"))
        text = Text(f"#{trial['number']} {trial['state']}: {why}") if trial and why else Text(self._counts, style="dim")
        if not why and self.trials:
            key = self.key_for
            marked = self.query_one(TrialTable).marked
            text.append(f"  │  {len(marked)} marked, {key('compare')} compares" if len(marked) >= 2 else
                        f"  │  {len(marked)} marked" if marked else f"  │  {key('mark')} marks trials to compare",
                        style="dim")
        self.query_one("#trial-caption", Static).update(text)

    def _show_plots(self) -> None:
        doc = self._doc(self.study) or {}
        i = min(self.objective, max(0, len(self._objectives) - 1))
        direction = directions_of(doc)[i] if i < len(directions_of(doc)) else "minimize"
        name = self._objectives[i] if self._objectives else "value"
        hist = history(self.trials, direction, i)
        plot = self.query_one("#plot-history", CurvePlot)
        plot.title = "optimisation history" + (f" of {name}" if len(self._objectives) > 1 else "")
        plot.series = (Series(name if len(self._objectives) > 1 else "value", hist.xs, hist.values, scatter=True),
                       Series("best so far", hist.xs, hist.best))
        self._show_slice()
        curves, running = intermediate_curves(self.trials, index=i)
        plot = self.query_one("#plot-intermediate", CurvePlot)
        plot.title = "intermediate values (running trials)" if running else "intermediate values (latest trials)"
        plot.series = tuple(Series(label, tuple(xs), tuple(ys)) for label, xs, ys in curves)
        if self.study is not None:
            self._version += 1
            view = StudyView(self.study, doc, self.trials, i, self._version)
            for pane in self.query(StudyPane):
                pane.view = view

    def _show_slice(self) -> None:
        param = self.query_one("#slice-param", Select).value
        plot = self.query_one("#plot-slice", CurvePlot)
        if not isinstance(param, str):
            plot.series = ()
            return
        data = slice_of(self.trials, param, min(self.objective, max(0, len(self._objectives) - 1)))
        plot.xlabel = param
        plot.xticks = data.ticks
        plot.series = (Series(param, data.xs, data.ys, scatter=True),)

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "slice-param":
            self._show_slice()

    # -- keys --------------------------------------------------------------------------------

    def on_live_table_highlighted(self, event: LiveTable.Highlighted) -> None:
        if event.table.id == "study-table" and event.key is not None:
            self.study = event.key
        else:
            self._show_caption()
        self.sync_bindings()

    def on_descendant_focus(self, event) -> None:
        self._show_caption()  # the trial table's focus decides what the caption says

    def on_live_table_selected(self, event: LiveTable.Selected) -> None:
        event.stop()
        if event.table.id == "study-table":
            self.query_one(TrialTable).focus()
        elif event.table.id == "front-table":
            trial = next((t for t in self.trials if str(t["number"]) == event.key), None)
            if trial is not None and trial.get("run_id"):
                self.post_message(messages.OpenRun(trial["run_id"]))
            elif trial is not None:
                self.notify(f"trial #{trial['number']} has no run on this box", severity="warning")
        else:
            self.action_open_trial()

    def _selected_trial(self) -> dict[str, Any] | None:
        key = self.query_one(TrialTable).current_key
        return next((t for t in self._shown if str(t["number"]) == key), None) if key is not None else None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if not self._ready:
            return True
        if action == "open_trial":
            if isinstance(self.focused, Input):
                return False  # enter belongs to the filter input then
            if isinstance(self.focused, StudyTable):
                return True if self.trials else None
            trial = self._selected_trial()
            return True if trial is not None and trial.get("run_id") else None
        if action == "filter" and self.typing:
            return False  # "/" types into the input
        if action in ("sort", "reverse", "filter"):
            return True if self.trials else None
        if action == "focus_studies":
            return None if isinstance(self.focused, StudyTable) else True
        if action == "mark":  # trials are marked in the trial table, for `compare`
            if not isinstance(self.focused, TrialTable):
                return False
            trial = self._selected_trial()
            return True if trial is not None and trial.get("run_id") else None
        if action == "compare":
            return len(self._marked_runs()) >= 2
        if action in ("rerun_trial", "save_trial"):
            if not isinstance(self.focused, TrialTable) or (self.study is not None and SEP in self.study):
                return None  # a study read from a storage has no runs here, and maybe no preset
            trial = self._selected_trial()
            needs = "run_id" if action == "rerun_trial" else "params"
            return True if trial is not None and trial.get(needs) is not None else None
        if action == "next_objective":
            return True if len(self._objectives) > 1 else None
        if action == "open_storage":
            return not self.typing
        if action == "page":
            # Hidden, not greyed, with one page (up to 200 trials, nearly always): the footer
            # has no room to spare at 80 columns, and the caption names [ ] when there are pages.
            return True if len(self.trials) > len(self._shown) else False
        return True

    def action_open_trial(self) -> None:
        if isinstance(self.focused, StudyTable):
            self.query_one(TrialTable).focus()
            return
        trial = self._selected_trial()
        if trial is None:
            return
        if not trial.get("run_id"):
            self.notify(f"trial #{trial['number']} has no run on this box", severity="warning")
            return
        self.post_message(messages.OpenRun(trial["run_id"]))

    def _marked_runs(self) -> tuple[str, ...]:
        by_number = {str(t["number"]): t.get("run_id") for t in self.trials}
        return tuple(run for key in self.query_one(TrialTable).marked if (run := by_number.get(key)))

    def action_mark(self) -> None:
        """Mark (or unmark) the highlighted trial and move down; `compare` shows the marked trials' runs."""
        table = self.query_one(TrialTable)
        trial = self._selected_trial()
        if trial is not None and trial.get("run_id"):
            table.toggle_mark()
            table.action_cursor(1)

    def on_live_table_marks_changed(self, event: LiveTable.MarksChanged) -> None:
        self._show_caption()
        self.sync_bindings()

    def action_compare(self) -> None:
        runs = self._marked_runs()
        if len(runs) >= 2:
            self.post_message(messages.CompareRuns(runs))

    def action_start_study(self) -> None:
        """The palette's picker of presets with a [tune] block (the app's own action)."""
        self.app.action_start_study()  # type: ignore[attr-defined]

    def action_rerun_trial(self) -> None:
        trial = self._selected_trial()
        if trial is None or not trial.get("run_id"):
            return
        run_id, store = trial["run_id"], self.ctx.store

        def loaded(record: dict[str, Any] | None) -> None:
            if record is None or not record.get("config"):
                self.notify(f"{run_id} has no stored configuration to run again", severity="warning", markup=False)
                return
            epochs = (record["config"].get("train") or {}).get("epochs")
            initial = [("train.epochs", str(epochs))] if epochs is not None else []

            def queued(sets: tuple[str, ...] | None) -> None:
                if sets is not None:
                    self.post_message(messages.RequeueRun(run_id, sets))

            self.app.push_screen(RerunDialog(run_id, record["config"], initial), queued)

        self.spawn(lambda: store.get_run(run_id), loaded, name="rerun-config")

    def action_save_trial(self) -> None:
        trial, study = self._selected_trial(), self.study
        if trial is None or study is None:
            return
        presets_dir = self.ctx.ws.presets_dir

        def named(name: str | None) -> None:
            if name is not None:
                self.post_message(messages.SaveTrialPreset(study, int(trial["number"]), name))

        self.app.push_screen(PresetNameDialog(f"Save trial #{trial['number']} of {study} as a preset named:",
                                              f"{study}/trial-{trial['number']}",
                                              lambda name: (presets_dir / f"{name}.toml").exists()), named)

    def action_focus_studies(self) -> None:
        self.query_one(StudyTable).focus()

    def action_sort(self) -> None:
        cols = columns_for(self._params)
        self.sort_column = cols[(cols.index(self.sort_column) + 1) % len(cols)] if self.sort_column in cols else cols[0]
        self.page = 0
        self._show_trials()

    def action_reverse(self) -> None:
        self.sort_reverse = not self.sort_reverse
        self._show_trials()

    def on_live_table_header_clicked(self, event: LiveTable.HeaderClicked) -> None:
        if event.table.id == "trial-table":
            column = event.column
            self.sort_reverse = not self.sort_reverse if column == self.sort_column else False
            self.sort_column = column
            self._show_trials()

    def action_page(self, delta: int) -> None:
        self.page += delta
        self._show_trials()

    def action_filter(self) -> None:
        self.query_one(TabbedContent).active = "tab-trials"
        self.query_one(FilterBar).open()

    def on_filter_bar_changed(self, event: FilterBar.Changed) -> None:
        self.filter_text = event.text
        self.page = 0
        self._show_trials()

    def on_filter_bar_closed(self, event: FilterBar.Closed) -> None:
        self.query_one(TrialTable).focus()

    def action_next_tab(self) -> None:
        tabs = self.query_one(TabbedContent)
        tabs.active = TABS[(TABS.index(tabs.active) + 1) % len(TABS)] if tabs.active in TABS else TABS[0]

    # -- several objectives, any storage -----------------------------------------------------

    def action_next_objective(self) -> None:
        """The next objective in the History, Slice, Intermediate, Parallel and EDF views."""
        if len(self._objectives) > 1:
            self.objective = (self.objective + 1) % len(self._objectives)
            self.notify(f"showing {self._objectives[self.objective]}", timeout=2)

    def action_open_storage(self) -> None:
        """Ask for a storage URL (or a journal file), open it read-only and list its studies."""
        def opened(url: str | None) -> None:
            if url is None or url in self.ctx.storages:
                return
            self.ctx.storages.append(url)
            self._poll_storages()
            self._start_polling()

        def chosen(text: str | None) -> None:
            if text:
                self.spawn(lambda: sources.open_storage(text), opened, name="open-storage")

        self.app.push_screen(StorageDialog(), chosen)

    def _start_polling(self) -> None:
        if not self._polling:
            self._polling = True
            self.set_interval(STORAGE_EVERY, self._poll_storages)

    def _poll_storages(self) -> None:
        urls = list(self.ctx.storages)
        self.spawn(lambda: sources.read_storages(urls, SEP), self._storages_read, name="storages")

    def _storages_read(self, result: tuple[dict[str, dict[str, Any]], dict[str, str]]) -> None:
        docs, problems = result
        for url, problem in problems.items():
            if self._storage_problems.get(url) != problem:
                self.notify(problem, title="storage", severity="error", timeout=8, markup=False)
        self._storage_problems = problems
        kept = {k: v for k, v in self._storage_docs.items() if k.split(SEP, 1)[1] in problems}
        self._storage_docs = {**kept, **docs}
        self._show_studies()

    def on_importance_pane_wanted(self, event: ImportancePane.Wanted) -> None:
        ask, doc = event.ask, self._doc(event.ask.key) or {}
        pane = self.query_one(ImportancePane)
        url: str | None
        if SEP in ask.key:
            name, url = ask.key.split(SEP, 1)
        else:
            name, url = ask.key, doc.get("storage_url")
        if not url:
            stored = doc.get("importances") or {}
            pane.result = (ask, stored, "stored with the study" if stored else "no importances yet")
            return
        self.spawn(lambda: (ask, *sources.importances(url, name, ask.objective, ask.evaluator)),
                   lambda r: setattr(pane, "result", r),
                   name="importances")

