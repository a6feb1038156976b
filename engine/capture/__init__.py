"""Metrics from a program as it is: its output, its TensorBoard and CSV logs, a stand-in W&B."""
