"""Benchmarks: `python bench/run_all.py` runs them all and writes BENCHMARKS.md."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gpus_hidden() -> Iterator[None]:
    """Hide every GPU from the engines, workers and CLIs started meanwhile (they inherit the
    environment), so a CPU figure stays a CPU figure on a GPU box: the engine then makes CPU
    slots and `--cpu-slots` applies. Code in this process must still pass device="cpu"."""
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved
