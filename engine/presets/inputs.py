"""What can be checked about a run's own model and data when it is queued, without running them.

One job: look at the files a resolved RunSpec names (an .npz, an image folder,
the module of a python factory, torchvision's list of models) and say, in one
line naming the preset, the key and what is allowed, what would make the run
fail later. Called at enqueue (runtime.control, `trialdeck train`) and by the
TUI's composer on every change.

Invariants:
- Nothing of the user's is executed: a factory's module is found the way the
  import system would find it (importlib's PathFinder over the run's folder)
  and its source is parsed with `ast`, never imported; an .npz's arrays are
  known from their headers (zip member + `.npy` header), never loaded or
  unpickled; torchvision's classification models are read from its source
  files, so this module imports neither torch nor torchvision (an enqueue
  stays fast).
- Paths are the absolute ones `loader.resolve` made of the preset's.
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib.machinery
import importlib.util
import zipfile
from pathlib import Path
from typing import Any

from trialdeck.engine.errors import PresetError
from trialdeck.engine.presets.schema import TENSORBOARD_INSTALL, RunSpec

__all__ = ["ArrayInfo", "check_inputs", "factory_source", "input_problems", "npz_arrays", "torchvision_archs"]

ArrayInfo = tuple[tuple[int, ...], str]
"""An array's (shape, dtype string) as its `.npy` header states them."""


def check_inputs(spec: RunSpec) -> None:
    """Raise PresetError (exit 2) with the first problem `input_problems` finds."""
    problems = input_problems(spec)
    if problems:
        raise PresetError(problems[0], problems)


def input_problems(spec: RunSpec) -> list[str]:
    """Every problem with the run's own data and model, one line each ([] when none, or when
    the run uses neither)."""
    name = spec.preset or "preset"
    if spec.script is not None:
        return [f"{name}: {p}" for p in _script_problems(spec)]
    try:
        out = [f"{name}: {p}" for p in _data_problems(spec)]
        out += [f"{name}: {p}" for p in _model_problems(spec)]
    except OSError as exc:  # a folder we may not read (another user's home): said, not a traceback
        return [f"{name}: {exc.filename or ''}: {exc.strerror or exc}"]
    return out


# -- script ----------------------------------------------------------------------------------


def _script_problems(spec: RunSpec) -> list[str]:
    """A script's program not found on the queuing shell's PATH, a capture that needs an extra."""
    assert spec.script is not None
    out = []
    program = spec.script.command[0]
    if "/" not in program and "{" not in program and not spec.script.program:
        out.append(f"script.command: {program!r} is not on your PATH (the program is looked up where you queue the "
                   "run); activate its environment, or give its full path")
    if spec.script.capture.tensorboard and importlib.util.find_spec("tensorboard") is None:
        out.append(f"script.capture.tensorboard needs TensorBoard's event-file reader, an optional extra: "
                   f"{TENSORBOARD_INSTALL}")
    return out


# -- data ----------------------------------------------------------------------------------


def _data_problems(spec: RunSpec) -> list[str]:
    d = spec.data
    if d.dataset == "arrays":
        return _arrays_problems(spec)
    if d.dataset == "imagefolder":
        return _folder_problems(Path(str(d.path)))
    return []


def npz_arrays(path: Path) -> dict[str, ArrayInfo]:
    """The arrays of an .npz file and their (shape, dtype), from the headers alone.

    Raises ValueError with the reason when it is not a readable .npz."""
    import numpy as np

    out: dict[str, ArrayInfo] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if not member.endswith(".npy"):
                    continue
                with archive.open(member) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                    elif version == (2, 0):
                        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                    else:  # a rare header version: read the array itself (still without pickles)
                        arr = np.load(path, allow_pickle=False)[member[:-4]]
                        shape, dtype = arr.shape, arr.dtype
                out[member[:-4]] = (tuple(int(n) for n in shape), dtype.str if dtype.kind != "O" else "object")
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise ValueError(f"not a readable .npz file ({exc})") from None
    return out


