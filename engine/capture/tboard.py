"""Following TensorBoard event files while a program writes them.

Every event file (`*tfevents*`) under the folder, new ones included, written
since the run started (Lightning's `lightning_logs/version_N/`, a
`SummaryWriter("runs/...")`), is read with TensorBoard's own loader
(`tensorboard.backend.event_processing.event_file_loader`, from the
`trialdeck[tensorboard]` extra): it keeps its offset between reads and waits
for a record still being written. Each scalar becomes a value at its step;
the scalars of one step read together make one observation, and a scalar
named `epoch` (Lightning logs one) gives the epoch. A tag's `/` becomes `_`
(`Loss/train` -> `loss_train`). Histograms, images and text are not metrics
and are skipped.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trialdeck.engine.capture.files import SLACK_SECONDS
from trialdeck.engine.capture.scanner import IGNORED, kind_of, normalize
from trialdeck.engine.capture.steps import Number, Observation
from trialdeck.engine.presets.schema import TENSORBOARD_INSTALL

INSTALL = TENSORBOARD_INSTALL


def available() -> bool:
    """Whether the extra is installed (no import: an enqueue stays fast)."""
    return importlib.util.find_spec("tensorboard") is not None


class TensorBoardFollower:
    """The scalars of every event file under `folder` (see the module docstring)."""

    def __init__(self, folder: Path, since: float, rename: Mapping[str, str] | None = None,
                 only: Path | None = None) -> None:
        # Deferred: TensorBoard's loader and its protobufs take a third of a second to import.
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

        self._loader_class = EventFileLoader
        self.folder = folder
        self.since = since
        self.rename = dict(rename or {})
        self._loaders: dict[str, Any] = {}
        self.epoch: Number | None = None
        self.only = only
        """One event file instead of the folder's (`presets capture FILE`)."""

    def _files(self) -> list[str]:
        if self.only is not None:
            return [str(self.only)]
        found = []
        for root, _dirs, names in os.walk(self.folder):
            for name in names:
                if "tfevents" not in name:
                    continue
                path = os.path.join(root, name)
                try:
                    if os.stat(path).st_mtime >= self.since - SLACK_SECONDS:
                        found.append(path)
                except OSError:
                    continue
        return sorted(found)

    def poll(self, final: bool = False) -> list[Observation]:
        out: list[Observation] = []
        for path in self._files():
            loader = self._loaders.get(path)
            if loader is None:
                loader = self._loaders[path] = self._loader_class(path)
            steps: dict[int, dict[str, Number]] = {}
            for event in loader.Load():
                if not event.HasField("summary"):
                    continue
                for value in event.summary.value:
                    number = _scalar(value)
                    if number is not None:
                        steps.setdefault(int(event.step), {})[normalize(value.tag)] = number
            for step in sorted(steps):
                obs = self._observation(step, steps[step])
                if obs is not None:
                    out.append(obs)
        return out

    def _observation(self, step: int, scalars: dict[str, Number]) -> Observation | None:
        values: dict[str, Number] = {}
        for name, value in scalars.items():
            kind = kind_of(name)
            if kind == "epoch":
                self.epoch = value
            elif kind == "value" and name not in IGNORED:
                values[self.rename.get(name, name)] = value
        return Observation(values, step, self.epoch) if values else None


def _scalar(value: Any) -> Number | None:
    """A summary value's number: a `simple_value`, or a scalar tensor of the scalars plugin (what
    TensorBoard's loader migrates simple values to); None for anything else."""
    if value.HasField("simple_value"):
        return float(value.simple_value)
    if not value.HasField("tensor") or value.metadata.plugin_data.plugin_name not in ("scalars", ""):
        return None
    from tensorboard.util import tensor_util

    array = tensor_util.make_ndarray(value.tensor)
    if array.size != 1 or array.dtype.kind not in "fiu":
        return None
    return float(array.reshape(()))
