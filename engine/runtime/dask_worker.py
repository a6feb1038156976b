"""`dask worker URL --preload trialdeck.engine.runtime.dask_worker`: the name the README and
existing worker command lines use for runtime.workers.dask (warm-up at the worker's start)."""

from trialdeck.engine.runtime.workers.dask import dask_setup, run_task

__all__ = ["dask_setup", "run_task"]
