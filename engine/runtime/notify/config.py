"""The [notify] table of engine.toml, checked: where notifications go and on which endings.

Parsing only (no network, no threads): the engine reads it at start, `engine
start` refuses a bad table with one line naming the key. runtime.notify.sender
does the sending.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from trialdeck.engine.errors import BadInput

RUN_EVENTS = ("completed", "failed", "early_stopped", "pruned", "cancelled")
EVENTS = (*RUN_EVENTS, "study_done")
DEFAULT_ON = ("completed", "failed", "early_stopped", "study_done")
KEYS = ("webhook", "command", "on", "trials", "timeout", "retries")
PLACEHOLDERS = ("{run}", "{state}", "{text}", "{preset}", "{study}")


@dataclass(frozen=True)
class NotifyConfig:
    webhook: str | None = None
    command: tuple[str, ...] | None = None
    on: frozenset[str] = frozenset(DEFAULT_ON)
    trials: bool = False
    timeout: float = 10.0
    retries: int = 3


def parse_config(raw: Any, path: Path | str) -> NotifyConfig | None:
    """The [notify] table of engine.toml, checked; None when it is absent. BadInput names the key and what is allowed."""
    if raw is None:
        return None
    where = f"{path}: [notify]"
    if not isinstance(raw, dict):
        raise BadInput(f"{path}: notify must be a table ([notify])")
    for key in raw:
        if key not in KEYS:
            raise BadInput(f"{where}: unknown key {key!r}; allowed: {', '.join(KEYS)}")
    webhook = raw.get("webhook")
    if webhook is not None:
        parts = urlsplit(webhook) if isinstance(webhook, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise BadInput(f"{where}: webhook = {webhook!r}: allowed: an http:// or https:// URL")
    command = raw.get("command")
    if command is not None and (not isinstance(command, list) or not command
                                or not all(isinstance(a, str) and a for a in command)):
        raise BadInput(f"{where}: command = {command!r}: allowed: a list of strings (argv, no shell), e.g. "
                       f'["notify-send", "trialdeck", "{{text}}"]; placeholders: {" ".join(PLACEHOLDERS)}')
    if webhook is None and command is None:
        raise BadInput(f"{where}: give webhook = URL, command = [argv], or both (or remove [notify])")
    on = raw.get("on", list(DEFAULT_ON))
    if not isinstance(on, list) or not all(isinstance(e, str) and e in EVENTS for e in on):
        raise BadInput(f"{where}: on = {on!r}: allowed: a list of {', '.join(EVENTS)}")
    trials = raw.get("trials", False)
    if not isinstance(trials, bool):
        raise BadInput(f"{where}: trials = {trials!r}: allowed: true or false")
    timeout = raw.get("timeout", 10.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0.1 <= timeout <= 300:
        raise BadInput(f"{where}: timeout = {timeout!r}: allowed: seconds from 0.1 to 300")
    retries = raw.get("retries", 3)
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 10:
        raise BadInput(f"{where}: retries = {retries!r}: allowed: a whole number from 0 to 10")
    return NotifyConfig(webhook=webhook, command=tuple(command) if command else None, on=frozenset(on),
                        trials=trials, timeout=float(timeout), retries=retries)
