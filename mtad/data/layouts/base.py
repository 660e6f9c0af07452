"""What every layout module shares: the ``Layout`` entry, option checks, folder helpers.

Listers only look at names (directory listings, split files); they never open
an image, so listing is fast even for Real-IAD's 151,050 files. Masks are
paired with images by file stem, never by sorted position, because sorted
orders differ (``10.png`` sorts before ``2.png``, ``10_mask.png`` after
``1_mask.png``). Problems found while listing (a missing mask, a split entry
naming a missing file, a class folder without images) go to a ``Problems``
collector, which raises or skips according to ``on_error``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from ..errors import DataError, Problems
from ..imageio import is_image_file
from ..records import NORMAL, Record

SPLITS = ("train", "test")


# --------------------------------------------------------------------------- the registry entry


@dataclass(frozen=True)
class Option:
    """One layout option: ``check`` returns the value to use or raises ValueError
    saying what is wrong; ``allowed`` says what is accepted."""

    check: Callable[[Any], Any]
    allowed: str


@dataclass(frozen=True)
class Layout:
    """A dataset layout: its lister, options and how to recognise it.

    ``lister(root, split, classes, problems, **options) -> list[Record]``.
    A layout is recognised either by its class folders (``is_class(folder)``,
    the same predicate its lister uses to find classes) or by a file at the
    root (``marker(root)`` returns what it found, or None).
    """

    name: str
    lister: Callable[..., list[Record]]
    expected: str
    options: dict[str, Option] = field(default_factory=dict)
    is_class: Callable[[str], bool] | None = None
    marker: Callable[[str], str | None] | None = None


# --------------------------------------------------------------------------- option checks


def check_bool(value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{value!r} is not true or false")
    return value


def check_text(value) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{value!r} is not a non-empty string")
    return value


def check_paths(value):
    """One folder or a list of folders."""
    items = [value] if isinstance(value, (str, os.PathLike)) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise ValueError(f"{value!r} is not a folder path or a list of them")
    for item in items:
        if not isinstance(item, (str, os.PathLike)) or not os.fspath(item):
            raise ValueError(f"{item!r} is not a folder path")
    return value


def check_path_map(value):
    """One folder, a list of folders, or a dict {defect name: folder}."""
    if isinstance(value, dict):
        for name, path in value.items():
            check_paths(path)
        return value
    return check_paths(value)


# --------------------------------------------------------------------------- folder helpers


def natural_key(name: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def subdirs(path: str) -> list[str]:
    try:
        with os.scandir(path) as it:
            names = [e.name for e in it if e.is_dir() and not e.name.startswith(".")]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(names, key=natural_key)


def images(path: str) -> list[str]:
    """Image files directly inside ``path`` (full paths), in natural order."""
    try:
        with os.scandir(path) as it:
            names = [e.name for e in it if e.is_file() and is_image_file(e.name)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [os.path.join(path, n) for n in sorted(names, key=natural_key)]


def has_images(*parts: str) -> bool:
    try:
        with os.scandir(os.path.join(*parts)) as it:
            return any(e.is_file() and is_image_file(e.name) for e in it)
    except (FileNotFoundError, NotADirectoryError):
        return False


def isdir(*parts: str) -> bool:
    return os.path.isdir(os.path.join(*parts))


def stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def stem_index(path: str) -> dict[str, str]:
    """Map file stem -> full path for the images in ``path`` (one scan per folder)."""
    index: dict[str, str] = {}
    for p in images(path):
        # Prefer PNG when a stem exists in several formats.
        s = stem(p)
        if s not in index or p.lower().endswith(".png"):
            index[s] = p
    return index


def mask_for(index: dict[str, str], image_stem: str, suffixes=("_mask", "")) -> str | None:
    for suffix in suffixes:
        hit = index.get(image_stem + suffix)
        if hit is not None:
            return hit
    return None


def as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [value]
    return list(value)


def choose_classes(available: Iterable[str], classes, root, layout: str, expected: str) -> list[str]:
    """The classes to load: all of ``available`` when ``classes`` is None.

    An unknown name is an error that lists the available classes.
    """
    available = sorted(set(available))
    if not available:
        raise DataError(
            f"{root}: no classes found for layout {layout!r}; expected {expected}", str(root)
        )
    if classes is None:
        return available
    wanted = [classes] if isinstance(classes, str) else list(classes)
    unknown = [c for c in wanted if c not in available]
    if unknown:
        raise DataError(
            f"{root}: unknown class(es) {', '.join(map(repr, unknown))} for layout {layout!r}; "
            f"available: {', '.join(available)}",
            str(root),
        )
    return sorted(set(wanted))


def normal_records(paths, cls) -> list[Record]:
    return [Record(p, (), 0, cls, NORMAL) for p in paths]


def listed_mask(problems: Problems, image: str, base: str, rel, source: str, absent: str):
    """The mask a split file names for an anomalous image, or None, reported, when the
    listing gives none (``absent`` says how) or the file does not exist."""
    mask = os.path.join(base, str(rel)) if rel else ""
    if not mask or not os.path.isfile(mask):
        problems.report(image, f"anomalous image has no mask file {mask or absent} (named in {source})")
        return None
    return mask


def report_empty(problems: Problems, folder: str, what: str) -> None:
    problems.report(folder, f"class folder has no images ({what})")