def _arrays_problems(spec: RunSpec) -> list[str]:
    path = Path(str(spec.data.path))
    key = f"data.path = {str(path)!r}"
    if not path.exists():
        return [f"{key}: no such file (relative paths are taken from the folder the run is queued from; "
                "`trialdeck data export digits --format npz DIR` writes an example)"]
    if not path.is_file():
        return [f"{key}: not a file; dataset = \"arrays\" reads an .npz with arrays x and y"]
    try:
        arrays = npz_arrays(path)
    except ValueError as exc:
        return [f"{key}: {exc}; save it with numpy.savez(path, x=..., y=...)"]
    problems = []
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        has = ", ".join(sorted(arrays)) or "no arrays"
        return [f"{key}: the file has no {' and no '.join(missing)} (it has {has}); "
                "allowed: x, y and optionally x_val, y_val"]
    if ("x_val" in arrays) != ("y_val" in arrays):
        given, lacking = ("x_val", "y_val") if "x_val" in arrays else ("y_val", "x_val")
        problems.append(f"{key}: the file has {given} but no {lacking}; give both, or neither "
                        "(then data.val_fraction splits x, y)")
    for x_name, y_name in (("x", "y"), ("x_val", "y_val")):
        if x_name not in arrays or y_name not in arrays:
            continue
        (x_shape, x_dtype), (y_shape, y_dtype) = arrays[x_name], arrays[y_name]
        for arr, dtype in ((x_name, x_dtype), (y_name, y_dtype)):
            if dtype == "object" or dtype[1] not in "biuf":
                problems.append(f"{key}: {arr} holds {dtype} values; allowed: numbers (saved without pickles)")
        if len(x_shape) < 2:
            problems.append(f"{key}: {x_name} has shape {x_shape}; allowed: (N, features...) with one row per sample")
        elif not y_shape or x_shape[0] != y_shape[0]:
            problems.append(f"{key}: {x_name} has {x_shape[0]} rows but {y_name} has shape {y_shape}; "
                            "one target per row")
        if y_dtype[1:2] in ("b", "i", "u") and len(y_shape) != 1:
            problems.append(f"{key}: {y_name} holds class labels of shape {y_shape}; allowed: (N,) integers, "
                            "or floats for regression targets")
    if problems:
        return problems
    if "x_val" in arrays and arrays["x_val"][0][1:] != arrays["x"][0][1:]:
        problems.append(f"{key}: x_val samples have shape {arrays['x_val'][0][1:]} but x samples "
                        f"{arrays['x'][0][1:]}")
    regression = arrays["y"][1][1] == "f"
    if "y_val" in arrays and (arrays["y_val"][1][1] == "f") != regression:
        problems.append(f"{key}: y and y_val differ in kind (integers are classes, floats regression targets)")
    sample = arrays["x"][0][1:]
    if spec.model.kind in ("cnn", "torchvision") and (len(sample) != 3 or
                                                     (spec.model.kind == "torchvision" and sample[0] not in (1, 3))):
        problems.append(f'model.kind = "{spec.model.kind}" needs images (N, C, H, W)'
                        + (" of 1 or 3 channels" if spec.model.kind == "torchvision" else "")
                        + f'; {key} has x of shape {arrays["x"][0]}; use kind = "mlp", or your own model')
    if spec.augment.active and len(sample) != 3:
        problems.append(f"[augment] needs images (N, C, H, W); {key} has x of shape {arrays['x'][0]}")
    wrong = "val_acc" if regression else "val_mae"
    for loc, value in spec._metric_uses():
        if value == wrong:
            kind = "float y: a regression, which records val_mae" if regression else \
                "integer y: classes, which record val_acc"
            problems.append(f"{'.'.join(loc)} = {value!r}: {key} has {kind}")
    return problems


def _folder_problems(path: Path) -> list[str]:
    key = f"data.path = {str(path)!r}"
    if not path.exists():
        return [f"{key}: no such folder (relative paths are taken from the folder the run is queued from; "
                "`trialdeck data export digits --format imagefolder DIR` writes an example)"]
    if not path.is_dir():
        return [f"{key}: not a folder; dataset = \"imagefolder\" reads DIR/<class>/*.png "
                "(or DIR/train/<class>/... with DIR/val/<class>/...)"]
    train, val = path / "train", path / "val"
    roots = [train, val] if train.is_dir() and val.is_dir() else [path]
    for root in roots:
        if not any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir()):
            return [f"{key}: {root} has no class folders; allowed: DIR/<class>/*.png, "
                    "or DIR/train/<class>/... with DIR/val/<class>/..."]
    return []


# -- model ---------------------------------------------------------------------------------


