"""`arrays`: a user's own data as an .npz file of numpy arrays.

`data.path` names an .npz holding `x` and `y`, and optionally `x_val` and
`y_val` (then the validation set is theirs, else `val_fraction` splits x, y).
It is read with `allow_pickle=False`: an array of Python objects is refused,
never unpickled.

- `x`: (N, features...), channels first: (N, F) tabular rows, (N, C, H, W)
  images. Each index of axis 1 (a feature, a channel) is standardised with the
  training subset's mean and std. uint8 is taken as 8-bit pixels (0..255);
  any other number type is used as float32 as is.
- `y`: integers (N,) are class labels 0..K-1 (classification, cross-entropy,
  `val_acc`); floats (N,) or (N, T) are regression targets (MSE loss,
  `val_mae`), T outputs per sample.

The arrays are cached per process by (path, size, mtime), so an edited file
is read again at the next run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from trialdeck.engine.datasets._base import BaseDataset, RawArrays
from trialdeck.engine.errors import DatasetUnavailable

if TYPE_CHECKING:
    from trialdeck.engine.presets.schema import DataConfig


class ArraysDataset(BaseDataset):
    name = "arrays"

    def cache_key(self, cfg: DataConfig, data_dir: Path) -> tuple:
        path = Path(str(cfg.path))
        try:
            stat = path.stat()
        except OSError:
            return (self.name, str(path))
        return (self.name, str(path), stat.st_size, stat.st_mtime_ns)

    def load_arrays(self, cfg: DataConfig, data_dir: Path) -> RawArrays:
        path = Path(str(cfg.path))
        where = f"arrays: {path}"
        try:
            with np.load(path, allow_pickle=False) as npz:
                names = set(npz.files)
                missing = [k for k in ("x", "y") if k not in names]
                if missing:
                    raise DatasetUnavailable(f"{where} has no {' and no '.join(missing)} "
                                             f"(it has {', '.join(sorted(names)) or 'no arrays'})")
                parts = [(npz["x"], npz["y"])]
                if "x_val" in names and "y_val" in names:
                    parts.append((npz["x_val"], npz["y_val"]))
        except FileNotFoundError:
            raise DatasetUnavailable(f"{where}: no such file") from None
        except ValueError as exc:  # object arrays (allow_pickle=False), a damaged file
            raise DatasetUnavailable(f"{where}: unreadable without pickles ({exc}); save plain numeric arrays "
                                     "with numpy.savez(path, x=..., y=...)") from None
        except OSError as exc:
            raise DatasetUnavailable(f"{where}: cannot read it ({exc.strerror or exc})") from None
        xs, ys = zip(*parts, strict=True)
        for x, y, name in zip(xs, ys, ("x", "x_val"), strict=False):
            if x.ndim < 2 or len(x) != len(y):
                raise DatasetUnavailable(f"{where}: {name} has shape {x.shape} and its targets {y.shape}; "
                                         "allowed: x (N, features...) and y (N,) or (N, targets)")
            if x.dtype.kind not in "biuf" or y.dtype.kind not in "biuf":
                raise DatasetUnavailable(f"{where}: {name} and its targets must hold numbers, got {x.dtype} and {y.dtype}")
        if len(xs) == 2 and xs[0].shape[1:] != xs[1].shape[1:]:
            raise DatasetUnavailable(f"{where}: x_val samples have shape {xs[1].shape[1:]}, x samples {xs[0].shape[1:]}")
        regression = ys[0].dtype.kind == "f"
        if len(ys) == 2 and (ys[1].dtype.kind == "f") != regression:
            raise DatasetUnavailable(f"{where}: y and y_val differ in kind (integers are classes, floats targets)")
        pixels = all(x.dtype == np.uint8 for x in xs)
        x_all = np.concatenate(xs) if len(xs) == 2 else xs[0]
        x_t = torch.from_numpy(np.ascontiguousarray(x_all if pixels else x_all.astype(np.float32, copy=False)))
        y_all = np.concatenate(ys) if len(ys) == 2 else ys[0]
        if regression:
            y_t = torch.from_numpy(np.ascontiguousarray(y_all, dtype=np.float32))
            y_t = y_t.reshape(len(y_t), -1)  # (N,) -> (N, 1): one output per target
            if not torch.isfinite(y_t).all():
                raise DatasetUnavailable(f"{where}: y holds NaN or infinite targets")
            classes = tuple(f"target {i}" for i in range(y_t.shape[1]))
        else:
            if y_all.ndim == 2 and y_all.shape[1] == 1:
                y_all = y_all[:, 0]
            if y_all.ndim != 1:
                raise DatasetUnavailable(f"{where}: integer y must be (N,) class labels, got shape {y_all.shape}")
            if y_all.size and int(y_all.min()) < 0:
                raise DatasetUnavailable(f"{where}: class labels must be 0..K-1, found {int(y_all.min())}")
            y_t = torch.from_numpy(np.ascontiguousarray(y_all, dtype=np.int64))
            k = int(y_t.max()) + 1 if y_t.numel() else 0
            classes = tuple(str(i) for i in range(max(k, 2)))
        if not pixels and not torch.isfinite(x_t).all():
            raise DatasetUnavailable(f"{where}: x holds NaN or infinite values")
        val_start = len(xs[0]) if len(xs) == 2 else None
        return RawArrays(x=x_t, y=y_t, pixel_max=255.0 if pixels else None, classes=classes, val_start=val_start,
                         note=f"arrays: {len(x_t):,} samples of shape {tuple(x_t.shape[1:])} from {path}")
