"""Modal dialogs: queue a preset (repeat, priority, overrides), set a priority, confirm; a study
or a single run of a tuning preset, which preset to tune, a name to save a trial under, and the
overrides of a run done again.

Each is a `ModalScreen[T]` whose result comes back through `dismiss`; None
means the user backed out.
"""

from __future__ import annotations

from collections.abc import Callable

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from trialdeck.engine.errors import BadInput, TrialdeckError
from trialdeck.tui.composition import Composition, PresetLibrary, check_config, summary_line
from trialdeck.tui.control import MAX_REPEAT, QueueRequest
from trialdeck.tui.keymap import bind
from trialdeck.tui.widgets.override_editor import OverrideEditor


def parse_int(text: str, what: str, low: int, high: int) -> int:
    value = text.strip()
    if not (value.lstrip("+-").isdigit() and value.lstrip("+-")):
        raise BadInput(f"{what} {text!r}: allowed: a whole number from {low} to {high}")
    number = int(value)
    if not low <= number <= high:
        raise BadInput(f"{what} {number}: allowed: {low} to {high}")
    return number


class QueueDialog(ModalScreen[QueueRequest | None]):
    """Queue a composition: how many copies, at what priority, with which overrides.

    Validated as you type, with the same rules as `trialdeck run --set`;
    enter queues only when everything is valid.
    """

    BINDINGS = [bind("back", "cancel_dialog", description="Cancel")]

    def __init__(self, library: PresetLibrary, composition: Composition) -> None:
        super().__init__()
        self.library = library
        self.composition = composition
        self._request: QueueRequest | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="queue-dialog", classes="dialog"):
            yield Static(Text(f"Queue {self.composition.label}"), classes="dialog-title")
            with Horizontal(classes="dialog-row"):
                yield Static("repeat", classes="dialog-label")
                yield Input("1", id="repeat", restrict=r"[0-9]*", classes="dialog-number")
                yield Static("priority", classes="dialog-label")
                yield Input("0", id="priority", restrict=r"[-+0-9]*", classes="dialog-number")
            yield Static("overrides (key = value, as --set):", classes="dialog-help")
            yield OverrideEditor(rows=3, initial=[self._split(s) for s in self.composition.sets], id="queue-overrides")
            yield Static("enter: queue   escape: cancel", classes="dialog-help")

    @staticmethod
    def _split(item: str) -> tuple[str, str]:
        key, _, value = item.partition("=")
        return key.strip(), value.strip()

    def on_mount(self) -> None:
        self.query_one("#repeat", Input).focus()

    def _validate(self) -> None:
        editor = self.query_one(OverrideEditor)
        comp = Composition(self.composition.parents, editor.items(), self.composition.name)
        self._request = None
        try:
            repeat = parse_int(self.query_one("#repeat", Input).value, "repeat", 1, MAX_REPEAT)
            priority = parse_int(self.query_one("#priority", Input).value, "priority", -1_000_000, 1_000_000)
        except BadInput as exc:
            editor.valid, editor.invalid_row, editor.message = False, None, exc.message
            return
        check = self.library.check(comp)
        editor.valid = check.ok
        editor.invalid_row = check.bad_set
        if check.spec is None:
            editor.message = check.error or "invalid"
            return
        copies = f"{repeat} runs (seeds {check.spec.train.seed}..{check.spec.train.seed + repeat - 1}), " if repeat > 1 else ""
        editor.message = summary_line(check.spec).replace("ok: ", "ok: " + copies, 1)
        self._request = QueueRequest(comp, repeat, priority)

    def on_override_editor_changed(self, event: OverrideEditor.Changed) -> None:
        self._validate()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id in ("repeat", "priority"):
            self._validate()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._submit()

    def on_override_editor_submitted(self, event: OverrideEditor.Submitted) -> None:
        self._submit()

    def _submit(self) -> None:
        self._validate()
        if self._request is not None:
            self.dismiss(self._request)
        else:
            self.app.bell()

    def action_cancel_dialog(self) -> None:
        self.dismiss(None)


