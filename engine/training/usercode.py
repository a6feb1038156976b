"""A user's model factory: imported from its folder for one run, and nothing of it kept after.

`model.kind = "python"` names `factory = "package.module:function"` and the
folder it lives in (`model.path`, made absolute when the preset is resolved:
the folder the run was queued from unless set). `build_from_factory` imports
it and calls `function(input_shape, num_classes, **args)`.

Invariants:
- Fresh every run: while a factory is imported, a finder placed first on
  `sys.meta_path` serves every module under the user's folder straight from
  its source (no __pycache__ read or written, so an edit made a moment ago,
  even one that keeps the file's size and mtime second, is what runs); when
  the import and the call are over, every module loaded from that folder
  leaves `sys.modules`. A warm worker holds none of a user's modules between
  runs, and trialdeck's own modules (imported as `trialdeck.*`) are never
  shadowed by a user's `engine.py` or `tui.py`, nor shadow them.
- `code_hash` identifies the code that ran: sha256 over each user module's
  path (relative to the folder) and source, in name order, 16 hex digits.
- Whatever goes wrong in the user's code becomes a `UserCodeError` whose
  message names the factory, the exception and the user's file and line.
- Only a run's own record (its config) is needed: a worker on another box can
  build the model from it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.abc
import importlib.machinery
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from trialdeck.engine.errors import TrialdeckError

if TYPE_CHECKING:
    from torch import nn

    from trialdeck.engine.presets.schema import ModelConfig


class UserCodeError(TrialdeckError):
    """A failure in, or of, a user's model code; the message is the whole reason."""


class _FreshLoader(importlib.machinery.SourceFileLoader):
    """Compiles the module from its source every time (never a cached .pyc) and tells the finder."""

    def __init__(self, fullname: str, path: str, finder: _UserFinder) -> None:
        super().__init__(fullname, path)
        self.finder = finder

    def get_code(self, fullname: str) -> Any:
        source = self.get_data(self.path)
        self.finder.sources[fullname] = (self.path, source)
        return compile(source, self.path, "exec", dont_inherit=True)


class _UserFinder(importlib.abc.MetaPathFinder):
    """Finds top-level modules in `root` first (as `python script.py` in that folder would), and
    the submodules of packages that live there; everything else falls through to the usual finders."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sources: dict[str, tuple[str, bytes]] = {}

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        search = [str(self.root)] if path is None else [p for p in path if _inside(Path(p), self.root)]
        if not search:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, search)
        if spec is None:
            return None
        if spec.origin and spec.origin.endswith(".py") and isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            spec.loader = _FreshLoader(fullname, spec.origin, self)
            spec.cached = None
        return spec

    def code_hash(self) -> str:
        digest = hashlib.sha256()
        for name in sorted(self.sources):
            path, source = self.sources[name]
            digest.update(Path(path).relative_to(self.root).as_posix().encode() + b"\0" + source + b"\0")
        return digest.hexdigest()[:16]


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
    except ValueError:
        return False
    return True


def _module_file(module: ModuleType) -> Path | None:
    file = getattr(module, "__file__", None)
    if file:
        return Path(file)
    paths = getattr(module, "__path__", None)  # a namespace package has no __file__
    return Path(list(paths)[0]) if paths else None


@contextlib.contextmanager
def user_modules(root: Path) -> Iterator[_UserFinder]:
    """Within: modules under `root` are imported fresh from their source. After: none of them
    is left in `sys.modules` (nor the finder on `sys.meta_path`)."""
    root = Path(root).resolve()
    finder = _UserFinder(root)
    before = set(sys.modules)
    sys.meta_path.insert(0, finder)
    importlib.invalidate_caches()  # a file added since the last run is seen
    try:
        yield finder
    finally:
        sys.meta_path.remove(finder)
        for name in [n for n in sys.modules if n not in before]:
            file = _module_file(sys.modules[name])
            if file is not None and _inside(file, root):
                del sys.modules[name]


def where(exc: BaseException, root: Path) -> str | None:
    """"file:line" of the innermost frame of `exc`'s traceback inside `root` (None: none is)."""
    root = Path(root).resolve()
    found = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if _inside(Path(frame.filename), root):
            found = f"{frame.filename}:{frame.lineno}"
    return found


