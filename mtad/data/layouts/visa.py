"""VisA: a split file (``split_csv/1cls.csv``) names every image and mask.

Columns ``object,split,label,image,mask``, paths relative to the root; labels
``normal`` or ``anomaly``. VisA masks hold small region values (1, 2, ...),
not 255: ``read_mask`` counts them as defects.
"""
from __future__ import annotations

import csv
import os

from ..errors import DataError, Problems
from ..records import NORMAL, Record
from .base import Layout, Option, check_text, choose_classes, isdir, listed_mask

EXPECTED = "split_csv/1cls.csv and <cls>/Data/Images/{Normal,Anomaly}/*.JPG"


def read_csv(path: str, required: tuple[str, ...]) -> list[dict]:
    """The rows of a CSV file with a header holding ``required`` columns (stripped values)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in fields]
            if missing:
                raise DataError(
                    f"{path}: split file lacks column(s) {', '.join(missing)} "
                    f"(found: {', '.join(fields) or 'nothing'})",
                    path,
                )
            return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except FileNotFoundError:
        raise DataError(f"{path}: split file not found", path) from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read split file ({exc})", path) from None


def _defect_names(root: str, cls: str) -> dict[str, str]:
    """Defect types from the optional ``<cls>/image_anno.csv`` (image -> label)."""
    path = os.path.join(root, cls, "image_anno.csv")
    if not os.path.isfile(path):
        return {}
    rows = read_csv(path, ("image", "label"))
    return {os.path.normpath(r["image"]): r["label"] for r in rows if r["image"] and r["label"]}


def list_visa(
    root: str, split: str, classes, problems: Problems, split_file: str = "split_csv/1cls.csv"
) -> list[Record]:
    """Rows of ``split_csv/1cls.csv`` (object,split,label,image,mask; paths relative to root).

    Defect types come from ``<cls>/image_anno.csv`` when present, else "anomaly".
    """
    csv_path = split_file if os.path.isabs(split_file) else os.path.join(root, split_file)
    rows = read_csv(csv_path, ("object", "split", "label", "image", "mask"))
    chosen = choose_classes({r["object"] for r in rows if r["object"]}, classes, root, "visa", EXPECTED)
    wanted = set(chosen)
    names = {cls: _defect_names(root, cls) for cls in chosen}
    records: list[Record] = []
    seen: set[str] = set()
    for line, row in enumerate(rows, start=2):
        cls = row["object"]
        if row["split"] != split or cls not in wanted:
            continue
        label = row["label"].lower()
        if label not in ("normal", "anomaly"):
            problems.report(csv_path, f"line {line}: label {row['label']!r} is neither 'normal' nor 'anomaly'")
            continue
        image = os.path.join(root, row["image"])
        if not row["image"] or not os.path.isfile(image):
            problems.report(image, f"image file is missing (named in {csv_path} line {line})")
            continue
        seen.add(cls)
        if label == "normal":
            records.append(Record(image, (), 0, cls, NORMAL))
            continue
        mask = listed_mask(problems, image, root, row["mask"], f"{csv_path} line {line}", "(empty mask column)")
        if mask is None:
            continue
        defect = names[cls].get(os.path.normpath(row["image"]), "anomaly")
        records.append(Record(image, (mask,), 1, cls, defect))
    for cls in sorted(wanted - seen):
        problems.report(csv_path, f"class {cls!r} has no usable {split} images in the split file")
    return records


def _marker(root: str) -> str | None:
    return "split_csv/" if isdir(root, "split_csv") else None


LAYOUTS = [
    Layout("visa", list_visa, EXPECTED,
           {"split_file": Option(check_text, "a CSV path, relative to the root or absolute")},
           marker=_marker),
]
