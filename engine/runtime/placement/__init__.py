"""Where queued runs train: placement backends behind one abstract base (base.BasePlacement).

`backend_class(config)` is the factory's one decision, from engine.toml: a `cluster`
places runs on Dask (dask.DaskPlacement; `distributed` is imported only then),
else on this box's device slots (local.LocalPlacement). fake.FakePlacement is
for tests and simulations; each backend's `offline_capabilities` says what it
would offer before an engine runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trialdeck.engine.runtime.config import EngineConfig
    from trialdeck.engine.runtime.placement.base import BasePlacement


def backend_class(config: EngineConfig) -> type[BasePlacement]:
    """The backend `config` places runs with."""
    if config.cluster:
        # Deferred: `distributed` is imported only by an engine that places runs on a cluster.
        from trialdeck.engine.runtime.placement.dask import DaskPlacement

        return DaskPlacement
    from trialdeck.engine.runtime.placement.local import LocalPlacement

    return LocalPlacement
