"""Key bindings: one table of binding ids, their default keys and descriptions,
and the user's overrides from `<workspace>/keys.toml`.

One job: every binding in the app is made here (`bind`), so ids, keys and the
help screen's words never drift apart, and `keys.toml` can only name ids that
exist. Overrides are applied with Textual's own keymap (`App.set_keymap`),
which rebinds by id everywhere the id is used.

keys.toml:

    [keys]
    quit = "x"
    cancel = "ctrl+k"

A key given to an action that another action of the same screen (or of the
app) still uses is refused, and said so: Textual would silently take the key
from the other action, leaving it no key at all. A key that an app-wide action
and one screen's action share is kept (the screen's action wins there), and
said so too.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from textual.binding import Binding
from textual.keys import format_key

try:  # what App.set_keymap applies: "?" and "question_mark" are one key. Private in Textual, hence:
    from textual.keys import _normalize_key_list
except ImportError:  # pragma: no cover - a Textual without it: compare keys as written

    def _normalize_key_list(keys: str) -> str:
        return keys

KEYS_FILE = "keys.toml"

# id: (default keys, description). Ids are what keys.toml names.
ACTIONS: dict[str, tuple[str, str]] = {
    "show_runs": ("1", "Runs"),
    "show_presets": ("2", "Presets"),
    "show_queue": ("3", "Queue"),
    "show_studies": ("4", "Studies"),
    "help": ("question_mark", "Help"),
    "quit": ("q", "Quit"),
    "open": ("enter", "Open"),
    "queue": ("r", "Queue run"),
    "cancel": ("c", "Cancel run"),
    "resume": ("R", "Resume from its checkpoint"),
    "filter": ("slash", "Filter"),
    "back": ("escape", "Back"),
    "top": ("t", "Move to top"),
    "up": ("plus", "Move up"),
    "down": ("minus", "Move down"),
    "priority": ("p", "Set priority"),
    "clear": ("x", "Clear queue"),
    "compose": ("n", "New from this"),
    "save": ("ctrl+s", "Save preset"),
    "tune": ("t", "Start a study (tune a preset)"),
    "sort": ("s", "Sort by next column"),
    "reverse": ("S", "Reverse sort"),
    "next_page": ("right_square_bracket", "Next page"),
    "prev_page": ("left_square_bracket", "Previous page"),
    "view": ("v", "Next view"),
    "yes": ("y", "Yes"),
    "no": ("n", "No"),
    "mark": ("space", "Mark for compare"),
    "compare": ("C", "Compare marked"),
    "metric": ("m", "Next metric"),
    "smooth": ("e", "EMA smoothing"),
    "log_y": ("l", "Log y axis"),
    "open_storage": ("o", "Open an Optuna storage"),
}


def bind(binding_id: str, action: str | None = None, *, show: bool = True, priority: bool = False,
         description: str | None = None, short: str | None = None, group: Binding.Group | None = None) -> Binding:
    """The binding with id `binding_id`, its default key and description from ACTIONS.

    `short` is the footer's word for it where the footer is crowded (80 columns
    hold about seven keys); the full description then rides in the tooltip,
    which the help screen and the command palette show (`described`). `group`
    shows related keys once in the footer ("[] Page").
    """
    keys, text = ACTIONS[binding_id]
    text = description or text
    return Binding(keys, action or binding_id, short or text, show=show, priority=priority, id=binding_id,
                   tooltip=text if short else "", group=group)


def described(binding: Binding) -> str:
    """What the help screen and the palette call a binding: its full description, not the footer's short word."""
    return binding.tooltip or binding.description


