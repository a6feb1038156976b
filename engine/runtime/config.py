"""engine.toml: the engine's settings, checked, and the placement backend they pick.

Optional, in the workspace: `slots_per_gpu` (a number or "auto"), `cpu_slots`,
`recovery` ("resume", "requeue", "leave"), a [notify] table
(runtime.notify.config) and `cluster`, a Dask scheduler's address. A bad value
is one plain line naming the file, the key and what is allowed (BadInput).
The backend it picks is runtime.placement.backend_class's decision.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trialdeck.engine.errors import BadInput
from trialdeck.engine.runs.lifecycle import RECOVERY_POLICIES, Recovery
from trialdeck.engine.runtime.notify.config import NotifyConfig, parse_config
from trialdeck.engine.workspace import Workspace

__all__ = ["RECOVERY_POLICIES", "EngineConfig", "check_cluster_url", "load_engine_config"]

KEYS = ("slots_per_gpu", "cpu_slots", "recovery", "notify", "cluster")
SCHEMES = ("tcp://", "tls://", "ws://", "wss://", "inproc://")


@dataclass(frozen=True)
class EngineConfig:
    """engine.toml as the engine uses it (command-line options already applied)."""

    slots_per_gpu: int | None = None
    """None: automatic (placement.scheduler.auto_slots_per_gpu)."""
    cpu_slots: int | None = None
    recovery: Recovery = "resume"
    notify: NotifyConfig | None = None
    cluster: str | None = None

    @classmethod
    def read(cls, ws: Workspace) -> EngineConfig:
        data = load_engine_config(ws)
        per_gpu = data.get("slots_per_gpu", "auto")
        return cls(slots_per_gpu=None if per_gpu == "auto" else int(per_gpu), cpu_slots=data.get("cpu_slots"),
                   recovery=data.get("recovery", "resume"), notify=parse_config(data.get("notify"), ws.root / "engine.toml"),
                   cluster=data.get("cluster"))


def load_engine_config(ws: Workspace) -> dict[str, Any]:
    """engine.toml's table, checked ({} when there is none); BadInput names the key and what is allowed."""
    path = Path(ws.root) / "engine.toml"
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"{path}: TOML syntax error: {exc}") from None
    for key in data:
        if key not in KEYS:
            raise BadInput(f"{path}: unknown key {key!r}; allowed: {', '.join(sorted(KEYS))}")
    parse_config(data.get("notify"), path)
    if "cluster" in data:
        check_cluster_url(data["cluster"], f"{path}: cluster")
    if "recovery" in data and data["recovery"] not in RECOVERY_POLICIES:
        raise BadInput(f"{path}: recovery = {data['recovery']!r} is not allowed; allowed: {', '.join(RECOVERY_POLICIES)}")
    for key in ("slots_per_gpu", "cpu_slots"):
        if key == "slots_per_gpu" and data.get(key) == "auto":
            continue
        if key in data and (isinstance(data[key], bool) or not isinstance(data[key], int) or not 1 <= data[key] <= 64):
            also = ' or "auto"' if key == "slots_per_gpu" else ""
            raise BadInput(f"{path}: {key} = {data[key]!r} must be a whole number from 1 to 64{also}")
    return data


def check_cluster_url(value: Any, where: str) -> str:
    """A Dask scheduler address as `cluster` takes it (tcp://HOST:PORT, or tls://, ws://, wss://,
    inproc://); raises BadInput naming `where` and what is allowed."""
    if not isinstance(value, str) or not value.startswith(SCHEMES) or len(value) <= len(value.split("://")[0]) + 3:
        raise BadInput(f"{where}: {value!r} is not a Dask scheduler address; allowed: tcp://HOST:PORT "
                       "(as `dask scheduler` prints it; also tls://, ws://, wss://)")
    return value
