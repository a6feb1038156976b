"""The processes a placement backend starts to train runs: local warm workers and Dask worker tasks."""
