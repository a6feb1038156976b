"""The one place a run's kind picks its runner: its script, the built-in trainer, or an ensemble."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from trialdeck.engine.runtime.runners.base import RunContext, Runner
from trialdeck.engine.runtime.runners.ensemble import EnsembleRunner
from trialdeck.engine.runtime.runners.script import ScriptRunner
from trialdeck.engine.runtime.runners.trainer import TrainerRunner


def runner_class(config: Mapping[str, Any] | None) -> type[Runner]:
    """The runner for one run of this configuration: a [script] runs the user's program."""
    return ScriptRunner if (config or {}).get("script") else TrainerRunner


def runner_for(ctx: RunContext, records: Sequence[Mapping[str, Any]]) -> Runner:
    """The runner for these runs: several are an ensemble the engine grouped (membership.queue_groups)."""
    if len(records) > 1:
        return EnsembleRunner(ctx, records)
    return runner_class(records[0].get("config"))(ctx, records)
