"""The files of a run's folder (runs/<id>/ in the workspace) and what they say about its next attempt.

checkpoint.pt is the workspace's (Workspace.checkpoint_path); the rest is named
here once, for the recorder, the script runner, the Dask transport, the TUI and
the lifecycle's requeue decision.
"""

from __future__ import annotations

# captured.jsonl (what the capture read from a script's output and logs, across attempts) is
# engine.capture's name, listed here with the rest of the folder.
from trialdeck.engine.capture.session import CAPTURED_NAME
from trialdeck.engine.capture.session import forget as forget_captured
from trialdeck.engine.workspace import Workspace

METRICS_NAME = "metrics.jsonl"
"""Per-step losses, epoch summaries and events, appended as they happen (live views follow it)."""
LOG_NAME = "log.txt"
"""Human lines: the worker's, the trainer's, a script's stdout and stderr."""
REPORTED_NAME = "reported.jsonl"
"""TRIALDECK_METRICS: the lines a script appends (across attempts)."""
FILES_NAME = "files"
"""TRIALDECK_RUN_DIR: a script's own checkpoints and files."""

__all__ = ["CAPTURED_NAME", "FILES_NAME", "LOG_NAME", "METRICS_NAME", "REPORTED_NAME",
           "forget_script_attempts", "script_resumes"]


def script_resumes(ws: Workspace, run_id: str) -> bool:
    """Whether a script run starts again as a resume (TRIALDECK_RESUME=1): it started before."""
    return (ws.runs_dir / run_id / REPORTED_NAME).exists()


def forget_script_attempts(ws: Workspace, run_id: str) -> None:
    """Start a script run over (`recovery = "requeue"`): its reported and captured epochs go, its own files stay."""
    (ws.runs_dir / run_id / REPORTED_NAME).unlink(missing_ok=True)
    forget_captured(ws.runs_dir / run_id)
