"""Find, read, compose and validate presets into a RunSpec.

A preset is a TOML file named by its path under a preset root without `.toml`
(`seed/step-decay`) or given as a file path. Roots, in order: the workspace's
`presets/` folder, then the built-in `experiments/` catalogue. `extends` is
composed left to right, then the file itself wins; `--set` overrides last.
Every failure is a PresetError with one line naming the file and the key.
Nothing from a preset is executed: it is TOML data validated by pydantic.
"""

from __future__ import annotations

import copy
import difflib
import importlib.resources
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from trialdeck.engine.errors import PresetError
from trialdeck.engine.presets.schema import SECTIONS, TOP_LEVEL_KEYS, RunSpec

# The built-in catalogue is package data of trialdeck.experiments, wherever trialdeck is installed.
BUILTIN_ROOT = Path(str(importlib.resources.files("trialdeck.experiments")))
SET_SOURCE = "--set"


def preset_roots(workspace_presets: Path | None = None) -> list[Path]:
    roots = []
    if workspace_presets is not None:
        roots.append(Path(workspace_presets))
    roots.append(BUILTIN_ROOT)
    return roots


def check_name(name: str, what: str = "preset") -> str:
    """Reject names that could escape a root: absolute paths, `..`, backslashes, empty parts."""
    parts = name.split("/")
    if not name or name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts):
        raise PresetError(f"{what} name {name!r}: use a relative name like seed/step-decay (no '..', no leading '/')")
    if any(not (c.isalnum() or c in "-_./") for c in name):
        raise PresetError(f"{what} name {name!r}: only letters, digits, '-', '_', '.' and '/' are allowed")
    return name


def list_presets(roots: list[Path]) -> list[tuple[str, Path]]:
    """Every preset under the roots as (name, path); an earlier root shadows a later one."""
    seen: dict[str, Path] = {}
    for root in roots:
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*.toml")):
            name = path.relative_to(root).with_suffix("").as_posix()
            seen.setdefault(name, path)
    return sorted(seen.items())


def find_preset(ref: str, roots: list[Path]) -> tuple[str, Path]:
    """Resolve a preset reference to (name, path): an existing .toml path, or a name under a root."""
    if ref.endswith(".toml"):
        path = Path(ref).expanduser()
        if not path.is_file():
            raise PresetError(f"{ref}: no such preset file")
        for root in roots:
            try:
                return path.resolve().relative_to(root.resolve()).with_suffix("").as_posix(), path
            except ValueError:
                continue
        return path.stem, path
    check_name(ref)
    for root in roots:
        path = root / f"{ref}.toml"
        if path.is_file():
            return ref, path
    known = [name for name, _ in list_presets(roots)]
    hint = difflib.get_close_matches(ref, known, n=1)
    suggestion = f"; did you mean {hint[0]!r}?" if hint else "; see `trialdeck presets list`"
    raise PresetError(f"preset {ref!r} not found in {', '.join(str(r) for r in roots)}{suggestion}")


def read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PresetError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise PresetError(f"{path}: not a UTF-8 text file") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PresetError(f"{path}: TOML syntax error: {exc}") from None


@dataclass
class Composed:
    """A raw composed preset plus where each leaf key came from."""

    data: dict[str, Any] = field(default_factory=dict)
    origin: dict[tuple[str, ...], str] = field(default_factory=dict)
    chain: list[str] = field(default_factory=list)

    def source_of(self, loc: tuple[str | int, ...]) -> str:
        path = tuple(str(p) for p in loc)
        # A --set below this key made it (`tune.space.x.low=1` creates `tune.space.x`).
        below = [src for key, src in self.origin.items() if len(key) > len(path) and key[: len(path)] == path]
        if below:
            return below[-1]
        while path:
            if path in self.origin:
                return self.origin[path]
            path = path[:-1]
        return self.chain[-1] if self.chain else "preset"


def _merge(dst: dict, src: dict, source: str, origin: dict, prefix: tuple[str, ...] = ()) -> None:
    """Deep-merge src into dst: tables merge key by key, every other value replaces.
    A search-space entry (`tune.space."key"`) is replaced whole, never merged field by field."""
    for key, value in src.items():
        path = (*prefix, key)
        whole_entry = path[:2] == ("tune", "space") and len(path) == 3
        if isinstance(value, dict) and isinstance(dst.get(key), dict) and not whole_entry:
            _merge(dst[key], value, source, origin, path)
        else:
            dst[key] = copy.deepcopy(value)
            if source:
                origin[path] = source
                _mark(value, source, origin, path)