def _model_problems(spec: RunSpec) -> list[str]:
    m = spec.model
    if m.kind == "torchvision":
        archs = torchvision_archs()
        if not archs:
            return ['model.kind = "torchvision": torchvision is not installed here (pip install torchvision)']
        if m.arch not in archs:
            hint = difflib.get_close_matches(str(m.arch), archs, n=1)
            tip = f"; did you mean {hint[0]!r}?" if hint else f"; allowed: {', '.join(archs[:8])}, ... ({len(archs)} in all)"
            return [f"model.arch = {m.arch!r} is not a torchvision.models classification model{tip}"]
        return []
    if m.kind == "python":
        try:
            factory_source(str(m.factory), Path(str(m.path)))
        except ValueError as exc:
            return [str(exc)]
    return []


@functools.cache
def torchvision_archs() -> tuple[str, ...]:
    """Names of torchvision.models' classification models (what `list_models(module=
    torchvision.models)` gives), read from the `@register_model` functions of its top-level
    source files: importing torchvision would cost an enqueue seconds. () when not installed."""
    spec = importlib.util.find_spec("torchvision")  # a top-level name: found, not imported
    if spec is None or not spec.submodule_search_locations:
        return ()
    folder = Path(list(spec.submodule_search_locations)[0]) / "models"
    names: list[str] = []
    for file in sorted(folder.glob("*.py")):
        try:
            tree = ast.parse(file.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError):
            continue
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef):
                continue
            for deco in node.decorator_list:
                if isinstance(deco, ast.Call) and getattr(deco.func, "id", None) == "register_model":
                    named = [k.value.value for k in deco.keywords
                             if k.arg == "name" and isinstance(k.value, ast.Constant)]
                    names.append(str(named[0]) if named else node.name)
    return tuple(sorted(names))


def factory_source(factory: str, root: Path) -> Path:
    """The source file of `factory`'s module as an import from `root` would find it, with the
    function defined at its top level. Raises ValueError with a one-line reason. Finds, never
    imports: a package's __init__ is not run (each part is looked up with PathFinder)."""
    module, _, function = factory.partition(":")
    key = f"model.factory = {factory!r}"
    if not root.is_dir():
        return _raise(f"model.path = {str(root)!r}: no such folder (the factory's module is imported from it)")
    parts = module.split(".")
    search = [str(root)]
    spec = None
    for i in range(len(parts)):
        name = ".".join(parts[: i + 1])
        spec = importlib.machinery.PathFinder.find_spec(name, search)
        if spec is None:
            where = root.joinpath(*parts[:i])
            return _raise(f"{key}: no module {name} in {root} (looked for {where / parts[i]}.py and "
                          f"{where / parts[i]}/); it is imported from model.path, else the folder the run is queued from")
        if i < len(parts) - 1:
            if not spec.submodule_search_locations:
                return _raise(f"{key}: {spec.origin} is a module, not a package holding {parts[i + 1]}")
            search = list(spec.submodule_search_locations)
    assert spec is not None
    origin = Path(spec.origin) if spec.origin else None
    if origin is None or origin.suffix != ".py":
        return origin or root  # a namespace package or compiled module: found, nothing to parse
    try:
        tree = ast.parse(origin.read_bytes(), filename=str(origin))
    except SyntaxError as exc:
        return _raise(f"{key}: {origin}:{exc.lineno}: syntax error: {exc.msg}")
    defined = _top_level_names(tree)
    if defined is not None and function not in defined:
        hint = difflib.get_close_matches(function, sorted(defined), n=1)
        tip = f"; did you mean {hint[0]!r}?" if hint else (f"; it defines {', '.join(sorted(defined)[:8])}"
                                                          if defined else "")
        return _raise(f"{key}: {origin} defines no {function!r}{tip}")
    return origin


def _top_level_names(tree: ast.Module) -> set[str] | None:
    """Names a module binds at its top level; None when it may bind others dynamically
    (`from x import *`, a module __getattr__)."""
    names: set[str] = set()
    for node in _top_statements(tree.body):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    return None
                names.add(alias.asname or alias.name.split(".")[0])
    return None if "__getattr__" in names else names


def _top_statements(body: list[ast.stmt]) -> list[Any]:
    """Top-level statements, including those inside if/try/with blocks at the top level."""
    out: list[Any] = []
    for node in body:
        out.append(node)
        if isinstance(node, (ast.If, ast.Try, ast.With, ast.ExceptHandler)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                out += _top_statements(getattr(node, field, None) or [])
    return out


def _raise(message: str) -> Any:
    raise ValueError(message)
