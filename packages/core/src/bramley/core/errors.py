"""The errors a user can cause: a bad setting, a bad file, bad data.

Every bramley CLI shows a :class:`UserError` as one line naming the problem and exits with status 2 (see
:func:`bramley.core.cli.method_main`); anything else is a bug and keeps its traceback. Library code raises the most
specific subclass; each also derives from the builtin a caller would catch without knowing bramley
(``ValueError`` for settings and data, ``RuntimeError`` for checkpoints).
"""

from __future__ import annotations

__all__ = ["CheckpointError", "ConfigError", "DataError", "UserError"]


class UserError(Exception):
    """A problem with what the user gave bramley, not with bramley: shown as one line, no traceback."""


class ConfigError(UserError, ValueError):
    """A recipe, config file, override or command-line setting is malformed, unknown or out of range."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint or model folder could not be read, or does not fit the model."""


class DataError(UserError, ValueError):
    """Input data is missing, unreadable, empty or does not fit the model (non-finite values, wrong shape)."""