def _mark(value: Any, source: str, origin: dict, path: tuple[str, ...]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            origin[(*path, k)] = source
            _mark(v, source, origin, (*path, k))


def compose(ref: str, roots: list[Path], _stack: tuple[str, ...] = ()) -> Composed:
    name, path = find_preset(ref, roots)
    key = str(path.resolve())
    if key in _stack:
        cycle = " -> ".join([*(_display(p) for p in _stack[_stack.index(key):]), str(path)])
        raise PresetError(f"{path}: extends: cycle {cycle}")
    raw = read_toml(path)
    _check_top_level(raw, path)
    parents = raw.get("extends", [])
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise PresetError(f"{path}: extends: must be a preset name or a list of names, got {parents!r}")
    out = Composed()
    # A file outside every root may extend its neighbours by name, too.
    parent_roots = roots if any(_inside(path, r) for r in roots) else [*roots, path.parent]
    for parent in parents:
        try:
            sub = compose(parent, parent_roots, (*_stack, key))
        except PresetError as exc:
            if "cycle" in exc.message or str(path) in exc.message:
                raise
            raise PresetError(f"{path}: extends: {exc.message}") from None
        _merge(out.data, sub.data, "", out.origin)
        out.origin.update(sub.origin)
        out.chain.extend(c for c in sub.chain if c not in out.chain)
    own = {k: v for k, v in raw.items() if k != "extends"}
    _merge(out.data, own, str(path), out.origin)
    out.chain.append(str(path))
    out.data["preset"] = name
    return out


def _display(key: str) -> str:
    return key


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def _check_top_level(raw: dict[str, Any], path: Path) -> None:
    for key, value in raw.items():
        if key not in TOP_LEVEL_KEYS:
            raise PresetError(f"{path}: unknown section or key {key!r}{_suggest(key, TOP_LEVEL_KEYS)}")
        if (key in SECTIONS or key == "params") and not isinstance(value, dict):
            raise PresetError(f"{path}: {key}: must be a table ([{key}]), got {value!r}")
    if "description" in raw and not isinstance(raw["description"], str):
        raise PresetError(f"{path}: description: must be a string")


def _suggest(word: str, options) -> str:
    hint = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    allowed = ", ".join(options)
    return f"; did you mean {hint[0]!r}?" if hint else f"; allowed: {allowed}" if allowed else ""


def parse_set(item: str) -> tuple[list[str], Any]:
    """Parse `KEY=VALUE`: a dotted key (list elements by index) and a TOML value.
    A value that is not valid TOML is taken as a bare string, so `optimizer.name=sgd` works."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise PresetError(f"--set {item}: expected KEY=VALUE, for example --set train.epochs=5")
    parts = key.split(".")
    if any(not p for p in parts):
        raise PresetError(f"--set {item}: malformed key {key!r}")
    text = value.strip()
    try:
        parsed = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        if any(c in text for c in "[]{}\"'=") or not text:
            raise PresetError(f"--set {key}: {text!r} is not a TOML value (strings with spaces need quotes)") from None
        parsed = text
    return parts, parsed


def apply_set(composed: Composed, items: list[str]) -> None:
    for item in items:
        parts, value = parse_set(item)
        apply_override(composed, parts, value, f"{SET_SOURCE} {item.partition('=')[0].strip()}")


def apply_override(composed: Composed, parts: list[str], value: Any, source: str) -> None:
    """Set one dotted key on a composed preset; integers index into lists (`model.hidden.2`)."""
    dotted = ".".join(parts)
    head = parts[0]
    if head not in TOP_LEVEL_KEYS:
        raise PresetError(f"{source}: unknown section {head!r}{_suggest(head, TOP_LEVEL_KEYS)}")
    if head in SECTIONS and len(parts) == 1 and not isinstance(value, dict):
        raise PresetError(f"{source}: {head} is a section; set one of its keys, like {head}.<key>=VALUE")
    if head in SECTIONS and head != "tune" and len(parts) >= 2:
        fields = SECTIONS[head].model_fields
        if parts[1] not in fields:
            raise PresetError(
                f"{source}: unknown key {parts[1]!r} in [{head}]{_suggest(parts[1], list(fields))}"
            )
    node: Any = composed.data
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list):
            node = _list_slot(node, part, dotted, source)
            continue
        if part not in node or not isinstance(node[part], (dict, list)):
            if isinstance(node.get(part), (int, float, str, bool)) or nxt.isdigit():
                current = node.get(part, _default_of(parts[: i + 1]))
                if isinstance(current, list) and nxt.isdigit():
                    node[part] = list(current)
                elif isinstance(current, dict):
                    node[part] = dict(current)
                else:
                    raise PresetError(f"{source}: {'.'.join(parts[:i + 1])} is a {type(current).__name__}, not a table or list")
            else:
                default = _default_of(parts[: i + 1])
                node[part] = dict(default) if isinstance(default, dict) else {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        index = _index(last, node, dotted, source)
        node[index] = value
    else:
        node[last] = value
    composed.origin[tuple(parts)] = source
    _mark(value, source, composed.origin, tuple(parts))


def _default_of(parts: list[str]) -> Any:
    """The schema default at a dotted path, so `--set model.hidden.1=64` edits the default list."""
    node: Any = RunSpec().model_dump(mode="json", by_alias=True)
    for p in parts:
        if isinstance(node, dict) and p in node:
            node = node[p]
        elif isinstance(node, list) and p.isdigit() and int(p) < len(node):
            node = node[int(p)]
        else:
            return None
    return copy.deepcopy(node)


def _index(part: str, seq: list, dotted: str, source: str) -> int:
    if not part.isdigit():
        raise PresetError(f"{source}: {dotted}: {part!r} is not a list index")
    index = int(part)
    if index >= len(seq):
        raise PresetError(f"{source}: {dotted}: index {index} is past the end (the list has {len(seq)} entries)")
    return index


def _list_slot(seq: list, part: str, dotted: str, source: str) -> Any:
    return seq[_index(part, seq, dotted, source)]


def validate(composed: Composed) -> RunSpec:
    try:
        return RunSpec.model_validate(composed.data)
    except ValidationError as exc:
        problems = list(dict.fromkeys(_explain(err, composed) + _list_hint(err, composed)
                                      for err in exc.errors(include_url=False)))
        raise PresetError(problems[0], problems) from None


def _explain(err: Mapping[str, Any], composed: Composed) -> str:
    """One validation error as one plain line: file, key, bad value, what is allowed."""
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in _UNION_TAGS))
    source = composed.source_of(loc)
    key = ".".join(str(p) for p in loc) or "(top level)"
    kind = err["type"]
    value = err.get("input")
    if kind == "extra_forbidden":
        section = loc[0] if len(loc) > 1 else None
        options = _fields_at(loc[:-1])
        where = f" in [{'.'.join(str(p) for p in loc[:-1])}]" if section else ""
        return f"{source}: unknown key {loc[-1]!r}{where}{_suggest(str(loc[-1]), options)}"
    msg = err["msg"]
    if kind.startswith("literal_error"):
        expected = err.get("ctx", {}).get("expected", "")
        hint = difflib.get_close_matches(str(value), [s.strip("' ") for s in expected.replace(" or ", ",").split(",")], n=1)
        tip = f"; did you mean {hint[0]!r}?" if hint else ""
        return f"{source}: {key} = {value!r} is not allowed; allowed: {expected}{tip}"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if not loc:
        return f"{source}: {msg}"
    if kind in ("value_error", "assertion_error") or isinstance(value, dict):
        return f"{source}: {key}: {msg}"
    return f"{source}: {key} = {value!r}: {msg}"


def _list_hint(err: Mapping[str, Any], composed: Composed) -> str:
    """`--set model.hidden=512,512` reaches the schema as the string '512,512' (not TOML):
    name the list form that was meant."""
    value = err.get("input")
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in _UNION_TAGS))
    source = composed.source_of(loc)
    if not (source.startswith(SET_SOURCE) and isinstance(value, str) and "," in value and _takes_list(loc)):
        return ""
    items = []
    for part in (p.strip() for p in value.split(",")):
        try:
            tomllib.loads(f"v = {part}")
            items.append(part)
        except tomllib.TOMLDecodeError:
            items.append(f'"{part}"')
    return f"; a list is written in TOML brackets: --set '{source[len(SET_SOURCE):].strip()}=[{', '.join(items)}]'"


def _takes_list(loc: tuple) -> bool:
    """Whether the schema admits a list at `loc` (model.hidden, model.dropout)."""
    model: Any = RunSpec
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            break
        model = fields[part].annotation
    return "list" in str(model)


_UNION_TAGS = {"list[constrained-float]", "constrained-float", "function-after[_check(), SpaceEntry]"}


def _fields_at(loc: tuple) -> list[str]:
    model: Any = RunSpec
    for part in loc:
        if typing.get_origin(model) is dict:  # a table of named entries (tune.space): `part` is a name
            model = typing.get_args(model)[1]
            continue
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return []
        model = fields[part].annotation
        if not hasattr(model, "model_fields") and typing.get_origin(model) is not dict:
            model = getattr(model, "__args__", (model,))[0]
    fields = getattr(model, "model_fields", {})
    return [f.alias or name for name, f in fields.items()]


def resolve(ref: str, sets: list[str] | None = None, roots: list[Path] | None = None) -> RunSpec:
    """Preset reference + `--set` items -> validated, frozen RunSpec."""
    composed = compose(ref, roots or preset_roots())
    apply_set(composed, sets or [])
    resolve_workdir(composed)
    return validate(composed)


def resolve_workdir(composed: Composed, cwd: Path | None = None) -> None:
    """Make a script's `workdir` absolute, so the run (and every trial of a study) starts in the
    same folder whoever dispatches it: relative to the folder of the preset file that set it, or
    to `cwd` (the folder the run is queued from) for `--set` and when it is not set at all.
    Also makes `data.path` and a python model's `model.path` absolute (see `_resolve_own_paths`)."""
    here = Path(cwd) if cwd is not None else Path.cwd()
    _resolve_own_paths(composed, here)
    script = composed.data.get("script")
    if not isinstance(script, dict):
        return
    _resolve_program(script)
    value = script.get("workdir")
    if value is None:
        script["workdir"] = str(here)
        return
    if not isinstance(value, str):
        return  # the schema says what is wrong with it
    source = composed.source_of(("script", "workdir"))
    # The real file's folder: an editable install's link tree (editable_mode=strict) links each
    # built-in preset file from experiments/, and a relative workdir means the folder beside it.
    base = Path(source).resolve().parent if source.endswith(".toml") else here
    path = (base / Path(value).expanduser()).resolve()
    if not path.is_dir():
        raise PresetError(f"{source}: script.workdir = {value!r}: the folder {path} does not exist")
    script["workdir"] = str(path)


def _resolve_program(script: dict[str, Any]) -> None:
    """A program named without a `/` (`python`, `torchrun`) means what it means in the shell that
    queues the run (its activated environment), not on the engine's PATH: record where this
    process's PATH finds it (`script.program`). Not found: left unset, and the enqueue check
    (presets.inputs) says so."""
    command = script.get("command")
    if not isinstance(command, list) or not command or not isinstance(command[0], str):
        return
    program = command[0]
    if "/" in program or not program.strip() or "{" in program:
        script.pop("program", None)  # a path, or a placeholder: nothing to look up
        return
    import shutil

    found = shutil.which(program)
    if found:
        script["program"] = os.path.abspath(found)
    else:
        script.pop("program", None)


def _resolve_own_paths(composed: Composed, here: Path) -> None:
    """`data.path` and `model.path` relative to `here`, the run's workdir (the folder it is queued
    from), and a python model's unset `model.path` set to it: the config then says where the
    run reads its data and imports its model, whoever dispatches it (a trial, a rerun, another
    box's worker). Whether they exist is checked at enqueue (presets.inputs), not here."""
    data, model = composed.data.get("data"), composed.data.get("model")
    if isinstance(data, dict) and isinstance(data.get("path"), str) and data["path"]:
        data["path"] = str((here / Path(data["path"]).expanduser()).resolve())
    if isinstance(model, dict) and model.get("kind") == "python":
        value = model.get("path")
        if value is None:
            model["path"] = str(here.resolve())
        elif isinstance(value, str) and value:
            model["path"] = str((here / Path(value).expanduser()).resolve())


def resolve_data(data: dict[str, Any], source: str = "preset", sets: list[str] | None = None,
                 cwd: str | Path | None = None) -> RunSpec:
    """Validate an already-composed preset dict (a composer form, a stored config), with
    `--set` items applied first (`runs rerun RUN --set train.epochs=50`)."""
    composed = Composed(data=copy.deepcopy(data), chain=[source])
    apply_set(composed, sets or [])
    resolve_workdir(composed, Path(cwd) if cwd is not None else None)
    return validate(composed)


def resolve_script(file: str, args: list[str], sets: list[str] | None = None, cwd: Path | None = None) -> RunSpec:
    """`trialdeck run --script FILE -- ARGS`: a one-off script run, no preset file. A `.py`
    file runs with this Python (`sys.executable`, where trialdeck and its torch are installed)
    unless it is executable and starts with `#!`; any other file must be executable. It runs in
    `cwd` (the folder it is queued from); `sets` add params and early stopping as for a preset."""
    import os
    import sys

    here = Path(cwd) if cwd is not None else Path.cwd()
    path = (here / Path(file).expanduser()).resolve()
    if not path.is_file():
        raise PresetError(f"--script {file}: no such file")
    executable = os.access(path, os.X_OK)
    try:
        with open(path, "rb") as f:
            shebang = f.read(2) == b"#!"
    except OSError as exc:
        raise PresetError(f"--script {file}: {exc.strerror or exc}") from None
    if path.suffix == ".py" and not (executable and shebang):
        command = [sys.executable, str(path), *args]
    elif executable:
        command = [str(path), *args]
    else:
        raise PresetError(f"--script {file}: not executable; `chmod +x {file}`, or give a .py file "
                          f"(it runs with {sys.executable})")
    data = {"preset": f"script:{path.name}", "description": f"{file} {' '.join(args)}".strip(),
            "script": {"command": command, "workdir": str(here)}}
    composed = Composed(data=data, origin={("script",): "--script"}, chain=["--script"])
    _mark(data["script"], "--script", composed.origin, ("script",))
    apply_set(composed, sets or [])
    resolve_workdir(composed, here)
    return validate(composed)
