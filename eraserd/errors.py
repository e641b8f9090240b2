"""Exceptions a user can act on. The CLI prints ``str(exc)`` as one line and exits non-zero."""


class EraserdError(Exception):
    """Base class for every error eraserd reports to a user."""

    exit_code = 1


class ConfigError(EraserdError):
    """The configuration file is missing, malformed or holds an invalid value."""

    exit_code = 2


class DataError(EraserdError):
    """Private data could not be ingested: nothing was written."""

    exit_code = 3


class UnknownIdError(EraserdError):
    """A request named ids that are not in the live store: nothing was changed."""

    exit_code = 4

    def __init__(self, message: str, unknown: list[str] | None = None):
        super().__init__(message)
        self.unknown = list(unknown or [])


class RegistryError(EraserdError):
    """The registry is missing, corrupt or inconsistent."""

    exit_code = 5


class CorruptBlobError(RegistryError):
    """A stored blob does not match its content hash."""
