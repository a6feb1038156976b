"""`imagefolder`: a user's images in torchvision's ImageFolder layout, decoded once into a cache.

`data.path` is `DIR/<class>/<image>` (torchvision.datasets.ImageFolder's
layout: one folder per class, classes in sorted order, the image extensions
torchvision accepts), or `DIR/train/<class>/...` with `DIR/val/<class>/...`,
whose val/ is then the validation set. Every image is converted to
`data.channels` (1: grey "L", 3: "RGB") and resized to `data.image_size`
(bilinear), giving uint8 (N, C, H, W) pixels.

Decoding is paid once: the pixels go to `<workspace>/data/imagefolder/<key>/`
(x.npy, y.npy, meta.json), where key hashes the folder's file list with each
file's size and mtime, and the size and channels asked for. A later run of the
same folder reads the cache and decodes nothing; adding, removing or editing
an image changes the key. The cache folder is written under a temporary name
and renamed into place, so a run killed while decoding leaves no half cache,
and two runs decoding at once both end with a whole one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from trialdeck.engine.datasets._base import BaseDataset, RawArrays
from trialdeck.engine.errors import DatasetUnavailable

if TYPE_CHECKING:
    from trialdeck.engine.presets.schema import DataConfig

CACHE_VERSION = 1
"""Part of every cache key: bump when the decoding changes."""
CACHE_FOLDER = "imagefolder"
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""torchvision.datasets.folder.IMG_EXTENSIONS (a test keeps them equal): listing a folder must
not import torchvision."""

Listing = list[tuple[str, str, str, int, int]]
"""(split, class, path relative to the folder, size, mtime_ns) per image, in a fixed order."""


def layout(root: Path) -> list[tuple[str, Path]]:
    """The folder's splits: [("train", root/train), ("val", root/val)] when both exist, else
    [("all", root)]."""
    train, val = root / "train", root / "val"
    if train.is_dir() and val.is_dir():
        return [("train", train), ("val", val)]
    return [("all", root)]


