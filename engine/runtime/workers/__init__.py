"""The processes that train runs: local warm workers, Dask worker tasks, study workers."""
