"""Errors, value checks and the raise-or-skip policy shared by every data step.

Bad files in real datasets are common (a missing mask, a truncated JPEG), so
each problem is reported once, naming the file, and the caller decides whether
it stops the run (``on_error="raise"``) or is skipped with a warning
(``on_error="skip"``).

Bad argument values are ``DataError``s too, with one-line messages of the form
``<key>: <what is wrong>; <what is allowed>``. Each check takes the ``key`` to
name, so the config layer can call the same check with its own dotted key
(``data.on_error``) and get the same message.
"""
from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass

ON_ERROR = ("raise", "skip")


class DataError(ValueError):
    """A dataset file or folder is missing, unreadable or inconsistent, or a data
    argument has a bad value.

    ``path`` is the file the message is about (also named in the message), so
    callers can collect or display it without parsing text; None for bad values.
    """

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = None if path is None else str(path)


class ImageTooLarge(DataError):
    """An image over a pixel limit (a caller's ``max_pixels`` or PIL's
    decompression-bomb limit), found from its header before decoding."""


class DataWarning(UserWarning):
    """A problem that was skipped because ``on_error="skip"``, or a file worth a note
    (a mask in a lossy format)."""


@dataclass(frozen=True)
class Problem:
    """One skipped file and why it was skipped."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def value_error(key: str, wrong: str, allowed: str) -> DataError:
    """The one-line ``<key>: <what is wrong>; <what is allowed>`` error."""
    return DataError(f"{key}: {wrong}; {allowed}")


def did_you_mean(value, choices) -> str:
    """`` (did you mean X?)`` when difflib finds a close choice, else ``""``."""
    close = difflib.get_close_matches(str(value).lower(), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def check_choice(value, choices, key: str) -> str:
    """``value`` as one of ``choices`` (matched case-insensitively), or a DataError."""
    if isinstance(value, str):
        lowered = value.strip().lower()
        for choice in choices:
            if choice.lower() == lowered:
                return choice
    raise value_error(key, f"unknown value {value!r}", f"allowed: {', '.join(choices)}{did_you_mean(value, choices)}")


def check_on_error(on_error, key: str = "on_error") -> str:
    """``"raise"`` or ``"skip"`` (any case); anything else is a DataError."""
    return check_choice(on_error, ON_ERROR, key)


def check_positive_int(value, key: str) -> int:
    """A positive integer (an integral float such as 256.0 is accepted; bool is not)."""
    ok = (not isinstance(value, bool) and isinstance(value, (int, float))
          and float(value).is_integer() and value >= 1)
    if not ok:
        raise value_error(key, f"{value!r} is not a positive integer", "allowed: an integer >= 1")
    return int(value)


class Problems:
    """Collects problems; raises at the first one unless told to skip."""

    def __init__(self, on_error: str = "raise"):
        self.on_error = check_on_error(on_error)
        self.items: list[Problem] = []

    def report(self, path, reason: str) -> None:
        """Raise a DataError, or warn and remember the problem when skipping."""
        path = str(path)
        if self.on_error == "raise":
            raise DataError(f"{path}: {reason}", path)
        self.items.append(Problem(path, reason))
        warnings.warn(f"skipping {path}: {reason}", DataWarning, stacklevel=3)

    def summarise(self, what: str, start: int = 0) -> None:
        """One closing warning with the count of problems since ``start``."""
        n = len(self.items) - start
        if n:
            warnings.warn(
                f"{what}: skipped {n} file(s) with problems (see dataset.skipped)",
                DataWarning,
                stacklevel=3,
            )