def load_keymap(workspace_root: Path) -> tuple[dict[str, str], list[str]]:
    """The overrides in `keys.toml` ({binding id: keys}) and one line per problem found."""
    path = Path(workspace_root) / KEYS_FILE
    if not path.exists():
        return {}, []
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        return {}, [f"{path}: cannot read: {exc}"]
    except tomllib.TOMLDecodeError as exc:
        return {}, [f"{path}: TOML syntax error: {exc}"]
    table = data.get("keys", {})
    problems = [f"{path}: unknown section {k!r}; allowed: [keys]" for k in data if k != "keys"]
    if not isinstance(table, dict):
        return {}, [*problems, f"{path}: keys must be a table ([keys])"]
    keymap: dict[str, str] = {}
    for name, keys in table.items():
        if name not in ACTIONS:
            problems.append(f"{path}: unknown action {name!r}; allowed: {', '.join(ACTIONS)}")
        elif not isinstance(keys, str) or not keys.strip() or any(not k.strip() for k in keys.split(",")):
            problems.append(f"{path}: {name} = {keys!r}: give keys as a string, e.g. \"x\" or \"ctrl+k,f5\"")
        else:
            keymap[name] = keys.strip()
    return keymap, problems


@dataclass(frozen=True)
class Place:
    """One set of bindings Textual keeps together (a screen's or the app's): keys must not repeat in it."""

    name: str
    """How a person knows it: "everywhere", "the Queue view"."""
    ids: frozenset[str]
    """The binding ids declared there."""
    under_app: bool = True
    """The app-wide bindings apply here too (False for a modal dialog)."""


def _keys(binding_id: str, keymap: Mapping[str, str]) -> list[str]:
    return _normalize_key_list(keymap.get(binding_id, ACTIONS[binding_id][0])).split(",")


def _described(binding_id: str) -> str:
    return f"{binding_id} ({ACTIONS[binding_id][1]})"


def check_clashes(keymap: Mapping[str, str], app: Place, places: Iterable[Place],
                  path: Path | str = KEYS_FILE) -> tuple[dict[str, str], list[str]]:
    """`keymap` less the entries that would take a key from another action, and one line per clash.

    Within one place, a key the user gave to an action that another action
    there still has is refused (the entry is dropped whole, so the action
    keeps its default key); when both were set in keys.toml, the later one is
    refused. A key shared by an app-wide action and a screen's action is kept
    and reported: on that screen, the screen's action wins.
    """
    places = list(places)
    kept = dict(keymap)
    problems: list[str] = []
    # A refused entry falls back to its default key, which may clash in turn: look again until none does.
    while (clash := _first_clash(app, places, kept)) is not None:
        place, key, victim, holder = clash
        where = "everywhere" if place is app else f"on {place.name}"
        shown, default = format_key(key), format_key(ACTIONS[victim][0])
        problems.append(f"{path}: {victim} = {keymap[victim]!r} not applied: {shown!r} is already "
                        f"{_described(holder)} {where}, and one key cannot do both. {victim} keeps {default!r}; "
                        f"to use {shown!r} for it, give {holder} another key too.")
        del kept[victim]
    shadows: dict[tuple[str, str, str], list[str]] = {}
    for place in places:
        if not place.under_app:
            continue
        for screen_id in sorted(place.ids - app.ids):
            for app_id in sorted(app.ids):
                if screen_id not in kept and app_id not in kept:
                    continue
                for key in set(_keys(screen_id, kept)) & set(_keys(app_id, kept)):
                    shadows.setdefault((key, app_id, screen_id), []).append(place.name)
    for (key, app_id, screen_id), names in shadows.items():
        problems.append(f"{path}: {format_key(key)!r} is {_described(app_id)} everywhere and "
                        f"{_described(screen_id)} on {' and '.join(names)}; there it does {screen_id}.")
    return kept, problems


def _first_clash(app: Place, places: list[Place], keymap: Mapping[str, str]) -> tuple[Place, str, str, str] | None:
    """(place, key, id to refuse, id that keeps the key) for the first key two ids of one place share.

    Two defaults never clash (as shipped); of two ids set in keys.toml, the later one is refused.
    """
    order = list(keymap)
    for place in (app, *places):
        seen: dict[str, str] = {}
        for binding_id in sorted(place.ids):
            for key in _keys(binding_id, keymap):
                other = seen.setdefault(key, binding_id)
                if other == binding_id or (other not in keymap and binding_id not in keymap):
                    continue
                victim = max((i for i in (other, binding_id) if i in keymap), key=order.index)
                return place, key, victim, other if victim == binding_id else binding_id
    return None
