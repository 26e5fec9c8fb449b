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


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of a library error's message, cut at `limit` characters, to quote in ours
    (the error's type when its message is empty)."""
    lines = str(error).splitlines()
    return (lines[0] if lines else type(error).__name__)[:limit]