def _say(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def blame(exc: BaseException, root: Path | None) -> BaseException:
    """`exc` as a UserCodeError naming the user's file and line when it was raised in their
    code under `root` (a model's forward at step 300); else `exc` itself."""
    if root is None or isinstance(exc, TrialdeckError):
        return exc
    at = where(exc, root)
    if at is None:
        return exc
    error = UserCodeError(f"{_say(exc)} (in your model's code at {at})")
    error.__cause__ = exc
    return error


def build_from_factory(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> tuple[nn.Module, str]:
    """The factory's model and the code hash of the modules it came from; UserCodeError with
    the reason when the module or function is missing, the call raises, or what it returns
    is not a torch.nn.Module."""
    from torch import nn  # deferred: the enqueue-side checks import this module's neighbours without torch

    factory = str(cfg.factory)
    module_name, _, function = factory.partition(":")
    root = Path(str(cfg.path)).resolve()
    what = f"model.factory {factory}"
    if not root.is_dir():
        raise UserCodeError(f"{what}: model.path {root} is not a folder")
    with user_modules(root) as finder:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name) and where(exc, root) is None:
                raise UserCodeError(f"{what}: no module {exc.name} in {root}") from exc
            raise UserCodeError(f"{what}: importing {module_name} raised {_say(exc)}{_at(exc, root)}") from exc
        except Exception as exc:  # noqa: BLE001 - any error in the user's module is their reason
            raise UserCodeError(f"{what}: importing {module_name} raised {_say(exc)}{_at(exc, root)}") from exc
        file = _module_file(module)
        if file is None or not _inside(file, root):
            raise UserCodeError(f"{what}: {module_name} is {file or 'a built-in module'}, not a module in {root}; "
                                "rename your module")
        fn = getattr(module, function, None)
        if not callable(fn):
            raise UserCodeError(f"{what}: {file} has no function {function!r}")
        try:
            model = fn(tuple(input_shape), int(num_classes), **(cfg.args or {}))
        except Exception as exc:  # noqa: BLE001 - any error in the user's factory is their reason
            at = _at(exc, root) or _defined_at(fn)
            raise UserCodeError(f"{what} raised {_say(exc)}{at}") from exc
        if not isinstance(model, nn.Module):
            raise UserCodeError(f"{what} returned {type(model).__name__}, not a torch.nn.Module{_defined_at(fn)}")
        return model, finder.code_hash()


def _at(exc: BaseException, root: Path) -> str:
    found = where(exc, root)
    return f" at {found}" if found else ""


def _defined_at(fn: Any) -> str:
    code = getattr(fn, "__code__", None)
    return f" (defined at {code.co_filename}:{code.co_firstlineno})" if code is not None else ""


def check_output(model: nn.Module, x: Any, expected: tuple[int, ...], what: str, root: Path | None = None) -> None:
    """Run `model` once on the batch `x` (eval mode, no gradients: no random number is drawn
    and no statistic updated) and raise UserCodeError unless it returns a tensor of shape
    `expected`; an error in its forward names the user's file and line (under `root`)."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # noqa: BLE001 - the reason goes to the run, with the user's line
        at = _at(exc, root) if root is not None else ""
        raise UserCodeError(f"{what}: the model's forward on a batch of shape {tuple(x.shape)} raised "
                            f"{_say(exc)}{at}") from exc
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise UserCodeError(f"{what} returned a model whose output is a {type(out).__name__}, expected a tensor of "
                            f"shape {expected}")
    if tuple(out.shape) != tuple(expected):
        raise UserCodeError(f"{what} returned shape {tuple(out.shape)}, expected {tuple(expected)}")
