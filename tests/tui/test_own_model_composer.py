"""The composer with a user's own model and data (issue 15): it offers the new kinds and
torchvision's models as values, and says inline, on the override that caused it, what enqueue
would refuse (an unknown arch with a suggestion, a missing .npz), before anything is queued."""

from __future__ import annotations

import pytest
from textual.widgets import Input

from tests.tui.conftest import SIZE, new_app, show
from trialdeck.engine.presets import preset_roots
from trialdeck.tui.composition import Composition, PresetLibrary, value_choices
from trialdeck.tui.testing import wait_for


def test_the_new_kinds_and_archs_are_offered_as_values():
    assert value_choices("model.kind") == ['"mlp"', '"cnn"', '"torchvision"', '"python"']
    datasets = value_choices("data.dataset")
    assert {'"arrays"', '"imagefolder"', '"cifar100"', '"svhn"'} <= set(datasets)
    assert '"resnet18"' in value_choices("model.arch") and value_choices("data.channels") == ["1", "3"]
    assert value_choices("train.epochs") == [] and value_choices("no.such") == []


@pytest.mark.parametrize(("sets", "bad", "words"), [
    (('model.kind="torchvision"', 'model.arch="resnet181"'), 1, "did you mean 'resnet18'?"),
    (('data.dataset="arrays"', 'data.path="nowhere.npz"'), 1, "nowhere.npz': no such file"),
    (('model.kind="python"', 'model.factory="nomodule:build"'), 1, "no module nomodule in"),
])
def test_the_composer_checks_own_model_and_data_keys_as_enqueue_would(tmp_path, monkeypatch, sets, bad, words):
    monkeypatch.chdir(tmp_path)
    check = PresetLibrary(preset_roots(None)).check(Composition(("base/digits-mlp",), sets))
    assert not check.ok and check.bad_set == bad and words in (check.error or "")


async def test_typing_a_torchvision_model_in_the_composer(ws, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative data paths resolve in the folder the TUI runs in
    app = new_app(ws)
    async with app.run_test(size=SIZE) as pilot:
        await show(pilot, "2", "PresetsScreen")
        await pilot.press("v")
        editor = app.screen.query_one("#compose-overrides")
        app.screen.query_one("#key-0", Input).focus()
        await pilot.press(*"model.kind", "tab", *'"tor')
        value = app.screen.query_one("#value-0", Input)
        await wait_for(pilot, lambda: value._suggestion == '"torchvision"', what="the kind suggested")
        await pilot.press("right")  # accept the suggestion
        await wait_for(pilot, lambda: value.value == '"torchvision"', what="the suggestion taken")
        await wait_for(pilot, lambda: "needs arch" in editor.message, what="the missing arch")
        app.screen.query_one("#key-1", Input).focus()
        await pilot.press(*"model.arch", "tab", *'"resnet181"')
        await wait_for(pilot, lambda: "did you mean 'resnet18'?" in editor.message, what="the arch refused")
        assert app.screen.query_one("#value-1", Input).has_class("-invalid")
        for _ in range(len('"resnet181"')):
            await pilot.press("backspace")
        await pilot.press(*'"resnet18"')
        await wait_for(pilot, lambda: editor.message.startswith("ok: digits, torchvision resnet18"), what="ok")


def test_the_study_picker_lists_a_tuning_preset_whose_data_has_gone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gone.toml").write_text('extends = ["seed/random-search"]\n[data]\ndataset = "arrays"\n'
                                        'path = "nothere.npz"\n')
    library = PresetLibrary([tmp_path, *preset_roots(None)])
    # Listed: starting it says why (start_study checks the files), instead of it silently missing.
    assert "gone" in [name for name, _ in library.tuning()]
