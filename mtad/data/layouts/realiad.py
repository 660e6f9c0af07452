"""Layouts whose split files are JSON: Real-IAD and ADer's ``meta.json``.

Real-IAD: ``realiad_jsons/<variant>/<cls>.json`` lists items resolved under
``realiad_<resolution>/<cls>/``, five camera views (C1..C5) per sample. ADer
rewrites any dataset as ``meta.json``: ``{split: {cls: [items]}}``.
"""
from __future__ import annotations

import json
import os
import re

from ..errors import DataError, Problems
from ..records import NORMAL, Record
from .base import SPLITS, Layout, Option, check_text, choose_classes, isdir, listed_mask, subdirs

EXPECTED = "realiad_<res>/<cls>/{OK,NG}/... and realiad_jsons/<variant>/<cls>.json"


def check_views(value) -> tuple[str, ...]:
    """Camera view names: ``"C1"`` or a list such as ``["C1", "C3"]`` (any case) -> ("C1", "C3")."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple, set)) or not items:
        raise ValueError(f"{value!r} is not a view name or a list of them")
    out = []
    for v in items:
        if not isinstance(v, str) or not re.fullmatch(r"[cC]\d+", v.strip()):
            raise ValueError(f"{v!r} is not a camera view name")
        out.append(v.strip().upper())
    return tuple(out)


def check_resolution(value) -> str:
    """The ``<res>`` of a ``realiad_<res>`` folder: 1024, "512", "raw", ..."""
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip():
        raise ValueError(f"{value!r} is not a resolution")
    return str(value).strip()


_VIEW = re.compile(r"_(C\d+)_")


def _realiad_resolution(root: str, resolution) -> str:
    found = sorted(d[len("realiad_"):] for d in subdirs(root) if d.startswith("realiad_") and d != "realiad_jsons")
    if resolution is not None:
        folder = os.path.join(root, f"realiad_{resolution}")
        if not os.path.isdir(folder):
            raise DataError(
                f"{folder}: Real-IAD image folder not found; found resolutions: {', '.join(found) or 'none'}",
                folder,
            )
        return folder
    if not found:
        raise DataError(f"{root}: no Real-IAD image folder (realiad_<resolution>/) found", root)
    # Several resolutions: the official protocol reads the 1024 px release.
    pick = found[0] if len(found) == 1 else ("1024" if "1024" in found else None)
    if pick is None:
        raise DataError(
            f"{root}: several Real-IAD image folders ({', '.join('realiad_' + f for f in found)}); "
            "pass resolution=...",
            root,
        )
    return os.path.join(root, f"realiad_{pick}")


def _realiad_jsons(root: str, variant) -> str:
    base = os.path.join(root, "realiad_jsons")
    if not os.path.isdir(base):
        raise DataError(f"{base}: Real-IAD json folder not found", base)
    if variant is not None:
        folder = variant if os.path.isabs(variant) else os.path.join(base, variant)
        if not os.path.isdir(folder):
            raise DataError(
                f"{folder}: Real-IAD json folder not found; found: {', '.join(subdirs(base)) or 'none'}",
                folder,
            )
        return folder
    if any(n.endswith(".json") for n in os.listdir(base)):
        return base
    variants = [d for d in subdirs(base) if any(n.endswith(".json") for n in os.listdir(os.path.join(base, d)))]
    if len(variants) == 1:
        return os.path.join(base, variants[0])
    if "realiad_jsons" in variants:  # the standard multi-class (all views) split
        return os.path.join(base, "realiad_jsons")
    raise DataError(
        f"{base}: {'several' if variants else 'no'} json variants found "
        f"({', '.join(variants) or 'no *.json files'}); pass variant=...",
        base,
    )


def _load_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found", path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read json ({exc})", path) from None


def list_realiad(
    root: str,
    split: str,
    classes,
    problems: Problems,
    resolution=None,
    variant=None,
    views=None,
) -> list[Record]:
    """``realiad_jsons/<variant>/<cls>.json`` items resolved under ``realiad_<resolution>/<cls>/``.

    ``views`` keeps only the given camera views (e.g. ``("C1",)``);
    ``resolution`` picks ``realiad_<resolution>`` (default: the only one, or
    1024); ``variant`` the json folder (default: the only one, or
    ``realiad_jsons``).
    """
    images_root = _realiad_resolution(root, resolution)
    json_dir = _realiad_jsons(root, variant)
    if views is not None:
        views = set(check_views(views))
    available = [n[:-5] for n in os.listdir(json_dir) if n.endswith(".json")]
    records: list[Record] = []
    for cls in choose_classes(available, classes, root, "realiad", EXPECTED):
        path = os.path.join(json_dir, cls + ".json")
        data = _load_json(path)
        if not isinstance(data, dict) or not isinstance(data.get(split), list):
            raise DataError(f"{path}: expected a json object with a {split!r} list", path)
        normal = str((data.get("meta") or {}).get("normal_class", "OK"))
        items = data[split]
        cls_dir = os.path.join(images_root, cls)
        if not os.path.isdir(cls_dir):
            problems.report(cls_dir, f"class image folder is missing (listed in {path})")
            continue
        # Paths are relative to realiad_<res>/<cls>/; tolerate a leading "<cls>/".
        base = cls_dir
        if items and isinstance(items[0], dict):
            first = str(items[0].get("image_path", ""))
            if first.startswith(cls + "/") and not os.path.isfile(os.path.join(cls_dir, first)):
                base = images_root
        n = len(records)
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not item.get("image_path"):
                problems.report(path, f"{split} item {i} has no image_path")
                continue
            rel = str(item["image_path"])
            if views is not None:
                m = _VIEW.search(os.path.basename(rel))
                if m is None or m.group(1) not in views:
                    continue
            image = os.path.join(base, rel)
            if not os.path.isfile(image):
                problems.report(image, f"image file is missing (named in {path}, {split} item {i})")
                continue
            defect = str(item.get("anomaly_class", normal))
            if defect == normal:
                records.append(Record(image, (), 0, cls, NORMAL))
                continue
            mask = listed_mask(problems, image, base, item.get("mask_path"), path, "(no mask_path)")
            if mask is None:
                continue
            records.append(Record(image, (mask,), 1, cls, defect))
        if len(records) == n:
            only = "" if views is None else f" of views {', '.join(sorted(views))}"
            problems.report(path, f"class {cls!r} has no usable {split} images{only}")
    return records


# --------------------------------------------------------------------------- ADer meta.json

ADER_EXPECTED = "meta.json with {'train': {cls: [...]}, 'test': {...}}"


def list_ader(root: str, split: str, classes, problems: Problems, meta_file: str = "meta.json") -> list[Record]:
    """ADer's ``meta.json``: ``{split: {cls: [{img_path, mask_path, specie_name, anomaly}]}}``."""
    path = meta_file if os.path.isabs(meta_file) else os.path.join(root, meta_file)
    meta = _load_json(path)
    if not isinstance(meta, dict) or not all(isinstance(meta.get(s, {}), dict) for s in SPLITS):
        raise DataError(f"{path}: expected {{'train': {{class: [...]}}, 'test': {{...}}}}", path)
    available = set(meta.get("train", {})) | set(meta.get("test", {}))
    records: list[Record] = []
    for cls in choose_classes(available, classes, root, "ader", ADER_EXPECTED):
        items = meta.get(split, {}).get(cls, [])
        n = len(records)
        for i, item in enumerate(items if isinstance(items, list) else []):
            if not isinstance(item, dict) or not item.get("img_path"):
                problems.report(path, f"{split}/{cls} item {i} has no img_path")
                continue
            image = os.path.join(root, str(item["img_path"]))
            if not os.path.isfile(image):
                problems.report(image, f"image file is missing (named in {path}, {split}/{cls} item {i})")
                continue
            try:
                anomalous = int(item.get("anomaly", 0)) == 1
            except (TypeError, ValueError):
                problems.report(path, f"{split}/{cls} item {i}: anomaly is {item.get('anomaly')!r}, not 0 or 1")
                continue
            if not anomalous:
                records.append(Record(image, (), 0, cls, NORMAL))
                continue
            mask = listed_mask(problems, image, root, item.get("mask_path"), path, "(empty mask_path)")
            if mask is None:
                continue
            defect = str(item.get("specie_name") or "anomaly")
            records.append(Record(image, (mask,), 1, cls, defect))
        if len(records) == n:
            problems.report(path, f"class {cls!r} has no usable {split} images")
    return records


def _realiad_marker(root: str) -> str | None:
    return "realiad_jsons/" if isdir(root, "realiad_jsons") else None


def _ader_marker(root: str) -> str | None:
    return "meta.json" if os.path.isfile(os.path.join(root, "meta.json")) else None


LAYOUTS = [
    Layout("realiad", list_realiad, EXPECTED, {
        "resolution": Option(check_resolution, "the <res> of a realiad_<res> folder, e.g. 1024"),
        "variant": Option(check_text, "a folder name under realiad_jsons/"),
        "views": Option(check_views, "camera view names C1..C5, e.g. [C1, C3]"),
    }, marker=_realiad_marker),
    Layout("ader", list_ader, ADER_EXPECTED,
           {"meta_file": Option(check_text, "a JSON path, relative to the root or absolute")},
           marker=_ader_marker),
]
