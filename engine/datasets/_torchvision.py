"""`mnist`, `fashion_mnist`, `cifar10`, `cifar100`, `svhn`: torchvision's own dataset classes.

Files live where torchvision puts them under the workspace's `data/` folder
(`data/MNIST/raw/`, `data/FashionMNIST/raw/`, `data/cifar-10-batches-py/`,
`data/cifar-100-python/`, `data/train_32x32.mat`),
so a copy downloaded by any torchvision script can be dropped in as is.
Loading tries the local files first, then a download; when both fail the
user gets one line saying which files to put where (`DatasetUnavailable`).
Pixels come straight from the class's `.data`/`.targets` (no per-sample PIL).
"""

from __future__ import annotations

import contextlib
import gzip
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.error import URLError

import numpy as np
import torch

from trialdeck.engine.datasets._base import BaseDataset, RawArrays
from trialdeck.engine.errors import DatasetUnavailable

if TYPE_CHECKING:
    from trialdeck.engine.presets.schema import DataConfig

_DOWNLOAD_TIMEOUT_S = 20.0
"""Per socket operation: a black-holed network fails in seconds, not minutes."""

# What a damaged local file raises inside torchvision's readers (bad IDX
# header asserts, short pickle raises EOFError, wrong dtype TypeError...).
_CORRUPT_ERRORS = (ValueError, TypeError, AssertionError, EOFError, KeyError, IndexError)


@contextlib.contextmanager
def _download_guard() -> Iterator[None]:
    """Bound every socket operation and keep torchvision's prints off stdout.

    urllib's sockets take the process-wide default timeout when created, and
    torchvision passes none; stdout is reserved for `--json` data.
    """
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        socket.setdefaulttimeout(old)


class TorchvisionDataset(BaseDataset):
    """Shared loading logic; subclasses name the torchvision class and the files."""

    tv_class: ClassVar[str] = ""
    split: ClassVar[dict[str, Any]] = {"train": True}
    """How the class is asked for its training split (SVHN takes split="train")."""

    def cache_key(self, cfg: DataConfig, data_dir: Path) -> tuple:
        return (self.name, str(Path(data_dir).expanduser().resolve()))

    def load_arrays(self, cfg: DataConfig, data_dir: Path) -> RawArrays:
        # Deferred: torchvision adds ~1 s to import and only these datasets need it.
        import torchvision.datasets

        cls = getattr(torchvision.datasets, self.tv_class)
        root = Path(data_dir).expanduser()
        try:
            ds = self._open(cls, root, download=False)
        except RuntimeError:
            ds = None  # files missing: prepare what is local, then try a download
        if ds is None:
            self._prepare_local(cls, root)
            try:
                with _download_guard():
                    ds = self._open(cls, root, download=True)
            except PermissionError as exc:
                raise DatasetUnavailable(
                    f"{self.name}: cannot write to {root} ({exc.strerror}); fix its permissions "
                    f"or {self.placement(cls, root)}"
                ) from exc
            except (URLError, OSError, RuntimeError) as exc:
                raise DatasetUnavailable(
                    f"{self.name}: not found in {self.folder(cls, root)} and could not be downloaded "
                    f"(no network?); {self.placement(cls, root)}"
                ) from exc
        return self._to_arrays(ds)

    def _open(self, cls: Any, root: Path, *, download: bool) -> Any:
        try:
            return cls(root=str(root), download=download, **self.split)
        except _CORRUPT_ERRORS as exc:
            raise DatasetUnavailable(
                f"{self.name}: the files in {self.folder(cls, root)} are unreadable "
                f"({type(exc).__name__}); delete them and {self.placement(cls, root)}"
            ) from exc

    def _prepare_local(self, cls: Any, root: Path) -> None:
        """Make files the user dropped in usable before any download is tried."""

    def folder(self, cls: Any, root: Path) -> Path:
        raise NotImplementedError

    def placement(self, cls: Any, root: Path) -> str:
        """The instruction part of the message: which files, where."""
        raise NotImplementedError

    def _to_arrays(self, ds: Any) -> RawArrays:
        raise NotImplementedError


