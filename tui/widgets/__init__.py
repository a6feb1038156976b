"""Reusable widgets: each takes data through attributes and reports through its own nested messages."""
