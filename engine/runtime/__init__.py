"""Processes: the engine and everything that gets a run trained, in rooms.

- daemon.py: the engine, the one long-lived process per workspace (its loop).
- control/: how people drive the engine: the user-action rules (enqueue, cancel,
  resume, rerun, start a study), the client that starts, signals and waits on the
  engine, `trialdeck train` and `trialdeck worker` in the foreground, pid file and
  torch/driver versions. With config.py and daemon.py, the TUI's way in.
- placement/: where queued runs train, behind one abstract base: this box's
  device slots (local) or a Dask cluster (dask), the scheduler that packs slots,
  GPU probing, and an in-memory fake for tests and simulations.
- workers/: the processes a backend starts to train runs: a local warm worker, a
  task on a Dask worker (and its transport back), and the messages they exchange.
- runners/: what trains one run inside a worker, chosen once from its spec: the
  built-in trainer, a user's script, or an ensemble of members; the recorder
  that writes a run's progress.
- notify/: webhooks and commands when runs and studies end.

A run's state changes are not made here: trialdeck.engine.runs.lifecycle owns them,
and everything in these rooms reports facts to it.
"""
