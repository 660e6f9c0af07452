"""Errors and the raise-or-skip policy shared by every listing and reading step.

Bad files in real datasets are common (a missing mask, a truncated JPEG), so
each problem is reported once, naming the file, and the caller decides whether
it stops the run (``on_error="raise"``) or is skipped with a warning
(``on_error="skip"``).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

ON_ERROR = ("raise", "skip")


class DataError(ValueError):
    """A dataset file or folder is missing, unreadable or inconsistent.

    ``path`` is the file the message is about (also named in the message), so
    callers can collect or display it without parsing text.
    """

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = None if path is None else str(path)


class DataWarning(UserWarning):
    """A problem that was skipped because ``on_error="skip"``."""


@dataclass(frozen=True)
class Problem:
    """One skipped file and why it was skipped."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def check_on_error(on_error: str) -> str:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    return on_error


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
