"""`trialdeck data export`: write the embedded dataset as a user's own data would be.

One job: put `digits` (scikit-learn's bundled 8x8 digits, offline) on disk in
the two forms the `arrays` and `imagefolder` datasets read, so a newcomer can
try both paths with no download:

- npz: `DIR/digits.npz` with `x` (N, 1, 8, 8) uint8 and `y` (N,) int64, and
  the held-out `x_val`, `y_val` (a stratified `val_fraction`, seed 0);
- imagefolder: `DIR/train/<digit>/NNNN.png` and `DIR/val/<digit>/NNNN.png`
  (8x8 grey PNGs), the same split (no train/ and val/ when val_fraction is 0).

Both hold the same pixels, scaled from digits' 0..16 to 0..255, so the two
forms train to the same numbers. Files are written whole (temporary name,
then rename); an image folder is refused when DIR already holds files.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from trialdeck.engine.errors import BadInput
from trialdeck.engine.workspace import atomic_write

FORMATS = ("npz", "imagefolder")
EXPORTABLE = ("digits",)


def _digits(val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    # Deferred: scikit-learn costs ~0.5 s to import and only this export needs it.
    from sklearn.datasets import load_digits

    from trialdeck.engine.datasets._split import split_indices

    bunch = load_digits()
    x = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8), 0..255
    y = bunch.target.astype(np.int64)
    if val_fraction <= 0:
        return x, y, x[:0], y[:0]
    # The validation set `load_data` picks with this seed (every other sample trains).
    train, val = split_indices(y, val_fraction=val_fraction, train_fraction=1.0, seed=seed)
    return x[train], y[train], x[val], y[val]


def export_dataset(name: str, fmt: str, folder: Path, *, val_fraction: float = 0.2) -> dict[str, Any]:
    """Write dataset `name` in format `fmt` under `folder`; what was written (for `--json`)."""
    if name not in EXPORTABLE:
        raise BadInput(f"data export {name!r}: allowed: {', '.join(EXPORTABLE)} (the embedded dataset; "
                       "the others are downloaded by torchvision into the workspace)")
    if fmt not in FORMATS:
        raise BadInput(f"--format {fmt!r}: allowed: {' | '.join(FORMATS)}")
    if not 0.0 <= val_fraction < 1.0:
        raise BadInput(f"--val-fraction {val_fraction}: allowed: 0 (no validation split) up to, not including, 1")
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise BadInput(f"{folder}: exists and is not a folder")
    x, y, x_val, y_val = _digits(val_fraction, seed=0)
    if fmt == "npz":
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.npz"
        buffer = io.BytesIO()
        if len(y_val):
            np.savez(buffer, x=x, y=y, x_val=x_val, y_val=y_val)
        else:
            np.savez(buffer, x=x, y=y)
        arrays = ["x", "y", "x_val", "y_val"] if len(y_val) else ["x", "y"]
        atomic_write(path, buffer.getbuffer())
        return {"dataset": name, "format": fmt, "path": str(path), "train": len(y), "val": len(y_val),
                "arrays": sorted(arrays), "preset_keys": {"data.dataset": "arrays", "data.path": str(path)}}
    if folder.exists() and any(folder.iterdir()):
        raise BadInput(f"{folder}: already holds files; give a new or empty folder for the image folder")
    # Deferred: Pillow is needed only for the image form.
    from PIL import Image

    written = 0
    splits = [("train", x, y), ("val", x_val, y_val)] if len(y_val) else [("", x, y)]
    for split, xs, ys in splits:
        for i, (img, label) in enumerate(zip(xs, ys, strict=True)):
            target = folder / split / str(int(label)) if split else folder / str(int(label))
            target.mkdir(parents=True, exist_ok=True)
            # A temporary name, then a rename: an interrupted export leaves no half image (no
            # fsync per image: these are a copy of bundled data, not state to protect).
            part = target / f".{i:04d}.png.part"
            Image.fromarray(img[0]).save(part, format="PNG")
            os.replace(part, target / f"{i:04d}.png")
            written += 1
    return {"dataset": name, "format": fmt, "path": str(folder), "train": len(y), "val": len(y_val), "images": written,
            "layout": "train/<class>, val/<class>" if len(y_val) else "<class>",
            "preset_keys": {"data.dataset": "imagefolder", "data.path": str(folder), "data.channels": 1,
                            "data.image_size": 8}}
