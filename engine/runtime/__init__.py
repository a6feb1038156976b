"""Processes: the engine daemon, its warm workers, the scheduler that places runs on device
slots, the client that starts, signals and waits on the engine, the recorder that writes a
run's progress, foreground runs, GPU probing and pid files."""
