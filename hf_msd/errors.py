"""The errors about the user's own input or setup, as opposed to bugs.

A :class:`UserInputError` says what in the user's flags, config file, data or output folder cannot work,
naming the flag (or the file, row and column) and the fix. ``examples/run_msd.py`` prints it as one
``run_msd.py: error: ...`` message instead of a traceback; any other exception is a bug and keeps its
traceback. Imports nothing of hf_msd, so every layer can raise it.
"""


class UserInputError(Exception):
    """Base of the errors about the user's input or setup; the message names the flag and the fix."""


class InputValueError(UserInputError, ValueError):
    """A flag or config value that cannot work (a ValueError, as the argument dataclasses' checks raise)."""
