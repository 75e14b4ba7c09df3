"""Errors a user can cause, and how they reach the terminal.

Anything a user can get wrong (a missing file, a bad config value, a table without its label column)
raises `TunepipeError` with one line that says what is wrong and where. The CLI prints that line and
exits non-zero; a traceback is only for bugs.
"""


class TunepipeError(Exception):
    """A problem with the user's input, config or environment, explained in one line."""


class ConfigError(TunepipeError):
    """The pipeline configuration is invalid."""


class DataError(TunepipeError):
    """The input data cannot be used as it is."""