def _classes(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def list_images(root: Path) -> tuple[list[str], Listing]:
    """The class names (from train/ in the split layout) and every image, as torchvision's
    make_dataset would list them: class by class, files walked in sorted order."""
    splits = layout(root)
    classes = _classes(splits[0][1])
    if not classes:
        raise DatasetUnavailable(f"imagefolder: {splits[0][1]} has no class folders; allowed: DIR/<class>/*.png, "
                                 "or DIR/train/<class>/... with DIR/val/<class>/...")
    listing: Listing = []
    for split, folder in splits:
        unknown = sorted(set(_classes(folder)) - set(classes))
        if unknown:
            raise DatasetUnavailable(f"imagefolder: {folder} has class folders {', '.join(unknown)} that "
                                     f"{splits[0][1]} lacks; the classes are train/'s")
        for cls in classes:
            base = folder / cls
            if not base.is_dir():
                continue
            for dirpath, _, filenames in sorted(os.walk(base, followlinks=True)):
                for name in sorted(filenames):
                    if name.lower().endswith(IMG_EXTENSIONS):
                        path = Path(dirpath) / name
                        st = path.stat()
                        listing.append((split, cls, path.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    if not any(entry[0] != "val" for entry in listing):
        raise DatasetUnavailable(f"imagefolder: no images ({', '.join(IMG_EXTENSIONS)}) under {root}")
    if len(splits) == 2 and not any(entry[0] == "val" for entry in listing):
        raise DatasetUnavailable(f"imagefolder: {root / 'val'} holds no images; add some, or remove it to split "
                                 "train/ by data.val_fraction")
    return classes, listing


def cache_key(root: Path, hw: tuple[int, int], channels: int, listing: Listing) -> str:
    blob = json.dumps([CACHE_VERSION, str(root), list(hw), channels, listing], separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _decode(path: Path, hw: tuple[int, int], channels: int) -> np.ndarray:
    # Deferred: Pillow is needed only by this dataset.
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as file:
            img = file.convert("L" if channels == 1 else "RGB")
            if img.size != (hw[1], hw[0]):
                img = img.resize((hw[1], hw[0]), Image.Resampling.BILINEAR)
            pixels = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DatasetUnavailable(f"imagefolder: cannot decode {path} ({type(exc).__name__}: {exc}); "
                                 "fix or remove it") from None
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


class ImageFolderDataset(BaseDataset):
    name = "imagefolder"

    def cache_key(self, cfg: DataConfig, data_dir: Path) -> tuple:
        root = Path(str(cfg.path))
        _, listing = list_images(root)
        return (self.name, cache_key(root, cfg.image_hw, cfg.channels or 3, listing))

    def load_arrays(self, cfg: DataConfig, data_dir: Path) -> RawArrays:
        root = Path(str(cfg.path))
        if not root.is_dir():
            raise DatasetUnavailable(f"imagefolder: {root}: no such folder")
        hw, channels = cfg.image_hw, cfg.channels or 3
        classes, listing = list_images(root)
        key = cache_key(root, hw, channels, listing)
        cache = Path(data_dir) / CACHE_FOLDER / key
        if (cache / "meta.json").exists():
            try:
                return self._read(cache, len(listing), f"imagefolder: {len(listing):,} images of {root} "
                                                       f"read from the cache {cache} (none decoded)")
            except (OSError, ValueError, KeyError):
                pass  # a damaged cache: decode again and replace it
        x = np.empty((len(listing), channels, *hw), dtype=np.uint8)
        label = {c: i for i, c in enumerate(classes)}
        y = np.array([label[e[1]] for e in listing], dtype=np.int64)

        def one(i: int) -> None:
            x[i] = _decode(root / listing[i][2], hw, channels)

        # Pillow releases the GIL while it decodes: a few threads fill the array in parallel.
        with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
            list(pool.map(one, range(len(listing))))
        val = [i for i, e in enumerate(listing) if e[0] == "val"]
        val_start = val[0] if val else None
        meta: dict[str, Any] = {"root": str(root), "classes": classes, "val_start": val_start, "count": len(listing),
                                "image_size": list(hw), "channels": channels, "version": CACHE_VERSION}
        problem = self._write(cache, x, y, meta)
        note = f"imagefolder: {len(listing):,} images of {root} decoded, " + (
            f"cached in {cache}" if problem is None else f"not cached ({problem}): the next run decodes them again")
        return RawArrays(x=torch.from_numpy(x), y=torch.from_numpy(y), pixel_max=255.0, classes=tuple(classes),
                         val_start=val_start, note=note)

    @staticmethod
    def _read(cache: Path, count: int, note: str) -> RawArrays:
        meta = json.loads((cache / "meta.json").read_text())
        x = np.load(cache / "x.npy", allow_pickle=False)
        y = np.load(cache / "y.npy", allow_pickle=False)
        if len(x) != count or len(y) != count or meta.get("version") != CACHE_VERSION:
            raise ValueError("cache does not match the folder")
        return RawArrays(x=torch.from_numpy(x), y=torch.from_numpy(y), pixel_max=255.0,
                         classes=tuple(meta["classes"]), val_start=meta["val_start"], note=note)

    @staticmethod
    def _write(cache: Path, x: np.ndarray, y: np.ndarray, meta: dict) -> str | None:
        """Whole or not at all: write a temporary folder, then rename it into place. Returns why
        it could not be written (a full disk: the run goes on with the pixels it decoded)."""
        from trialdeck.engine.workspace import make_private_dir

        parent = make_private_dir(cache.parent)
        tmp = parent / f".{cache.name}.{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir(mode=0o700)
            for name, arr in (("x.npy", x), ("y.npy", y)):
                with open(tmp / name, "wb") as f:
                    np.save(f, arr, allow_pickle=False)
                    f.flush()
                    os.fsync(f.fileno())
            (tmp / "meta.json").write_text(json.dumps(meta))  # written last: its presence means whole
            try:
                os.rename(tmp, cache)
            except OSError:  # another run renamed its own whole copy first: keep that one
                if not (cache / "meta.json").exists():
                    raise
        except OSError as exc:
            return exc.strerror or str(exc)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return None
