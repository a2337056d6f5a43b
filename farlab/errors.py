"""farlab's error types, at the bottom of the import graph so every layer can raise them.

Each one says what is wrong and how to fix it; the CLI prints the message without a traceback's noise.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value farlab refuses, raised before any model loads."""


class DataError(ValueError):
    """A data file is missing, malformed or holds values outside the task's label set."""


class RunDirError(ValueError):
    """A run dir that cannot be read as a finished run (missing, unfinished, or its final/ removed)."""


class RunDirBusy(RuntimeError):
    """Another live process holds the run dir's lock: this one must not train into it."""
