"""`digits`: scikit-learn's bundled 8x8 handwritten digits (offline, the default).

1797 grey images with integer values 0..16, ten classes. scikit-learn ships
the file inside its wheel, so this dataset never touches the network.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from trialdeck.engine.datasets._base import BaseDataset, RawArrays

if TYPE_CHECKING:
    from trialdeck.engine.presets.schema import DataConfig


class DigitsDataset(BaseDataset):
    name = "digits"

    def load_arrays(self, cfg: DataConfig, data_dir: Path) -> RawArrays:
        # Deferred: scikit-learn costs ~0.5 s to import and only this dataset needs it.
        from sklearn.datasets import load_digits

        bunch = load_digits()
        # Values are exact small integers stored as float64; uint8 keeps them exact and small.
        x = torch.from_numpy(bunch.images).to(torch.uint8).unsqueeze(1).contiguous()
        y = torch.from_numpy(bunch.target).to(torch.int64)
        return RawArrays(x=x, y=y, pixel_max=16.0, classes=tuple(str(c) for c in bunch.target_names))