class PriorityDialog(ModalScreen[int | None]):
    """Type a new priority for a queued run (higher runs first)."""

    BINDINGS = [bind("back", "cancel_dialog", description="Cancel")]

    def __init__(self, run_id: str, current: int) -> None:
        super().__init__()
        self.run_id = run_id
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="priority-dialog", classes="dialog"):
            yield Static(f"Priority of {self.run_id} (higher runs first)", classes="dialog-title")
            yield Input(str(self.current), id="priority-value", restrict=r"[-+0-9]*")
            yield Static("", id="priority-error", classes="dialog-error")
            yield Static("enter: set   escape: cancel", classes="dialog-help")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        try:
            parse_int(event.value, "priority", -1_000_000, 1_000_000)
            self.query_one("#priority-error", Static).update("")
        except BadInput as exc:
            self.query_one("#priority-error", Static).update(Text(exc.message))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        try:
            self.dismiss(parse_int(event.value, "priority", -1_000_000, 1_000_000))
        except BadInput as exc:
            self.query_one("#priority-error", Static).update(Text(exc.message))
            self.app.bell()

    def action_cancel_dialog(self) -> None:
        self.dismiss(None)


class ConfirmDialog(ModalScreen[bool]):
    """y confirms, n or escape declines."""

    BINDINGS = [
        bind("back", "answer(False)", description="No"),
        bind("yes", "answer(True)"),
        bind("no", "answer(False)"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-dialog", classes="dialog"):
            yield Static(Text(self.question), classes="dialog-title")
            yield Static("y: yes   n / escape: no", classes="dialog-help")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class StudyOrRunDialog(ModalScreen[str | None]):
    """A preset with a [tune] block: start its study, or queue one plain run of it.
    Returns "study" or "run"."""

    BINDINGS = [bind("back", "cancel_dialog", description="Cancel")]

    def __init__(self, label: str, trials: int) -> None:
        super().__init__()
        self.label = label
        self.trials = trials

    def compose(self) -> ComposeResult:
        with Vertical(id="study-or-run-dialog", classes="dialog"):
            yield Static(Text(f"{self.label} has a [tune] block"), classes="dialog-title")
            yield OptionList(Option(f"start study ({self.trials} trials)", id="study"),
                             Option("single run (the preset's own values, no search)", id="run"),
                             id="study-or-run", compact=True)
            yield Static("enter: choose   escape: cancel", classes="dialog-help")

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(event.option.id)

    def action_cancel_dialog(self) -> None:
        self.dismiss(None)


class TunePresetDialog(ModalScreen[str | None]):
    """Pick a preset with a [tune] block to start its study; returns its name."""

    BINDINGS = [bind("back", "cancel_dialog", description="Cancel")]

    def __init__(self, choices: list[tuple[str, int, str]]) -> None:
        super().__init__()
        self.choices = choices
        """(preset, trials, sampler) each."""

    def compose(self) -> ComposeResult:
        with Vertical(id="tune-preset-dialog", classes="dialog"):
            yield Static("Start a study: pick a preset with a [tune] block", classes="dialog-title")
            if self.choices:
                yield OptionList(*[Option(Text(f"{name}  ({trials} trials, {sampler})"), id=name)
                                   for name, trials, sampler in self.choices], id="tune-presets", compact=True)
            else:
                yield Static("no preset has a [tune] block; add one to a preset in the workspace's presets/",
                             classes="dialog-error")
            yield Static("enter: start   escape: cancel", classes="dialog-help")

    def on_mount(self) -> None:
        for option_list in self.query(OptionList):
            option_list.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(event.option.id)

    def action_cancel_dialog(self) -> None:
        self.dismiss(None)


class PresetNameDialog(ModalScreen[str | None]):
    """Ask the name a trial is saved under as a preset (in the workspace's presets/)."""

    BINDINGS = [bind("back", "cancel_dialog", description="Cancel")]

    def __init__(self, title: str, suggestion: str, taken: Callable[[str], bool]) -> None:
        super().__init__()
        self.title_text = title
        self.suggestion = suggestion
        self.taken = taken
        """Whether a preset of that name exists already (saving never overwrites here)."""

    def compose(self) -> ComposeResult:
        with Vertical(id="preset-name-dialog", classes="dialog"):
            yield Static(Text(self.title_text), classes="dialog-title")
            yield Input(self.suggestion, placeholder="e.g. final/best (saved in the workspace)", id="preset-name")
            yield Static("", id="preset-name-error", classes="dialog-error")
            yield Static("enter: save   escape: cancel", classes="dialog-help")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def _problem(self, name: str) -> str:
        from trialdeck.engine.presets import check_name

        try:
            check_name(name.strip())
        except TrialdeckError as exc:
            return exc.message
        return f"preset {name.strip()} exists already; pick another name" if self.taken(name.strip()) else ""

    def on_input_changed(self, event: Input.Changed) -> None:
        self.query_one("#preset-name-error", Static).update(Text(self._problem(event.value)))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        problem = self._problem(event.value)
        if problem:
            self.query_one("#preset-name-error", Static).update(Text(problem))
            self.app.bell()
            return
        self.dismiss(event.value.strip())

    def action_cancel_dialog(self) -> None:
        self.dismiss(None)


class RerunDialog(ModalScreen[tuple[str, ...] | None]):
    """Run a run's configuration again with overrides (`runs rerun RUN --set ...`), validated as
    you type; returns the `--set` items."""

    BINDINGS = [bind("back", "cancel_dialog", description="Cancel")]

    def __init__(self, run_id: str, config: dict, initial: list[tuple[str, str]]) -> None:
        super().__init__()
        self.run_id = run_id
        self.config = config
        self.initial = initial
        self._sets: tuple[str, ...] | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="rerun-dialog", classes="dialog"):
            yield Static(Text(f"Run {self.run_id}'s configuration again, with:"), classes="dialog-title")
            yield OverrideEditor(rows=3, initial=self.initial, id="rerun-overrides")
            yield Static("enter: queue   escape: cancel", classes="dialog-help")

    def on_mount(self) -> None:
        self.query_one("#value-0", Input).focus()

    def on_override_editor_changed(self, event: OverrideEditor.Changed) -> None:
        editor = self.query_one(OverrideEditor)
        check = check_config(self.config, event.items, f"{self.run_id}'s configuration")
        editor.valid, editor.invalid_row = check.ok, check.bad_set
        editor.message = summary_line(check.spec) if check.spec is not None else check.error or "invalid"
        self._sets = event.items if check.ok else None

    def on_override_editor_submitted(self, event: OverrideEditor.Submitted) -> None:
        if self._sets is not None:
            self.dismiss(self._sets)
        else:
            self.app.bell()

    def action_cancel_dialog(self) -> None:
        self.dismiss(None)



class StorageDialog(ModalScreen[str | None]):
    """Ask for an Optuna storage to open read-only in the Studies view: an SQLAlchemy URL or the
    path of a journal file (what `trialdeck tui --storage` takes)."""

    BINDINGS = [bind("back", "cancel_dialog", description="Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(id="storage-dialog", classes="dialog"):
            yield Static("Open an Optuna storage (read-only; any study, trialdeck's or not):", classes="dialog-title")
            yield Input(placeholder="sqlite:///PATH, postgresql://USER@HOST/DB, or a journal file's path",
                        id="storage-url")
            yield Static("enter: open   escape: cancel", classes="dialog-help")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.dismiss(event.value.strip() or None)

    def action_cancel_dialog(self) -> None:
        self.dismiss(None)
