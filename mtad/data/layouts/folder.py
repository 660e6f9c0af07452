"""Your own folders: one class, normal and defective images, optional masks by stem."""
from __future__ import annotations

import os
import warnings

from ..errors import DataError, DataWarning, Problems
from ..records import NORMAL, Record
from .base import (
    Layout,
    Option,
    as_list,
    check_path_map,
    check_paths,
    check_text,
    choose_classes,
    images,
    mask_for,
    normal_records,
    report_empty,
    stem,
    stem_index,
    subdirs,
)

EXPECTED = "folders given by normal_dirs=, defect_dirs=, mask_dirs="


def list_folder(
    root: str,
    split: str,
    classes,
    problems: Problems,
    normal_dirs=None,
    defect_dirs=None,
    mask_dirs=None,
    test_normal_dirs=None,
    class_name: str | None = None,
) -> list[Record]:
    """A custom set of one class, given as folders (relative paths resolve against root).

    - train: the images of ``normal_dirs`` (one folder or a list; default
      ``<root>/train/good`` or ``<root>/good``);
    - test: the images of ``test_normal_dirs`` (label 0; default
      ``<root>/test/good`` when it exists) and of ``defect_dirs`` (label 1), a
      dict ``{defect name: folder}`` or folders named after their defect
      (default: every other folder of ``<root>/test``);
    - masks: ``mask_dirs`` (folder, list, or dict by defect name) hold
      ``<stem>.png`` or ``<stem>_mask.png``, directly or in a ``<defect>/``
      sub-folder. Without ``mask_dirs`` defect images have no masks (the
      dataset's ``has_masks`` is False and pixel metrics cannot be computed).
      With ``mask_dirs`` a defect image without a mask is an error.

    A test split without normal images gets a warning: image-level metrics
    need both kinds.
    """
    def resolve(p) -> str:
        p = os.fspath(p)
        return p if os.path.isabs(p) else os.path.join(root, p)

    name = class_name or os.path.basename(os.path.normpath(os.path.abspath(root))) or "custom"
    choose_classes([name], classes, root, "folder", EXPECTED)
    test_root = os.path.join(root, "test")
    if split == "train":
        dirs = [resolve(d) for d in as_list(normal_dirs)]
        if not dirs:
            dirs = [d for d in (os.path.join(root, "train", "good"), os.path.join(root, "good")) if os.path.isdir(d)][:1]
        if not dirs:
            raise DataError(f"{root}: folder layout needs normal_dirs=... (no train/good or good folder)", root)
        records: list[Record] = []
        for d in dirs:
            imgs = images(d)
            if not imgs:
                report_empty(problems, d, "normal images")
            records += normal_records(imgs, name)
        return records

    normal = [resolve(d) for d in as_list(test_normal_dirs)]
    if test_normal_dirs is None and os.path.isdir(os.path.join(test_root, NORMAL)):
        normal = [os.path.join(test_root, NORMAL)]
    if isinstance(defect_dirs, dict):
        defects = [(str(k), resolve(v)) for k, v in defect_dirs.items()]
    elif defect_dirs is not None:
        defects = [(os.path.basename(os.path.normpath(resolve(d))), resolve(d)) for d in as_list(defect_dirs)]
    else:
        defects = [(d, os.path.join(test_root, d)) for d in subdirs(test_root) if d != NORMAL]
    if not defects and not normal:
        raise DataError(f"{root}: folder layout needs defect_dirs=... and test_normal_dirs=... for the test split", root)

    records = []
    for d in normal:
        imgs = images(d)
        if not imgs:
            report_empty(problems, d, "test normal images")
        records += normal_records(imgs, name)
    if not normal:
        warnings.warn(
            f"{root}: folder test split has no normal images (pass test_normal_dirs=...); "
            "image-level metrics need both normal and defect images",
            DataWarning,
            stacklevel=4,
        )
    if isinstance(mask_dirs, dict):
        mask_lookup = {str(k): [resolve(v)] for k, v in mask_dirs.items()}
        flat: list[str] = []
    else:
        mask_lookup = {}
        flat = [resolve(d) for d in as_list(mask_dirs)]
    use_masks = mask_dirs is not None
    indexes: dict[str, dict[str, str]] = {}

    def index(folder: str) -> dict[str, str]:
        if folder not in indexes:
            indexes[folder] = stem_index(folder)
        return indexes[folder]

    for defect, d in defects:
        imgs = images(d)
        if not imgs:
            report_empty(problems, d, f"defect {defect!r}")
        # The defect's own sub-folder first: flat folders may repeat stems.
        search = mask_lookup.get(defect, []) + [os.path.join(f, defect) for f in flat] + flat
        for p in imgs:
            if not use_masks:
                records.append(Record(p, (), 1, name, defect))
                continue
            m = next((hit for f in search if (hit := mask_for(index(f), stem(p))) is not None), None)
            if m is None:
                where = ", ".join(search) or "(no mask folder for this defect)"
                problems.report(p, f"anomalous image has no mask <stem>.png or <stem>_mask.png in {where}")
                continue
            records.append(Record(p, (m,), 1, name, defect))
    return records


_FOLDERS = "a folder or a list of folders (relative to the root or absolute)"
LAYOUTS = [
    Layout("folder", list_folder, EXPECTED, {
        "normal_dirs": Option(check_paths, _FOLDERS),
        "defect_dirs": Option(check_path_map, _FOLDERS + ", or {defect name: folder}"),
        "mask_dirs": Option(check_path_map, _FOLDERS + ", or {defect name: folder}"),
        "test_normal_dirs": Option(check_paths, _FOLDERS),
        "class_name": Option(check_text, "a class name"),
    }),
]
