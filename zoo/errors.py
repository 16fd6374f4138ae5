"""Exceptions raised by `zoo`. Each message says what was wrong and what to do about it."""


class ZooError(Exception):
    """Base class of every error `zoo` raises on purpose."""


class UnknownArchitectureError(ZooError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnknownModelError(ZooError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ArchitectureMismatchError(ZooError, ValueError):
    """Weights written for one architecture were loaded as another."""


class ModelFolderError(ZooError, ValueError):
    """A model folder is missing a file, or a file in it is unreadable."""


class WeightsUnavailableError(ZooError, FileNotFoundError):
    """Weights are not in the cache and cannot be downloaded (offline, or no network)."""


class ChecksumMismatchError(ZooError, ValueError):
    """A downloaded file's sha256 differs from the one the registry expects."""


class UnsafeCheckpointError(ZooError, ValueError):
    """A checkpoint needs arbitrary unpickling, which we refuse."""
