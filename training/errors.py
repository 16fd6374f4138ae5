"""Errors raised by `training`. The CLI prints them as one line and exits non-zero."""

from zoo.errors import ZooError


class TrainingError(ZooError):
    """Base class of every error `training` raises on purpose."""


class DataNotFoundError(TrainingError, FileNotFoundError):
    """A data set is not where we looked."""


class ConfigError(TrainingError, ValueError):
    """An option has a value that cannot work (unknown method, bad batch size, ...)."""


class CheckpointError(TrainingError, ValueError):
    """A checkpoint is missing, truncated, corrupt, or from another run."""
