"""Where trialdeck keeps its state, and how files in it are written.

One job: name every path in the workspace and create it private to its user.

Invariants:
- Directories trialdeck creates are 0700 and files 0600, whatever the umask
  (modes are set explicitly after creation).
- Shared files are replaced atomically (`atomic_write`): a reader, or a
  process restarted after kill -9, sees either the old or the new content,
  never a half-written file.
- A run directory is always a direct child of `runs/`: ids are validated, so
  a crafted id cannot escape the workspace.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from trialdeck.engine.errors import BadInput, StorageError

__all__ = [
    "CHECKPOINT_NAME",
    "DIR_MODE",
    "FILE_MODE",
    "RUN_ID_RE",
    "Workspace",
    "atomic_write",
    "make_private_dir",
    "private_open",
]

DIR_MODE = 0o700
FILE_MODE = 0o600
CHECKPOINT_NAME = "checkpoint.pt"
RUN_ID_RE = re.compile(r"^r[0-9]+$")
HOME_ENV = "TRIALDECK_HOME"


def make_private_dir(path: Path) -> Path:
    """Create `path` (and missing parents), making what it creates 0700.

    An existing directory keeps its mode: it may be one the user chose on
    purpose (`--home .`), and we do not tighten what we did not create.
    """
    try:
        path.mkdir(mode=DIR_MODE, parents=False)
    except FileNotFoundError:
        if path.parent.is_dir() or path.parent == path:  # the parent is there, yet the folder cannot be made
            raise BadInput(f"cannot create the folder {path}: {path.parent} does not accept new folders") from None
        make_private_dir(path.parent)
        return make_private_dir(path)
    except FileExistsError:
        if not path.is_dir():
            raise BadInput(f"{path} exists and is not a directory; trialdeck needs it as a folder") from None
        return path
    except OSError as exc:  # read-only file system, permission denied, ...
        raise BadInput(f"cannot create the folder {path}: {exc.strerror or exc}") from None
    # mkdir's mode is masked by the umask; set it explicitly.
    os.chmod(path, DIR_MODE)
    return path


def private_open(path: str | os.PathLike[str], flags: int = os.O_WRONLY | os.O_CREAT | os.O_APPEND) -> int:
    """Open (creating if needed) a file readable only by its owner; returns an fd."""
    fd = os.open(path, flags | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except OSError:
        # Not ours to chmod (e.g. a file created by another user in a shared
        # folder): keep going with the mode it has rather than fail the write.
        pass
    return fd


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG}


def atomic_write(path: str | os.PathLike[str], data: bytes | bytearray | memoryview, *,
                 backup: str | os.PathLike[str] | None = None, durable: bool = True) -> None:
    """Replace `path` with `data` so no reader ever sees a partial file.

    Writes a 0600 temp file in the same directory, fsyncs it, `os.replace`s it
    over `path` and fsyncs the directory so the rename itself survives a crash.
    With `backup`, the file being replaced is first hard-linked there (cheap:
    no copy), so `backup` always holds the previous complete version.
    `durable=False` skips both fsyncs: for a file that can be made again from
    others (after a power cut it may be empty, never a mix of two versions).
    """
    path = Path(path)
    directory = path.parent
    tmp = directory / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    fd = private_open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        if backup is not None:
            _link_backup(path, Path(backup))
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS:
            raise StorageError(
                f"cannot write {path}: {os.strerror(exc.errno)}; the previous version is intact"
            ) from None
        raise
    if durable:
        _fsync_dir(directory)


def _link_backup(path: Path, backup: Path) -> None:
    """Make `backup` another name for the current `path` (if it exists)."""
    tmp = backup.parent / f".{backup.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        os.link(path, tmp)
    except FileNotFoundError:
        return
    except OSError:
        # Filesystems without hard links: fall back to a copy.
        with open(path, "rb") as src:
            content = src.read()
        fd = private_open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            os.write(fd, content)
            os.fsync(fd)
        finally:
            os.close(fd)
    os.replace(tmp, backup)


@dataclass(frozen=True)
class Workspace:
    """The folder holding all of trialdeck's state for one user."""

    root: Path

    @classmethod
    def resolve(cls, home: str | os.PathLike[str] | None = None) -> Workspace:
        """`home` if given, else `$TRIALDECK_HOME`, else `~/.trialdeck` (not created)."""
        if home is None or str(home) == "":
            home = os.environ.get(HOME_ENV) or "~/.trialdeck"
        return cls(Path(home).expanduser().absolute())

    def ensure(self) -> Workspace:
        """Create the workspace and its folders (0700) if missing; returns self."""
        make_private_dir(self.root)
        for sub in (self.presets_dir, self.data_dir, self.runs_dir, self.studies_dir):
            make_private_dir(sub)
        return self

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.json"

    @property
    def lock_path(self) -> Path:
        return self.root / "engine.lock"

    @property
    def pid_path(self) -> Path:
        return self.root / "engine.pid"

    @property
    def held_path(self) -> Path:
        """Present while the user keeps the engine stopped (`trialdeck engine stop`): reading
        commands then do not bring it back for the runs it left interrupted."""
        return self.root / "engine.stopped"

    @property
    def engine_log(self) -> Path:
        return self.root / "engine.log"

    @property
    def presets_dir(self) -> Path:
        return self.root / "presets"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def studies_dir(self) -> Path:
        return self.root / "studies"

    def checkpoint_path(self, run_id: str) -> Path:
        """Where the run's checkpoint is (or would be); creates nothing."""
        return self.runs_dir / run_id / CHECKPOINT_NAME

    def run_dir(self, run_id: str) -> Path:
        """The run's own folder (metrics, log, checkpoints), created 0700."""
        if not isinstance(run_id, str) or not RUN_ID_RE.fullmatch(run_id):
            raise BadInput(f"{run_id!r} is not a run id (expected r<number>, e.g. r12)")
        make_private_dir(self.runs_dir)
        return make_private_dir(self.runs_dir / run_id)
