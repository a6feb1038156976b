"""The engine's pid file: who the engine is, read by clients; and whether a pid is alive.

The pid file is written atomically by the engine at start (workspace.atomic_write) and
removed at exit; the workspace lock, not this file, says whether an engine runs.
"""

from __future__ import annotations

import json
import os
from typing import Any

from trialdeck.engine.workspace import Workspace


def alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_pid_info(ws: Workspace) -> dict[str, Any] | None:
    try:
        return json.loads(ws.pid_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, OSError):
        return None


def describe_pid(ws: Workspace) -> str:
    info = read_pid_info(ws)
    return f"pid {info['pid']}" if info else "pid unknown"
