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
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from textual.binding import Binding

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
    "filter": ("slash", "Filter"),
    "back": ("escape", "Back"),
    "top": ("t", "Move to top"),
    "up": ("plus", "Move up"),
    "down": ("minus", "Move down"),
    "priority": ("p", "Set priority"),
    "clear": ("x", "Clear queue"),
    "compose": ("n", "New from this"),
    "save": ("ctrl+s", "Save preset"),
    "sort": ("s", "Sort by next column"),
    "reverse": ("S", "Reverse sort"),
    "next_page": ("right_square_bracket", "Next page"),
    "prev_page": ("left_square_bracket", "Previous page"),
    "view": ("v", "Next view"),
    "yes": ("y", "Yes"),
    "no": ("n", "No"),
}


def bind(binding_id: str, action: str | None = None, *, show: bool = True, priority: bool = False,
         description: str | None = None) -> Binding:
    """The binding with id `binding_id`, its default key and description from ACTIONS."""
    keys, text = ACTIONS[binding_id]
    return Binding(keys, action or binding_id, description or text, show=show, priority=priority, id=binding_id)


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
