"""The catalogue: the TinyDB store of runs, studies, trials and events, its file layer and
line layout, and the per-run append-only metric streams. No torch, no processes."""
