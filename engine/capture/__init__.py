"""Metrics from a program as it is: what a script run's program prints or logs, read as its metrics.

The room's parts, each pure but the session:
- scanner: output lines -> observations (the `auto` rules, user patterns, rename);
- steps: observations -> step records, one per place (epoch, else step), thinned past 1000 steps;
- files: CSV logs and the W&B stand-in's lines, followed as they grow;
- tboard: TensorBoard event files, followed with TensorBoard's own loader (an optional extra);
- session: one script run's epochs from every source, reported and captured, across attempts
  (`RunMetrics`, what runtime.runners.script asks), and `presets capture`'s reading of a saved log;
- standin/wandb: the stand-in `wandb` package a program's PYTHONPATH gets (standard library
  only; never imported by trialdeck).

No torch, no textual; the runtime imports this room, and this room imports the catalogue and presets.
"""
