"""Preset composition, `--set`, validation messages: pure logic, no torch."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from trialdeck.engine.errors import PresetError
from trialdeck.engine.presets import list_presets, parse_set, preset_roots, resolve
from trialdeck.engine.presets.loader import Composed, _merge

SEED_PRESETS = {
    "seed/l1-l2", "seed/dropout", "seed/early-stopping", "seed/batch-norm", "seed/activations", "seed/step-decay",
    "seed/augmentation", "seed/grid-search", "seed/random-search", "seed/tpe-mnist", "seed/larger-dataset",
}


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def error_of(ref: str, sets: list[str] | None = None, roots: list[Path] | None = None) -> str:
    with pytest.raises(PresetError) as info:
        resolve(ref, sets or [], roots)
    message = info.value.message
    assert "\n" not in message, "errors are one line"
    return message


def test_every_builtin_preset_validates_and_the_11_seed_presets_exist():
    names = {name for name, _ in list_presets(preset_roots())}
    assert SEED_PRESETS <= names
    for name in names:
        resolve(name)


def test_step_decay_resolves_the_article_values():
    spec = resolve("seed/step-decay")
    assert (spec.optimizer.lr, spec.schedule.kind, spec.schedule.drop, spec.schedule.epochs_drop) == (0.1, "step", 0.5, 10)
    assert spec.train.epochs == 50 and spec.data.dataset == "digits"


def test_extends_left_to_right_then_the_file_wins(tmp_path):
    write(tmp_path, "a", "[optimizer]\nlr = 0.1\nname = 'sgd'\n[train]\nepochs = 3\n")
    write(tmp_path, "b", "[optimizer]\nlr = 0.2\n[model]\nhidden = [8]\n")
    write(tmp_path, "c", "extends = ['a', 'b']\n[train]\nepochs = 7\n")
    spec = resolve("c", [], [tmp_path])
    assert spec.optimizer.lr == 0.2  # b after a
    assert spec.optimizer.name == "sgd"  # a's key survives b's table
    assert spec.train.epochs == 7  # the file itself wins
    assert spec.model.hidden == [8]
    assert spec.preset == "c"


def test_set_overrides_with_toml_values_and_list_indices():
    spec = resolve("seed/step-decay", ["model.hidden=[512,512]", "train.epochs=3", "optimizer.name=adam",
                                       "model.hidden.1=64", "augment.horizontal_flip=true"])
    assert spec.model.hidden == [512, 64]
    assert spec.train.epochs == 3 and spec.optimizer.name == "adam" and spec.augment.horizontal_flip is True


def test_content_hash_is_stable_and_tracks_config():
    a, b = resolve("seed/step-decay"), resolve("seed/step-decay")
    assert a.content_hash == b.content_hash
    assert resolve("seed/step-decay", ["train.seed=1"]).content_hash != a.content_hash


def test_runspec_is_frozen():
    spec = resolve("seed/step-decay")
    with pytest.raises(ValidationError, match="frozen"):
        spec.train.epochs = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[data\n", ["TOML syntax error", "line 1"]),
        ("[modle]\nhidden = [1]\n", ["unknown section or key 'modle'", "did you mean 'model'"]),
        ("[model]\nhiden = [1]\n", ["unknown key 'hiden' in [model]", "did you mean 'hidden'"]),
        ("[data]\nbatch_size = 'big'\n", ["data.batch_size", "'big'", "integer"]),
        ("[data]\nbatch_size = 0\n", ["data.batch_size = 0", "greater than or equal to 1"]),
        ("[model]\ndropout = 1.5\n", ["model.dropout", "less than 1"]),
        ("[model]\nactivation = 'rleu'\n", ["model.activation = 'rleu'", "allowed:", "'gelu'", "did you mean 'relu'"]),
        ("[early_stopping]\nmonitor = 'val_accc'\n", ["early_stopping.monitor", "did you mean 'val_acc'"]),
        ("[tune]\nsampler = 'gird'\n[tune.space]\n'optimizer.lr' = {float = [0.1, 1]}\n",
         ["tune.sampler = 'gird'", "did you mean 'grid'"]),
        ("[tune]\npruner = 'medain'\n[tune.space]\n'optimizer.lr' = {float = [0.1, 1]}\n",
         ["tune.pruner", "did you mean 'median'"]),
        ("[tune.space]\n'optimizer.lr' = {float = [1, 0.1]}\n", ["tune.space.optimizer.lr", "low 1.0 is greater than high 0.1"]),
        ("[tune.space]\n'optimizer.name' = {choices = []}\n", ["tune.space.optimizer.name.choices", "at least 1"]),
        ("[tune.space]\n'optimizer.lrr' = {float = [0.1, 1]}\n", ["'optimizer.lrr' is not a preset key", "did you mean 'lr'"]),
        ("[tune.space]\n'optimizer.lr' = {float = [0, 1], log = true}\n", ["log scale needs low > 0"]),
        ("[tune]\nsampler = 'grid'\n[tune.space]\n'optimizer.lr' = {float = [0.1, 1]}\n", ["grid sampler needs choices"]),
        ("[tune.space]\n'model.hidden.2' = {int = [1, 4], when = {'model.depth' = 3}}\n", ["when names 'model.depth'"]),
        ("[tune]\ntrials = 3\n", ["space is empty"]),
        ("extends = ['nowhere']\n", ["extends", "preset 'nowhere' not found"]),
        ("[train]\nepochs = 1e999\n", ["train.epochs"]),
    ],
)
def test_bad_preset_is_one_line_naming_file_and_key(tmp_path, text, expected):
    path = write(tmp_path, "bad", text)
    message = error_of(str(path))
    assert str(path) in message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_cyclic_extends_is_an_error(tmp_path):
    write(tmp_path, "x", "extends = ['y']\n")
    write(tmp_path, "y", "extends = ['x']\n")
    message = error_of("x", roots=[tmp_path])
    assert "cycle" in message and "x.toml" in message and "y.toml" in message


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("model.hiden=3", ["--set model.hiden", "did you mean 'hidden'"]),
        ("modl.x=1", ["--set modl.x", "did you mean 'model'"]),
        ("train.epochs=abc", ["--set train.epochs", "'abc'", "integer"]),
        ("train.epochs=-1", ["--set train.epochs", "greater than or equal to 1"]),
        ("optimizer.name=sgdd", ["--set optimizer.name", "did you mean 'sgd'"]),
        ("model.hidden.5=3", ["model.hidden.5", "past the end"]),
        ("noequals", ["expected KEY=VALUE"]),
        ("train=3", ["train is a section"]),
        ("model.hidden=[1,", ["not a TOML value"]),
    ],
)
def test_bad_set_is_one_line_naming_the_key(item, expected):
    message = error_of("seed/step-decay", [item])
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


@pytest.mark.parametrize("name", ["../etc/passwd", "/etc/passwd", "seed/../../x", "a\\b", "", "seed//x"])
def test_names_cannot_escape_the_roots(name):
    message = error_of(name)
    assert "name" in message


def test_workspace_presets_shadow_builtins(tmp_path):
    write(tmp_path, "seed/step-decay", "extends = []\n[train]\nepochs = 2\n")
    spec = resolve("seed/step-decay", [], preset_roots(tmp_path))
    assert spec.train.epochs == 2


def test_per_layer_lists_must_match_layer_count():
    message = error_of("seed/l1-l2", ["model.hidden=[64,64,64]"])
    assert "regularization.l1 has 3 values but the model has 4 weight layers" in message or "dropout" in message


def test_article_conditional_space_is_expressed():
    spec = resolve("seed/tpe-mnist")
    space = spec.tune.space
    assert space["model.hidden.2"].when == {"model.depth": 3}
    assert space["model.dropout.2"].when == {"model.depth": 3}
    assert space["model.depth"].choices == [2, 3]
    assert space["optimizer.name"].choices == ["rmsprop", "adam", "sgd"]
    assert space["data.batch_size"].int_ == [28, 128]
    assert spec.tune.sampler == "tpe" and spec.tune.trials == 50 and spec.train.epochs == 2


def test_grid_search_space_has_12_points():
    space = resolve("seed/grid-search").tune.space
    assert math.prod(len(e.choices) for e in space.values()) == 12


# --- property tests: merging and --set parsing --------------------------------------------------

toml_scalars = st.one_of(st.integers(-10**6, 10**6), st.booleans(), st.text("abcxyz", min_size=1, max_size=5),
                         st.floats(-1e6, 1e6, allow_nan=False).filter(lambda f: f != int(f)))


@settings(max_examples=80, deadline=None)
@given(key=st.sampled_from(["train.epochs", "optimizer.lr", "model.activation", "data.batch_size"]), value=toml_scalars)
def test_parse_set_roundtrips_toml_scalars(key, value):
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = value
    else:
        text = repr(value)
    parts, parsed = parse_set(f"{key}={text}")
    assert parts == key.split(".")
    assert parsed == value


nested = st.recursive(toml_scalars, lambda kids: st.dictionaries(st.sampled_from("abcd"), kids, max_size=3), max_leaves=8)


@settings(max_examples=80, deadline=None)
@given(a=st.dictionaries(st.sampled_from("abcd"), nested, max_size=4),
       b=st.dictionaries(st.sampled_from("abcd"), nested, max_size=4))
def test_merge_later_wins_and_keeps_earlier_keys(a, b):
    out = Composed()
    _merge(out.data, a, "a", out.origin)
    _merge(out.data, b, "b", out.origin)

    def check(merged, left, right):
        for k, v in right.items():
            if isinstance(v, dict) and isinstance(left.get(k), dict):
                check(merged[k], left[k], v)
            else:
                assert merged[k] == v
        for k, v in left.items():
            if k not in right:
                assert merged[k] == v

    check(out.data, a, b)


def test_every_problem_of_a_file_is_reported_one_line_each(tmp_path):
    path = write(tmp_path, "multi", "[model]\nactivation = 'foo'\nhiden = 3\n[train]\nepochs = 'x'\n")
    with pytest.raises(PresetError) as info:
        resolve(str(path))
    problems = info.value.problems
    assert len(problems) == 3 and info.value.message == problems[0]
    assert any("model.activation = 'foo'" in p for p in problems)
    assert any("did you mean 'hidden'" in p for p in problems)
    assert any("train.epochs = 'x'" in p for p in problems)
    assert all(str(path) in p and "\n" not in p for p in problems)
