"""Text from user input (file names, upload names, class names) written into files people
open: CSV tables and pages. numpy-free, torch-free (the server uses it).

Two rules, one home each:

- ``printable``: a file name is bytes on Linux; one that is not UTF-8 (a latin-1
  ``caf\\xe9.png`` from an old zip) reaches Python as lone surrogates, which no UTF-8 file
  can hold. It is written with Python's ``backslashreplace`` (``caf\\xe9.png``): the
  byte stays visible and every other name round-trips unchanged.
- ``csv_cell``: a spreadsheet runs a cell starting with ``=``, ``+``, ``-``, ``@``, tab or
  carriage return as a formula (CSV injection, OWASP). Such a cell gets a leading
  apostrophe (``'=1+2.png``), which spreadsheets show as text; plain numbers
  (``-0.25``, ``+1e-3``) are left as they are. Every CSV mtad writes goes through
  ``write_csv``; the serve page's own CSV download (static/app.js, ``csvCell``) follows
  the same rule.
"""
from __future__ import annotations

import csv
import os
import re
from pathlib import Path

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def printable(text) -> str:
    """A path, or a message naming one, as text any UTF-8 file or terminal holds: bytes
    of a file name that are not UTF-8 as ``\\xNN``, everything else unchanged."""
    return os.fsencode(os.fspath(text) if isinstance(text, os.PathLike) else str(text)).decode(
        "utf-8", "backslashreplace")


def csv_cell(value):
    """``value`` as a CSV cell a spreadsheet will not run: a text starting with one of
    `FORMULA_START` gets a leading apostrophe, unless it is a plain number. Non-text
    values (numbers, None) and other text pass unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def write_csv(path: str | Path, fields: list[str], rows: list[dict], append: bool = False) -> None:
    """Write (or, with ``append``, add to) a UTF-8 CSV table: a header when the file is
    new, then ``rows`` with every cell through `csv_cell`."""
    path = Path(path)
    new = not (append and path.exists())
    with open(path, "a" if append else "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerows({k: csv_cell(v) for k, v in row.items()} for row in rows)
