"""Errors that the CLI reports as one clear line (user mistakes, bad data, bad files)."""


class CustomGPTError(Exception):
    """A user-facing error: bad input, a bad config, a missing or corrupt file.

    The CLI prints ``error: <message>`` and exits with status 2 instead of a traceback.
    """


class ConfigError(CustomGPTError, ValueError):
    """An invalid configuration value; the message names the key."""


class CheckpointError(CustomGPTError):
    """A checkpoint that is missing, corrupt, or does not match the model; names the tensor or file."""


class DataError(CustomGPTError, ValueError):
    """Bad data: the message names the file and, where it applies, the line."""
