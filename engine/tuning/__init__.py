"""Tuning: Optuna studies whose trials are engine runs (see driver, study, space)."""
