"""Exit codes and the exceptions that map to them.

Every error a user can cause is a `TrialdeckError` with one plain line of
text; the CLI prints that line and exits with the error's code. Anything else
is a bug and shows a traceback only with TRIALDECK_DEBUG=1.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    JOB_FAILED = 1
    BAD_INPUT = 2
    ENGINE_UNAVAILABLE = 3
    INTERRUPTED = 130


class TrialdeckError(Exception):
    """A known failure with a message a person can act on."""

    code: ExitCode = ExitCode.JOB_FAILED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class BadInput(TrialdeckError):
    """The user gave something we cannot accept (exit 2)."""

    code = ExitCode.BAD_INPUT


class PresetError(BadInput):
    """A preset file, `--set` value or [tune] block is invalid. `problems` holds every problem
    found, one line each (the message is the first); `presets validate` prints them all."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


class DatasetUnavailable(TrialdeckError):
    """A dataset cannot be loaded (offline, missing files)."""


class EngineUnavailable(TrialdeckError):
    code = ExitCode.ENGINE_UNAVAILABLE


class CatalogCorrupt(TrialdeckError):
    """catalog.json does not parse; it is never silently replaced."""

    code = ExitCode.ENGINE_UNAVAILABLE


class StorageError(TrialdeckError):
    """A write failed for lack of space or a read-only disk; nothing was half-written."""


def exit_code_for(exc: BaseException) -> ExitCode:
    """The one place that maps an exception to a process exit code."""
    if isinstance(exc, TrialdeckError):
        return exc.code
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    return ExitCode.JOB_FAILED
