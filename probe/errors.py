"""User-facing errors.

Everything a user can cause (a bad path, a broken model directory, an unknown hook name, a plugin
that raises) is raised as a :class:`ProbeError` subclass whose message is one line saying what is
wrong and what to do.  The CLI prints ``probe: error: <message>`` and exits with
:attr:`ProbeError.exit_code` (2); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ProbeError(Exception):
    """An error the user can fix; its message is one line that says how."""

    exit_code = 2

    def __init__(self, message: str):
        # Keep messages to one line: the CLI prints them as-is.
        super().__init__(" ".join(str(message).split()))


class AudioError(ProbeError):
    """Audio that cannot be read or used (missing, empty, corrupt, not audio)."""


class ModelError(ProbeError):
    """A model name or directory that cannot be loaded as Whisper."""


class DatasetError(ProbeError):
    """A dataset that cannot be opened or has no usable audio column."""


class OptionError(ProbeError):
    """A bad option value: unknown hook point, language, task, beam count, ..."""


class PluginError(ProbeError):
    """A plugin that cannot be loaded or that raised during a run; the message names it."""


class StoreError(ProbeError):
    """A store or trace that is missing, corrupt, from the future, or cannot be written."""


class MemoryBudgetError(ProbeError):
    """A capture that would not fit in device or host memory."""
