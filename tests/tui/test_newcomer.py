"""A new user's first day in the TUI (issue 13): start a study from a tuning preset (`r`, the
palette, the Studies view's `t`), take a trial to a final model (save it as a preset, run it
again longer), see which keys a later parent overrode, and tell a chosen strategy block from
an unchosen one by its box.

No engine is started (`start_engine=False`): a started study is a study document the engine
would pick up, the same one `trialdeck tune` writes (asserted against it).
"""

from __future__ import annotations

from textual.widgets import Input, SelectionList

from tests.tui.conftest import SIZE, loaded, new_app, screen_name, show
from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.presets import preset_roots, resolve
from trialdeck.engine.tuning.space import apply_params
from trialdeck.tui.testing import screen_text, wait_for


def runs(ws) -> list[dict]:
    return Store(ws).list_runs()


async def highlight(pilot, name: str) -> None:
    tree = pilot.app.screen.query_one("#presets")
    node = tree.leaf(name)
    if node.parent is not None:
        node.parent.expand()
    await pilot.pause()
    tree.move_cursor(node)
    await wait_for(pilot, lambda: pilot.app.screen.highlighted == name, what=name)


def assert_started_like_tune(ws, name: str, preset: str, trials: int) -> None:
    """The study document is the one `trialdeck tune PRESET` writes (engine.runtime.control.start_study)."""
    doc = Store(ws).get_study(name)
    spec = resolve(preset, [], preset_roots(ws.presets_dir))
    assert doc is not None, f"no study {name}"
    assert doc["state"] == "running" and doc["n_trials"] == trials
    assert doc["preset"] == preset and doc["create"] == {"preset": preset, "config": spec.config()}
    assert doc["storage_url"] == f"journal:{ws.studies_dir / (name + '.journal')}"


# ----------------------------------------------------------------------------- starting a study


async def test_r_on_a_tuning_preset_asks_study_or_run_and_starts_the_study(ws):
    app = new_app(ws)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await show(pilot, "2", "PresetsScreen")
        await highlight(pilot, "seed/activations")
        await pilot.press("r")
        await wait_for(pilot, lambda: screen_name(app) == "StudyOrRunDialog", what="the study-or-run question")
        text = screen_text(app)
        assert "seed/activations has a [tune] block" in text
        assert "start study (7 trials)" in text and "single run" in text
        await pilot.press("enter")  # the first choice: the study
        await wait_for(pilot, lambda: Store(ws).get_study("seed-activations") is not None, what="the study")
        await wait_for(pilot, lambda: any("study seed-activations started: 0/7 trials" in n.message
                                          for n in app._notifications), what="the toast")
    assert_started_like_tune(ws, "seed-activations", "seed/activations", 7)
    assert runs(ws) == []  # not one plain run


async def test_single_run_of_a_tuning_preset_queues_one_run_and_no_study(ws):
    app = new_app(ws)
    async with app.run_test(size=SIZE) as pilot:
        await show(pilot, "2", "PresetsScreen")
        await highlight(pilot, "seed/grid-search")
        await pilot.press("r")
        await wait_for(pilot, lambda: screen_name(app) == "StudyOrRunDialog", what="the question")
        assert "start study (12 trials)" in screen_text(app)  # a grid: its size
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: screen_name(app) == "QueueDialog", what="the queue dialog")
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(runs(ws)) == 1, what="one queued run")
    assert runs(ws)[0]["preset"] == "seed/grid-search" and Store(ws).list_studies() == []


async def test_escape_from_the_question_does_nothing(ws):
    app = new_app(ws)
    async with app.run_test(size=SIZE) as pilot:
        await show(pilot, "2", "PresetsScreen")
        await highlight(pilot, "seed/activations")
        await pilot.press("r")
        await wait_for(pilot, lambda: screen_name(app) == "StudyOrRunDialog", what="the question")
        await pilot.press("escape")
        await wait_for(pilot, lambda: screen_name(app) == "PresetsScreen", what="back")
        await pilot.pause(0.2)
    assert runs(ws) == [] and Store(ws).list_studies() == []


async def test_a_plain_preset_still_opens_the_queue_dialog_and_t_is_greyed(ws):
    app = new_app(ws)
    async with app.run_test(size=SIZE) as pilot:
        await show(pilot, "2", "PresetsScreen")
        await highlight(pilot, "seed/step-decay")
        assert app.screen.check_action("start_study", ()) is None
        await pilot.press("r")
        await wait_for(pilot, lambda: screen_name(app) == "QueueDialog", what="the queue dialog")
        await highlight_back(pilot)
        await highlight(pilot, "seed/random-search")
        assert app.screen.check_action("start_study", ()) is True
        await pilot.press("t")
        await wait_for(pilot, lambda: Store(ws).get_study("seed-random-search") is not None, what="the study")
    assert_started_like_tune(ws, "seed-random-search", "seed/random-search", 20)


