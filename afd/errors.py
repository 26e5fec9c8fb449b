"""Errors raised for bad user input: each names the thing that is wrong and why, on one line."""

import re


class AFDError(Exception):
    """Base class for every error this package raises on purpose."""


class ImageLoadError(AFDError):
    """An image file could not be used; the message names the file and the problem."""

    def __init__(self, path, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"{display_name(path)}: {reason}")


class WeightsNotFoundError(AFDError):
    """A weights file that a model needs is missing or unreadable."""


class ConfigError(AFDError):
    """A parameter (backbone name, tap, quality factor, ...) has an invalid value."""


class TrainingError(AFDError):
    """A trained method did not learn: it ended at the identity, or with most of its channels dead."""


class OutputError(AFDError):
    """An output file could not be written (a folder in the way, no such parent, disk full...)."""


def display_name(path) -> str:
    """A file name or URL as messages quote it: as it is, unless it holds characters that would
    break the one-line message (newlines, other control characters), then Python-quoted with the
    escapes shown; a URL's credentials are redacted."""
    name = redact(str(path))
    return name if name.isprintable() else repr(name)


# Up to the last "@" before the path: a password may hold an unescaped "@".
_USER_INFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s]+@")


def redact(text: str) -> str:
    """`text` with the user-info of every URL in it (`user:password@`) replaced by `***@`."""
    return _USER_INFO.sub(r"\g<scheme>***@", text)


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of a library error's message, cut at `limit` characters and with URL
    credentials redacted, to quote in ours (the error's type when its message is empty)."""
    lines = str(error).splitlines()
    return redact(lines[0] if lines else type(error).__name__)[:limit]
