"""Fault injection for reliability tests, off unless TRIALDECK_INJECT_FAULT is set.

Format: comma-separated `KIND@EPOCH[:RUN_ID]`, KIND one of `raise` (an
exception inside training), `oom` (a CUDA out-of-memory error, on any device).
The engine passes its environment to its workers, so a test starts an engine
with the variable set and checks that exactly the targeted run fails, with the
reason a real fault of that kind would give, and that the others carry on.
"""

from __future__ import annotations

import os

ENV = "TRIALDECK_INJECT_FAULT"


def check(run_id: str | None, epoch: int) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    for item in spec.split(","):
        kind, _, rest = item.strip().partition("@")
        at, _, target = rest.partition(":")
        if not at.isdigit() or int(at) != epoch or (target and target != run_id):
            continue
        if kind == "raise":
            raise RuntimeError("injected fault")
        if kind == "oom":
            import torch

            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")