async def highlight_back(pilot) -> None:
    await pilot.press("escape")
    await wait_for(pilot, lambda: screen_name(pilot.app) == "PresetsScreen", what="the presets view")


async def test_the_palette_finds_tune_and_study_everywhere_and_starts_one(ws):
    app = new_app(ws)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert "Start a study (tune a preset)" in titles  # on the Runs view too
        await show(pilot, "2", "PresetsScreen")
        await highlight(pilot, "seed/activations")
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Start a study (tune a preset)" in titles and "Queue a run" in titles
        assert titles.count("Start a study (tune a preset)") == 1
        await show(pilot, "1", "RunsScreen")
        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: screen_name(app) == "CommandPalette", what="the palette")
        await pilot.press(*"study")
        await wait_for(pilot, lambda: "Start a study" in screen_text(app), what="the command found")
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen_name(app) == "TunePresetDialog", what="the preset picker")
        text = screen_text(app)
        for name in ("seed/activations", "seed/grid-search", "seed/random-search", "seed/tpe-mnist",
                     "seed/larger-dataset"):
            assert name in text
        assert "seed/step-decay" not in text
        await pick(pilot, "seed/activations")
        await wait_for(pilot, lambda: Store(ws).get_study("seed-activations") is not None, what="the study")
    assert_started_like_tune(ws, "seed-activations", "seed/activations", 7)


async def pick(pilot, name: str) -> None:
    """Choose `name` in the preset picker, with the keys a person would press."""
    options = pilot.app.screen.query_one("#tune-presets")
    ids = [options.get_option_at_index(i).id for i in range(options.option_count)]
    await pilot.press("home", *["down"] * ids.index(name))
    assert options.highlighted == ids.index(name)
    await pilot.press("enter")


async def test_the_studies_view_starts_a_study_from_a_picked_tuning_preset(ws):
    app = new_app(ws)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await show(pilot, "4", "StudiesScreen")
        assert "no studies yet: t starts one" in screen_text(app)
        await pilot.press("t")
        await wait_for(pilot, lambda: screen_name(app) == "TunePresetDialog", what="the preset picker")
        assert "seed/grid-search  (12 trials, grid)" in screen_text(app)
        await pick(pilot, "seed/grid-search")
        await wait_for(pilot, lambda: Store(ws).get_study("seed-grid-search") is not None, what="the study")
        await wait_for(pilot, lambda: app.screen.query_one("#study-table").row_count == 1, what="the study listed")
    assert_started_like_tune(ws, "seed-grid-search", "seed/grid-search", 12)


# ----------------------------------------------------------------------------- a trial to a final model


async def trials_of(pilot, number: int) -> None:
    app = pilot.app
    await loaded(pilot)
    await show(pilot, "4", "StudiesScreen")
    trials = app.screen.query_one("#trial-table")
    await wait_for(pilot, lambda: trials.row_count == 7, what="seven trials")
    trials.focus()
    assert trials.select_key(str(number))
    await pilot.pause()


async def test_save_a_trial_as_a_preset_from_the_studies_view(seeded):
    ws, _ = seeded
    store = Store(ws)
    trial = next(t for t in store.list_trials("seed-activations") if t["number"] == 2)
    app = new_app(ws)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await trials_of(pilot, 2)
        assert app.screen.check_action("save_trial", ()) is True
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: screen_name(app) == "PresetNameDialog", what="the name dialog")
        name_input = app.screen.query_one("#preset-name", Input)
        assert name_input.value == "seed-activations/trial-2"
        await pilot.press("ctrl+u", *"../x")
        await wait_for(pilot, lambda: "use a relative name" in screen_text(app), what="the name refused")
        await pilot.press("enter")  # refused: the dialog stays
        await pilot.pause(0.1)
        assert screen_name(app) == "PresetNameDialog"
        await pilot.press("ctrl+u", *"final/best", "enter")
        path = ws.presets_dir / "final" / "best.toml"
        await wait_for(pilot, path.exists, what="the saved preset")
        await wait_for(pilot, lambda: any("saved trial #2 of seed-activations as final/best" in n.message
                                          for n in app._notifications), what="the toast")
        await show(pilot, "2", "PresetsScreen")  # the new preset is in the tree
        await wait_for(pilot, lambda: app.screen.query_one("#presets").leaf("final/best") is not None,
                       what="final/best in the tree")
        await show(pilot, "4", "StudiesScreen")
        await pilot.press("ctrl+s")  # the same name again is refused in the dialog, not overwritten
        await wait_for(pilot, lambda: screen_name(app) == "PresetNameDialog", what="the name dialog")
        await pilot.press("ctrl+u", *"final/best")
        await wait_for(pilot, lambda: "preset final/best exists already" in screen_text(app), what="taken")
    saved = resolve("final/best", [], preset_roots(ws.presets_dir))
    study = store.get_study("seed-activations")
    expected = apply_params(study["config"], trial["params"], "trial 2")
    assert saved.tune is None
    assert saved.model.activation == trial["params"]["model.activation"] == "tanh"
    assert saved.optimizer.lr == trial["params"]["optimizer.lr"]
    body = {k: v for k, v in saved.config().items() if k not in ("preset", "description")}
    assert body == {k: v for k, v in expected.config().items() if k not in ("preset", "description", "tune")}


