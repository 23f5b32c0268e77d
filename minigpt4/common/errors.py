"""One family of user-facing errors.

Every error a user can fix (a bad config value, a missing or wrong weight file, a bad data folder, a
bad captions file) is a :class:`MiniGPT4Error`; entry points print its message as one ``error:``
line and exit with code 2 (``--debug`` shows the traceback). Any other exception is a bug and keeps
its traceback.
"""

from __future__ import annotations


class MiniGPT4Error(ValueError):
    """A problem the user must fix; the message says what is wrong and how to fix it."""


class ConfigError(MiniGPT4Error):
    """A configuration key, value or file that cannot be used."""


class CheckpointError(MiniGPT4Error):
    """A weight file that cannot be used as asked; the message names the file, the key and the fix."""


class DatasetError(MiniGPT4Error):
    """A data folder or annotation file that cannot be used."""


class EvaluationError(MiniGPT4Error):
    """A captions or references file that cannot be evaluated."""
