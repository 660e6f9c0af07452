"""Operator-confirmed parts as a dataset (`mtad review export DB --out DIR`).

Rows an operator marked (``POST /api/inspections/{id}/review``) whose image was kept
are copied into the MVTec AD layout, which `mtad train`, `mtad test` and
`mtad finetune --add-good` read without options:

* ``DIR/<class_name>/train/good/<id>.png``: confirmed good (the model's false rejects),
* ``DIR/<class_name>/test/defect/<id>.png``: confirmed defects, without masks (the
  MVTec reader reads a defect folder that has no ``ground_truth/`` folder without
  masks: image metrics only for such a class).

File names are the log's row ids, so exporting again into the same folder adds the
newly marked parts and rewrites nothing twice. Rows without a kept image (``--keep
none``, pruned by ``--keep-days``) or without a class (pooled thresholds; name
one with ``class_name``) cannot be exported and are counted.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from .log import InspectionLog, LogError, export_rows

FOLDERS = {"good": ("train", "good"), "defect": ("test", "defect")}
_SAFE_CLASS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\- ]*$")


def export_reviewed(db: str | Path, out: str | Path, class_name: str | None = None) -> dict:
    """Copy the reviewed parts of log ``db`` into ``out`` (layout in the module docstring).

    Args:
        db: the inspection log.
        out: the dataset folder (created; existing files of other ids are left alone).
        class_name: the class for rows logged without one (default: they are skipped).

    Returns:
        {"written": {class: {"good": n, "defect": n}}, "no_image": n, "no_class": n}.

    Raises:
        LogError: the log cannot be opened, or a class name is not a safe folder name.
    """
    out = Path(out)
    summary = {"written": {}, "no_image": 0, "no_class": 0}
    with InspectionLog(db, readonly=True) as log:
        rows = [r for review in ("good", "defect") for r in export_rows(log, review=review)]
        images = log.images
    for row in sorted(rows, key=lambda r: r["id"]):
        cls = row["class_name"] or class_name
        if not cls:
            summary["no_class"] += 1
            continue
        if not _SAFE_CLASS.match(cls) or cls in (".", ".."):
            raise LogError(f"class name {cls!r} (row {row['id']}) is not a folder name")
        src = images / row["image_file"] if row["image_file"] else None
        if src is None or not src.is_file():
            summary["no_image"] += 1
            continue
        folder = out.joinpath(cls, *FOLDERS[row["review"]])
        folder.mkdir(parents=True, exist_ok=True)
        other = out.joinpath(cls, *FOLDERS["defect" if row["review"] == "good" else "good"],
                             f"{row['id']}.png")
        if other.exists():      # re-marked since the last export: it moves
            os.remove(other)
        shutil.copyfile(src, folder / f"{row['id']}.png")
        counts = summary["written"].setdefault(cls, {"good": 0, "defect": 0})
        counts[row["review"]] += 1
    return summary
