"""Errors a user can act on: each names the file or field and what was expected."""


class VislmError(Exception):
    """Base class of every error vislm raises on purpose."""


class DataError(VislmError, ValueError):
    """A data file, record or field is missing, unreadable or malformed."""


class ConfigError(VislmError, ValueError):
    """A configuration key is unknown or a value has the wrong type."""


class CheckpointError(VislmError, ValueError):
    """A checkpoint or saved model is missing, incomplete or corrupt."""
