"""What trains one run inside a worker: the built-in trainer, a script, an ensemble of members."""
