"""TrainerRunner: one run through the built-in trainer (training.trainer.train), recorded as it goes.

The recorder writes its epochs, events and final record; its stop requests and
its trial's pruner are read after each epoch and between steps; on a GPU its
peak memory after the first epoch goes to the engine (packing learns it). A
failure is the run's alone: recorded with its reason, the worker goes on. Ctrl-C
(a run trained in a terminal) records it interrupted, then goes on up.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from trialdeck.engine.presets.schema import RunSpec
from trialdeck.engine.runs.facts import Ended
from trialdeck.engine.runtime.runners.base import Done, Runner, StopRequests
from trialdeck.engine.runtime.runners.recorder import RunRecorder
from trialdeck.engine.runtime.workers.messages import Channel, MemoryMeasured
from trialdeck.engine.types import RunState


class TrainerRunner(Runner):
    """One run of a built-in preset (see the module docstring)."""

    def run(self, done: Done) -> None:
        (record,) = self.records
        done(record["id"], self.train(record))

    def train(self, record: Mapping[str, Any]) -> RunState:
        """Train `record` to its final state, recorded; that state."""
        # Deferred: the trainer imports torch, which a worker pays for once at its start.
        from trialdeck.engine.training.trainer import train

        ctx, run_id = self.ctx, record["id"]
        run_dir = ctx.ws.run_dir(run_id)
        recorder = None
        try:
            spec = RunSpec.model_validate(record["config"])
            probe = memory_probe(ctx.channel, run_id) if ctx.channel is not None and ctx.device.startswith("cuda") else None
            observer = StopRequests(ctx.stop, run_id, ctx.extra_for(record), first_epoch=probe)
            recorder = RunRecorder(ctx.store, run_id, run_dir, observer=observer, facts=ctx.facts)
            if ctx.channel is not None:
                recorder.log(f"worker {os.getpid()} starting {run_id} on {ctx.device} "
                             f"(attempt {record.get('attempts', 1)})")
            result = train(spec, recorder, run_dir=run_dir, data_dir=ctx.ws.data_dir,
                           device=None if ctx.device == "auto" else ctx.device, resume=ctx.resume)
            peak = peak_memory(ctx.device)
            final = recorder.finish(result, **({"peak_memory": peak} if peak else {}))
            return RunState(final["state"])
        except KeyboardInterrupt:  # a terminal's Ctrl-C: the run is interrupted, then the caller stops
            if recorder is not None:
                recorder.flush()
            ctx.facts.apply(Ended(run_id, RunState.INTERRUPTED, "interrupted by the user (Ctrl-C)"))
            raise
        except Exception as exc:  # noqa: BLE001 - the run fails alone, with its reason
            if recorder is not None:
                recorder.log(traceback.format_exc())
            return ctx.fail(run_id, f"{type(exc).__name__}: {exc}")
        finally:
            if recorder is not None:
                recorder.close()


def memory_probe(channel: Channel, run_id: str) -> Callable[[], None]:
    """Tell the engine the run's peak GPU memory so far (the caching allocator's reserve, which
    is what other processes see as used), so runs of the same footprint can be packed."""
    import torch

    torch.cuda.reset_peak_memory_stats()

    def report() -> None:
        try:
            channel.send(MemoryMeasured(run_id, int(torch.cuda.max_memory_reserved())))
        except (BrokenPipeError, OSError):
            pass

    return report


def peak_memory(device: str) -> int | None:
    if not device.startswith("cuda"):
        return None
    import torch

    peak = int(torch.cuda.max_memory_allocated())
    torch.cuda.reset_peak_memory_stats()
    return peak