async def test_run_a_trial_again_longer_from_the_studies_view(seeded):
    ws, ids = seeded
    old = Store(ws).get_run(ids["trial0"])
    before = {r["id"] for r in runs(ws)}
    app = new_app(ws)
    async with app.run_test(size=SIZE) as pilot:
        await trials_of(pilot, 0)
        assert app.screen.check_action("rerun_trial", ()) is True
        await pilot.press("r")
        await wait_for(pilot, lambda: screen_name(app) == "RerunDialog", what="the rerun dialog")
        assert app.screen.query_one("#key-0", Input).value == "train.epochs"
        assert app.screen.query_one("#value-0", Input).value == "10"
        await pilot.press("ctrl+u", "0")
        editor = app.screen.query_one("#rerun-overrides")
        await wait_for(pilot, lambda: editor.message.startswith("--set train.epochs: train.epochs = 0:"),
                       what="the error")
        await pilot.press("enter")  # refused
        await pilot.pause(0.1)
        assert screen_name(app) == "RerunDialog" and len(runs(ws)) == len(before)
        await pilot.press("ctrl+u", *"50")
        await wait_for(pilot, lambda: "50 epochs" in editor.message, what="valid again")
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(runs(ws)) == len(before) + 1, what="the new run")
    [new] = [r for r in runs(ws) if r["id"] not in before]
    assert new["state"] == "queued" and new["config"]["train"]["epochs"] == 50
    assert {**new["config"], "train": {**new["config"]["train"], "epochs": 10}} == old["config"]


async def test_trial_keys_are_greyed_where_they_do_not_apply(seeded):
    ws, _ = seeded
    app = new_app(ws)
    async with app.run_test(size=SIZE) as pilot:
        await trials_of(pilot, 5)  # a trial with params but no run on this box
        screen = app.screen
        assert screen.check_action("rerun_trial", ()) is None
        assert screen.check_action("save_trial", ()) is True
        screen.query_one("#study-table").focus()
        await pilot.pause()
        assert screen.check_action("save_trial", ()) is None and screen.check_action("start_study", ()) is True
        await pilot.press("question_mark")  # not in the 80-column footer, so help names them
        await wait_for(pilot, lambda: screen_name(app) == "HelpScreen", what="help")
        text = screen_text(app)
        for words in ("Start a study (tune a preset)", "Run the trial again (e.g. longer)", "Save the trial as a preset"):
            assert words in text


# ----------------------------------------------------------------------------- the composer


async def test_the_composer_says_which_keys_a_later_parent_overrode(ws):
    (ws.presets_dir / "mine").mkdir(parents=True)
    (ws.presets_dir / "mine" / "cnn-dropout.toml").write_text('extends = ["base/digits-cnn", "seed/dropout"]\n')
    app = new_app(ws)
    async with app.run_test(size=SIZE) as pilot:
        await show(pilot, "2", "PresetsScreen")
        await highlight(pilot, "mine/cnn-dropout")
        assert ("note: seed/dropout overrides model.kind (cnn -> mlp), model.hidden ([128] -> [256, 256]), "
                "train.epochs (20 -> 30) from base/digits-cnn") in str(app.screen.query_one("#diff").render())
        await pilot.press("v")
        screen = app.screen
        blocks = screen.query_one("#compose-blocks", SelectionList)
        blocks.focus()
        blocks.highlighted = [blocks.get_option_at_index(i).value for i in range(blocks.option_count)].index(
            "sched/step-decay")
        await pilot.press("space")
        note = screen.query_one("#compose-parent-overrides")
        await wait_for(pilot, lambda: "sched/step-decay overrides optimizer.lr (0.001 -> 0.1) from base/digits-mlp"
                       in str(note.render()), what="the note")


async def test_the_composers_boxes_show_chosen_and_unchosen_by_their_glyph(ws):
    app = new_app(ws)
    async with app.run_test(size=SIZE) as pilot:
        await show(pilot, "2", "PresetsScreen")
        await pilot.press("v")
        blocks = app.screen.query_one("#compose-blocks", SelectionList)
        values = [blocks.get_option_at_index(i).value for i in range(blocks.option_count)]
        blocks.focus()
        blocks.highlighted = values.index("reg/l2")
        await pilot.press("space")
        await pilot.pause()

        def box(value: str) -> str:
            line = blocks.render_line(values.index(value) - blocks.scroll_offset.y).text
            return line[:3]

        assert box("reg/l2").strip("▐▌ ") == "X"
        others = [v for v in values if v != "reg/l2"][:3]
        assert all(box(v).strip("▐▌") .strip() == "" for v in others), [box(v) for v in others]
