"""The preset composer: browse presets by group, see one resolved and diffed against its
parents, compose a new one from a base and strategy blocks plus overrides, save or queue it;
a preset with a [tune] block asks whether to start its study or queue one plain run.

Validation runs on every change with the CLI's rules (tui/composition.py), on
cached compositions, so typing reads no file; an invalid override is marked
in place with the one-line error naming what is allowed.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.reactive import reactive
from textual.widgets import Footer, Input, Select, SelectionList, Static, TabbedContent, TabPane, Tree

from trialdeck.engine.errors import TrialdeckError
from trialdeck.engine.presets import check_name
from trialdeck.engine.presets.authoring import describe_overrides
from trialdeck.engine.tuning.launch import target_trials
from trialdeck.tui import messages
from trialdeck.tui.composition import Check, Composition, lr_curve, summary_line
from trialdeck.tui.keymap import bind
from trialdeck.tui.screens.base import LiveScreen
from trialdeck.tui.screens.dialogs import QueueDialog, StudyOrRunDialog
from trialdeck.tui.widgets.check_list import CheckList
from trialdeck.tui.widgets.filter_bar import FilterBar
from trialdeck.tui.widgets.mode_bar import ModeBar
from trialdeck.tui.widgets.override_editor import OverrideEditor
from trialdeck.tui.widgets.plots import CurvePlot, Series
from trialdeck.tui.widgets.preset_tree import PresetTree

DEFAULT_BASE = "base/digits-mlp"


def _value(v) -> str:
    return "(unset)" if v is None else repr(v) if isinstance(v, str) else str(v)


class PresetsScreen(LiveScreen):
    """Left: the preset tree. Right: Config (resolved + diff) and Compose tabs."""

    BINDINGS = [
        bind("queue", "queue_preset", description="Queue a run", short="Queue"),
        # Not in the footer (no room at 80 columns): `r` on a tuning preset offers the study too,
        # and help and the palette list it.
        bind("tune", "start_study", show=False),
        bind("compose", "compose_from", short="Compose"),
        bind("save", "save_preset", short="Save"),
        bind("view", "next_tab", description="Config/Compose", short="Next tab"),
        bind("filter"),
        # Shown only away from the tree: in the composer's inputs it is the one way out.
        bind("back", "focus_tree", description="Preset list"),
    ]

    highlighted: reactive[str | None] = reactive(None, init=False)
    """The preset under the tree cursor."""
    composition: reactive[Composition] = reactive(lambda: Composition((DEFAULT_BASE,)), init=False, always_update=True)
    """What the Compose tab describes."""

    def __init__(self) -> None:
        super().__init__()
        self._check: Check | None = None
        self._highlighted_ok = False
        self._highlighted_tunes = False
        self._library_version = -1

    def compose(self) -> ComposeResult:
        library = self.ctx.library
        bases = library.bases
        yield ModeBar("presets", id="mode-bar")
        with Horizontal(id="presets-body"):
            yield PresetTree(library.names, id="presets")
            with TabbedContent(id="preset-tabs", initial="tab-config"):
                with TabPane("Config", id="tab-config"):
                    with VerticalScroll(id="detail"):
                        yield Static("", id="diff")
                        yield Static("Select a preset to see its resolved configuration.", id="config")
                with TabPane("Compose", id="tab-compose"):
                    with VerticalScroll(id="composer"):
                        with Horizontal(classes="compose-row"):
                            yield Static("base", classes="compose-label")
                            yield Select([(b, b) for b in bases], value=DEFAULT_BASE if DEFAULT_BASE in bases else Select.NULL,
                                         allow_blank=False, id="compose-base", compact=True)
                        yield Static("strategy blocks (space toggles):", classes="compose-help")
                        yield CheckList(*[(b, b) for b in library.blocks], id="compose-blocks", compact=True)
                        yield Static("overrides (key = value, as --set):", classes="compose-help")
                        yield OverrideEditor(rows=3, id="compose-overrides")
                        yield Static("", id="compose-parent-overrides", classes="compose-help")
                        yield CurvePlot("learning rate by epoch", xlabel="epoch", id="lr-plot")
                        with Horizontal(classes="compose-row"):
                            yield Static("name", classes="compose-label")
                            yield Input(placeholder="e.g. mine/step-l2 (saved in the workspace)", id="compose-name")
                        yield Static("", id="compose-name-error", classes="compose-help")
        yield FilterBar("part of a preset name", id="presets-filter")
        yield Footer()

    def on_mount(self) -> None:
        self._ready = True
        self._library_version = self.ctx.library.version
        self.query_one(FilterBar).display = False
        tree = self.query_one(PresetTree)
        tree.focus()
        first = tree.first_leaf()
        if first is not None:
            tree.move_cursor(first)
            self.highlighted = first.data
        self._recheck()

    # -- browsing ----------------------------------------------------------------------------

    def on_tree_node_highlighted(self, event: Tree.NodeHighlighted[str]) -> None:
        event.stop()
        if event.node.data:
            self.highlighted = event.node.data

    def watch_highlighted(self, name: str | None) -> None:
        if name is not None:
            self._show(name)
        self.sync_bindings()

    def _show(self, name: str) -> None:
        from trialdeck.engine.presets.authoring import config_toml

        library = self.ctx.library
        config = self.query_one("#config", Static)
        diff = self.query_one("#diff", Static)
        check = library.check(Composition((name,)))
        self._highlighted_ok = check.ok
        self._highlighted_tunes = check.spec is not None and check.spec.tune is not None
        if check.spec is None:
            config.update(Text.assemble(("invalid preset\n", "bold red"), check.error or ""))
            diff.update("")
            return
        spec = check.spec
        config.update(Text.assemble((name, "bold"), f"  hash {spec.content_hash}\n{spec.description}\n\n",
                                    config_toml(spec.config())))
        try:
            parents, changes = library.diff(name)
        except TrialdeckError as exc:
            diff.update(Text(f"diff unavailable: {exc.message}", style="red"))
            return
        out = Text()
        out.append("differs from " + (" + ".join(parents) if parents else "the schema defaults") + ":\n", style="bold")
        for key, old, new in changes:
            out.append(f"  {key}: ")
            out.append(_value(old), style="red")
            out.append(" → ")
            out.append(f"{_value(new)}\n", style="green")
        if not changes:
            out.append("  (nothing)\n", style="dim")
        for line in describe_overrides(library.overrides(parents)):
            out.append(f"note: {line}\n", style="yellow")
        out.append("resolved:", style="bold")
        diff.update(out)

    def on_screen_resume(self) -> None:
        if self._ready and self._library_version != self.ctx.library.version:
            self.presets_changed()  # saved from elsewhere meanwhile (a study's trial)

    def presets_changed(self, select: str | None = None) -> None:
        """The library was reloaded (a preset was saved): rebuild the tree and the base list."""
        library = self.ctx.library
        self._library_version = library.version
        tree = self.query_one(PresetTree)
        tree.names = library.names
        tree.fill(tree.names, self.query_one(FilterBar).text)
        base = self.query_one("#compose-base", Select)
        keep = base.value
        base.set_options([(b, b) for b in library.bases])
        if keep in library.bases:
            base.value = keep
        node = tree.leaf(select) if select else None
        if node is not None:
            if node.parent is not None:
                node.parent.expand()
            self.call_after_refresh(tree.move_cursor, node)
            self.highlighted = select

    # -- composing ---------------------------------------------------------------------------

    def _gather(self) -> Composition:
        base = self.query_one("#compose-base", Select).value
        parents = [base] if isinstance(base, str) else []
        parents += list(self.query_one("#compose-blocks", SelectionList).selected)
        items = self.query_one(OverrideEditor).items()
        name = self.query_one("#compose-name", Input).value.strip()
        return Composition(tuple(parents), items, name)

    def _recheck(self) -> None:
        if not self._ready:
            return
        self.composition = self._gather()

    def watch_composition(self, comp: Composition) -> None:
        editor = self.query_one(OverrideEditor)
        check = self.ctx.library.check(comp)
        self._check = check
        editor.valid = check.ok
        editor.invalid_row = check.bad_set
        plot = self.query_one(CurvePlot)
        if check.spec is not None:
            editor.message = summary_line(check.spec)
            curve = lr_curve(check.spec)
            plot.series = (Series("lr", tuple(float(i + 1) for i in range(len(curve))), tuple(curve)),)
        else:
            editor.message = check.error or "invalid"
            plot.empty_note = "fix the error above"
            plot.series = ()
        notes = describe_overrides(self.ctx.library.overrides(comp.parents))
        self.query_one("#compose-parent-overrides", Static).update(
            Text("\n".join(f"note: {line}" for line in notes), style="yellow"))
        name_error = ""
        if comp.name:
            try:
                check_name(comp.name)
            except TrialdeckError as exc:
                name_error = exc.message
        self.query_one("#compose-name-error", Static).update(Text(name_error, style="red"))
        self.sync_bindings()

    def on_select_changed(self, event: Select.Changed) -> None:
        self._recheck()

    def on_selection_list_selected_changed(self, event: SelectionList.SelectedChanged) -> None:
        self._recheck()

    def on_override_editor_changed(self, event: OverrideEditor.Changed) -> None:
        self._recheck()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "compose-name":
            self._recheck()

    # -- actions -----------------------------------------------------------------------------

    def _tab(self) -> str:
        return self.query_one(TabbedContent).active

    def _name_ok(self, name: str) -> bool:
        try:
            check_name(name)
        except TrialdeckError:
            return False
        return True

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if not self._ready:
            return True
        if action == "queue_preset":
            if self._tab() == "tab-compose":
                return True if self._check is not None and self._check.ok else None
            return True if self.highlighted and self._highlighted_ok else None
        if action == "start_study":
            return True if self._target_tunes() else None
        if action == "save_preset":
            ok = self._tab() == "tab-compose" and self._check is not None and self._check.ok
            return True if ok and self._name_ok(self.composition.name) else None
        if action == "compose_from":
            return True if self.highlighted else None
        if action == "filter" and self.typing:
            return False  # "/" types into the input
        if action == "focus_tree":
            return False if isinstance(self.focused, PresetTree) else True
        return True

    def _target(self) -> Composition | None:
        """What `r` and `t` act on: the composition on the Compose tab, else the highlighted preset."""
        if self._tab() == "tab-compose":
            comp = self.composition
            return Composition(comp.parents, comp.sets, comp.name)
        return Composition((self.highlighted,)) if self.highlighted else None

    def _target_tunes(self) -> bool:
        if self._tab() == "tab-compose":
            return self._check is not None and self._check.spec is not None and self._check.spec.tune is not None
        return bool(self.highlighted) and self._highlighted_tunes

    def action_queue_preset(self) -> None:
        base = self._target()
        if base is None:
            return

        def queued(request) -> None:
            if request is not None:
                self.post_message(messages.QueueRuns(request))

        def chosen(choice: str | None) -> None:
            if choice == "study":
                self.post_message(messages.StartStudy(base))
            elif choice == "run":
                self.app.push_screen(QueueDialog(self.ctx.library, base), queued)

        spec = self.ctx.library.check(base).spec
        if spec is not None and spec.tune is not None:
            # A tuning preset: queueing it plainly would silently ignore its search; ask which is meant.
            self.app.push_screen(StudyOrRunDialog(base.label, target_trials(spec.tune, None)), chosen)
        else:
            self.app.push_screen(QueueDialog(self.ctx.library, base), queued)

    def action_start_study(self) -> None:
        base = self._target()
        if base is None or not self._target_tunes():
            self.app.bell()
            return
        self.post_message(messages.StartStudy(base))

    def action_save_preset(self) -> None:
        comp = self.composition
        if self._check is None or not self._check.ok or not self._name_ok(comp.name):
            self.app.bell()
            return
        self.post_message(messages.SavePreset(comp, f"{comp.name}: " + " + ".join(comp.parents)))

    def action_compose_from(self) -> None:
        name = self.highlighted
        if not name:
            return
        library = self.ctx.library
        if name in library.blocks:
            self.query_one("#compose-blocks", SelectionList).select(name)
        else:
            self.query_one("#compose-base", Select).value = name
        self.query_one(TabbedContent).active = "tab-compose"
        self.query_one("#key-0", Input).focus()
        self._recheck()

    def action_next_tab(self) -> None:
        tabs = self.query_one(TabbedContent)
        tabs.active = "tab-compose" if tabs.active == "tab-config" else "tab-config"
        self.sync_bindings()

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        self.sync_bindings()

    def action_filter(self) -> None:
        self.query_one(FilterBar).open()

    def on_filter_bar_changed(self, event: FilterBar.Changed) -> None:
        tree = self.query_one(PresetTree)
        tree.fill(tree.names, event.text)

    def on_filter_bar_closed(self, event: FilterBar.Closed) -> None:
        self.action_focus_tree()

    def action_focus_tree(self) -> None:
        self.query_one(PresetTree).focus()
