"""Dataset layouts: the registry, name and option checks, and layout detection.

One module per dataset family holds its listers (files on disk -> plain
``Record``s), their options and the test that recognises it:

- ``mvtec``: MVTec AD, MPDD, BTAD, MVTec LOCO, MVTec 3D-AD (one walker over
  ``<cls>/test/<defect>/`` folders);
- ``visa``: VisA's split CSV;
- ``realiad``: Real-IAD's JSON listings and ADer's ``meta.json``;
- ``folder``: your own folders.

``LAYOUT_NAMES``, ``normalise_layout`` and ``check_data_options`` let the
config layer validate ``data.layout`` and ``data.options`` when a config is
loaded, with the same messages as ``open_dataset``.
"""
from __future__ import annotations

import os

from ..errors import DataError, Problems, check_choice, did_you_mean, value_error
from ..records import Record
from . import folder, mvtec, realiad, visa
from .base import SPLITS, Layout, natural_key, subdirs

LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for module in (mvtec, visa, realiad, folder)
    for layout in module.LAYOUTS
}
LAYOUT_NAMES: tuple[str, ...] = tuple(LAYOUTS)

# Class-folder layouts in the order detection tries them: the specific ones
# first, since a LOCO class (say) is also shaped like an MVTec AD class.
_CLASS_ORDER = ("mvtec3d", "btad", "mvtec_loco", "mvtec")


def _squash(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def normalise_layout(name, key: str = "layout") -> str | None:
    """The registered name for ``name``, matched ignoring case, ``-``, ``_`` and
    spaces (``MVTec`` -> ``mvtec``, ``MVTec-LOCO`` -> ``mvtec_loco``); None stays
    None (detect from the files).

    Raises:
        DataError: ``<key>: unknown layout 'mvtech'; known: ... (did you mean mvtec?)``.
    """
    if name is None:
        return None
    if isinstance(name, str):
        for known in LAYOUT_NAMES:
            if _squash(known) == _squash(name):
                return known
    raise value_error(key, f"unknown layout {name!r}",
                      f"known: {', '.join(LAYOUT_NAMES)}{did_you_mean(name, LAYOUT_NAMES)}")


def check_data_options(layout, options, key: str = "options") -> dict:
    """Layout options checked by name and value; returns them normalised.

    ``layout`` None (to be detected) accepts any option some layout takes,
    each checked as that layout checks it; ``open_dataset`` checks again
    against the layout it detects.

    Raises:
        DataError: ``<key>: layout 'mvtec' takes no option 'views'; it takes: none``,
            ``<key>.views: 'X1' is not a camera view name; allowed: ...``.
    """
    layout = normalise_layout(layout)
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise value_error(key, f"{options!r} is not a mapping", "allowed: {option: value, ...}")
    if layout is None:
        every = {n: o for spec in LAYOUTS.values() for n, o in spec.options.items()}
        accepted = dict(sorted(every.items()))
    else:
        accepted = LAYOUTS[layout].options
    checked = {}
    for name, value in options.items():
        if name not in accepted:
            takes = ", ".join(accepted) or "none"
            wrong = (f"no layout takes an option {name!r}" if layout is None
                     else f"layout {layout!r} takes no option {name!r}")
            whose = "its options" if layout else "options of all layouts"
            raise value_error(key, wrong, f"{whose}: {takes}{did_you_mean(name, accepted)}")
        option = accepted[name]
        try:
            checked[name] = option.check(value)
        except (ValueError, TypeError) as exc:
            raise value_error(f"{key}.{name}", str(exc), f"allowed: {option.allowed}") from None
    return checked


def check_split(split, key: str = "split") -> str:
    return check_choice(split, SPLITS, key)


def _class_kind(folder: str) -> str | None:
    """The first class-folder layout whose predicate accepts ``folder``."""
    for name in _CLASS_ORDER:
        if LAYOUTS[name].is_class(folder):
            return name
    return None


def detect_layout(root) -> str:
    """Guess the layout from file names; an error says what was found when unsure.

    Raises:
        DataError: the folder is missing, or looks like no layout or several.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise DataError(f"{root}: dataset folder not found", root)
    found: dict[str, str] = {}
    for spec in LAYOUTS.values():
        hit = spec.marker(root) if spec.marker else None
        if hit:
            found[spec.name] = hit
    kinds: dict[str, list[str]] = {}
    for d in subdirs(root):
        kind = _class_kind(os.path.join(root, d))
        if kind is not None:
            kinds.setdefault(kind, []).append(d)
    for kind, dirs in kinds.items():
        found[kind] = "class folder(s) " + ", ".join(dirs[:5]) + (" ..." if len(dirs) > 5 else "")
    if len(found) == 1:
        return next(iter(found))
    if found:
        what = "; ".join(f"{k} ({v})" for k, v in found.items())
        raise DataError(
            f"{root}: ambiguous dataset layout, it looks like {what}; pass layout= one of {', '.join(found)}",
            root,
        )
    expected = "; ".join(f"{n}: {spec.expected}" for n, spec in LAYOUTS.items()
                         if spec.marker or spec.is_class)
    entries = sorted(os.listdir(root), key=natural_key)
    shown = ", ".join(entries[:12]) + (" ..." if len(entries) > 12 else "") or "nothing"
    raise DataError(
        f"{root}: unknown dataset layout; found {shown}. Expected one of: {expected}. "
        "For your own folders use layout='folder' with normal_dirs=..., defect_dirs=...",
        root,
    )


def list_records(root, layout: str | None, split: str, classes, problems: Problems, **options) -> list[Record]:
    """Records of one split for a layout (any case; None: detected); checks split and options first.

    Raises:
        DataError: a bad layout, split or option (one line naming it), a missing
            folder, or (with ``on_error="raise"``) the first listing problem.
    """
    root = os.fspath(root)
    layout = normalise_layout(layout) or detect_layout(root)
    split = check_split(split)
    options = check_data_options(layout, options)
    if not os.path.isdir(root):
        raise DataError(f"{root}: dataset folder not found", root)
    return LAYOUTS[layout].lister(root, split, classes, problems, **options)


__all__ = [
    "LAYOUTS",
    "LAYOUT_NAMES",
    "SPLITS",
    "Layout",
    "check_data_options",
    "check_split",
    "detect_layout",
    "list_records",
    "normalise_layout",
]
