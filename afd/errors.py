"""Errors raised for bad user input: each names the thing that is wrong and why."""


class AFDError(Exception):
    """Base class for every error this package raises on purpose."""


class ImageLoadError(AFDError):
    """An image file could not be used; the message names the file and the problem."""

    def __init__(self, path, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class WeightsNotFoundError(AFDError):
    """A weights file that a model needs is missing or unreadable."""


class ConfigError(AFDError):
    """A parameter (backbone name, tap, quality factor, ...) has an invalid value."""
