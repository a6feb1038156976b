"""Notifications: tell a person when a run or a study ends (a webhook or a command).

`config` parses engine.toml's [notify] table; `sender` composes each message and
sends it from one background thread the engine never waits on.
"""

from trialdeck.engine.runtime.notify.config import DEFAULT_ON, EVENTS, NotifyConfig, parse_config
from trialdeck.engine.runtime.notify.sender import Notifier, run_message, study_message

__all__ = ["DEFAULT_ON", "EVENTS", "Notifier", "NotifyConfig", "parse_config", "run_message", "study_message"]
