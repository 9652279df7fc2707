"""Errors that name the problem and its fix."""


class WMJError(Exception):
    """Base class for every error this package raises on purpose."""


class ConfigError(WMJError, ValueError):
    """An invalid configuration value; the message says which field and what is allowed."""


class ShapeError(WMJError, ValueError):
    """An array of the wrong shape or dtype reached a boundary."""


class EnvError(WMJError, ValueError):
    """An environment that cannot be used the way it was asked to be."""


class DatasetError(WMJError, IOError):
    """A missing, incomplete or corrupt dataset on disk."""


class CheckpointError(WMJError, IOError):
    """A missing or unreadable checkpoint."""


class NonFiniteError(WMJError, FloatingPointError):
    """A NaN or infinity appeared where it must not; the run stopped instead of continuing poisoned."""


def check(condition: bool, error: type[WMJError], message: str) -> None:
    """Raise `error(message)` unless `condition` holds (host-side validation helper)."""
    if not condition:
        raise error(message)