class _MnistLike(TorchvisionDataset):
    def folder(self, cls: Any, root: Path) -> Path:
        # torchvision's raw_folder: root/<ClassName>/raw
        return root / cls.__name__ / "raw"

    def placement(self, cls: Any, root: Path) -> str:
        names = [name for name, _md5 in cls.resources]
        listed = ", ".join(names[:-1]) + " and " + names[-1]
        return f"put {listed} (from {cls.mirrors[0]}) in {self.folder(cls, root)}"

    def _prepare_local(self, cls: Any, root: Path) -> None:
        # torchvision only unpacks a .gz whose md5 matches the official file, and
        # otherwise goes to the network; unpacking any .gz here lets a mirror's
        # copy (or a re-compressed one) work offline too.
        raw = self.folder(cls, root)
        for name, _md5 in cls.resources:
            packed, plain = raw / name, raw / name.removesuffix(".gz")
            if packed.is_file() and not plain.exists():
                tmp = plain.with_name(plain.name + ".part")
                try:
                    with gzip.open(packed, "rb") as src, open(tmp, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                except (OSError, EOFError) as exc:
                    tmp.unlink(missing_ok=True)
                    raise DatasetUnavailable(
                        f"{self.name}: {packed} is not a readable .gz file ({exc}); "
                        f"replace it: {self.placement(cls, root)}"
                    ) from exc
                tmp.replace(plain)

    def _to_arrays(self, ds: Any) -> RawArrays:
        x = torch.as_tensor(ds.data, dtype=torch.uint8).unsqueeze(1).contiguous()  # (N,28,28) -> (N,1,28,28)
        y = torch.as_tensor(ds.targets, dtype=torch.int64)
        return RawArrays(x=x, y=y, pixel_max=255.0, classes=tuple(str(c) for c in ds.classes))


class MnistDataset(_MnistLike):
    name = "mnist"
    tv_class = "MNIST"


class FashionMnistDataset(_MnistLike):
    name = "fashion_mnist"
    tv_class = "FashionMNIST"


class Cifar10Dataset(TorchvisionDataset):
    name = "cifar10"
    tv_class = "CIFAR10"

    def folder(self, cls: Any, root: Path) -> Path:
        return root / cls.base_folder

    def placement(self, cls: Any, root: Path) -> str:
        return (
            f"put {cls.filename} (from {cls.url}) in {root}, or extract it there "
            f"so that {root / cls.base_folder / cls.train_list[0][0]} exists"
        )

    def _to_arrays(self, ds: Any) -> RawArrays:
        data = np.ascontiguousarray(ds.data, dtype=np.uint8)  # (N,32,32,3), HWC
        x = torch.from_numpy(data).permute(0, 3, 1, 2).contiguous()
        y = torch.as_tensor(np.asarray(ds.targets, dtype=np.int64))
        return RawArrays(x=x, y=y, pixel_max=255.0, classes=tuple(str(c) for c in ds.classes))


class Cifar100Dataset(Cifar10Dataset):
    """CIFAR-100's 100 fine classes (torchvision's CIFAR100: the same pickled batches as CIFAR-10)."""

    name = "cifar100"
    tv_class = "CIFAR100"


class SvhnDataset(TorchvisionDataset):
    """SVHN's training digits, from torchvision's SVHN (a MATLAB file, read with scipy; label 10
    is digit 0, which torchvision maps to 0)."""

    name = "svhn"
    tv_class = "SVHN"
    split = {"split": "train"}

    def folder(self, cls: Any, root: Path) -> Path:
        return root

    def placement(self, cls: Any, root: Path) -> str:
        url, filename, _md5 = cls.split_list["train"]
        return f"put {filename} (from {url}) in {root}"

    def _to_arrays(self, ds: Any) -> RawArrays:
        x = torch.from_numpy(np.ascontiguousarray(ds.data, dtype=np.uint8))  # (N,3,32,32) already
        y = torch.as_tensor(np.asarray(ds.labels, dtype=np.int64))
        return RawArrays(x=x, y=y, pixel_max=255.0, classes=tuple(str(c) for c in range(10)))
