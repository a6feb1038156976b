"""EnsembleRunner: runs the engine grouped (trials of one architecture) trained as one vmapped ensemble.

The members that can join (training.membership.split_group) train together
(training.ensemble.train_ensemble); each is recorded, and reported done, the
moment its own result is final. The rest train one after another, each with
the runner its configuration picks. A member the ensemble never ended (a bug,
a kill) is failed rather than left running.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Mapping
from typing import Any

from trialdeck.engine.presets.schema import RunSpec
from trialdeck.engine.runtime.runners.base import Done, Runner, StopRequests
from trialdeck.engine.runtime.runners.recorder import RunRecorder
from trialdeck.engine.types import RunState


class EnsembleRunner(Runner):
    """Several runs in one process (see the module docstring)."""

    def run(self, done: Done) -> None:
        from trialdeck.engine.training.membership import member_key, split_group

        ctx = self.ctx
        specs: list[RunSpec | None] = []
        keys: list[Any] = []
        for record in self.records:
            spec, key = None, None
            try:
                spec = RunSpec.model_validate(record["config"])
                key = member_key(spec, ctx.ws.run_dir(record["id"]))
            except Exception:  # noqa: BLE001 - its own runner records the reason
                pass
            specs.append(spec)
            keys.append(key)
        joined, left = split_group(keys)
        alone = [self.records[i] for i in left]
        members: list[tuple[Mapping[str, Any], RunSpec, RunRecorder]] = []
        for i in joined:
            record, spec = self.records[i], specs[i]
            assert spec is not None
            try:
                observer = StopRequests(ctx.stop, record["id"], ctx.extra_for(record))
                recorder = RunRecorder(ctx.store, record["id"], ctx.ws.run_dir(record["id"]), observer=observer,
                                       facts=ctx.facts)
            except Exception:  # noqa: BLE001 - its own runner records the reason
                alone.append(record)
                continue
            members.append((record, spec, recorder))
        if len(members) == 1:  # one member is no ensemble
            alone.insert(0, members[0][0])
            members[0][2].close()
            members = []
        if members:
            self._train_together(members, done)
        for record in alone:
            from trialdeck.engine.runtime.runners.choice import runner_for

            runner_for(ctx, [record]).run(done)

    def _train_together(self, members: list[tuple[Mapping[str, Any], RunSpec, RunRecorder]], done: Done) -> None:
        from trialdeck.engine.training.ensemble import train_ensemble

        ctx = self.ctx
        ids = [record["id"] for record, _, _ in members]
        pending = set(ids)

        def on_end(i: int, result: Any) -> None:
            record, _, recorder = members[i]
            try:
                state = RunState(recorder.finish(result)["state"])
            except Exception as exc:  # noqa: BLE001 - the run fails alone, with its reason
                recorder.log(traceback.format_exc())
                state = ctx.fail(record["id"], f"{type(exc).__name__}: {exc}")
            pending.discard(record["id"])
            done(record["id"], state)

        try:
            for i, (_, _, recorder) in enumerate(members):
                recorder.log(f"worker {os.getpid()} starting {ids[i]} on {ctx.device}: member {i + 1} of an ensemble "
                             f"of {len(members)} ({', '.join(ids)})")
            train_ensemble([spec for _, spec, _ in members], [recorder for _, _, recorder in members],
                           run_dirs=[ctx.ws.run_dir(run_id) for run_id in ids], data_dir=ctx.ws.data_dir,
                           device=ctx.device, on_end=on_end)
        finally:
            for record, _, recorder in members:
                recorder.close()
                if record["id"] in pending:  # never ended (a bug or a kill): fail it rather than leave it running
                    pending.discard(record["id"])
                    done(record["id"], ctx.fail(record["id"], "the ensemble ended without a result for it"))
