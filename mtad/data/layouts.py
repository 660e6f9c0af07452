"""One lister per dataset layout: files on disk -> plain ``Record``s.

Listers only look at names (directory listings, split files); they never open
an image, so listing is fast even for Real-IAD's 151,050 files. Masks are
paired with images by file stem, never by sorted position, because sorted
orders differ (``10.png`` sorts before ``2.png``, ``10_mask.png`` after
``1_mask.png``). Problems found here (a missing mask, a split entry naming a
missing file, a class folder without images) go to a ``Problems`` collector,
which raises or skips according to ``on_error``.
"""
from __future__ import annotations

import csv
import json
import os
import re
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable

from .errors import DataError, DataWarning, Problems
from .imageio import is_image_file
from .records import NORMAL, Record

SPLITS = ("train", "test")


# --------------------------------------------------------------------------- helpers


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _subdirs(path: str) -> list[str]:
    try:
        with os.scandir(path) as it:
            names = [e.name for e in it if e.is_dir() and not e.name.startswith(".")]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(names, key=_natural_key)


def _images(path: str) -> list[str]:
    """Image files directly inside ``path`` (full paths), in natural order."""
    try:
        with os.scandir(path) as it:
            names = [e.name for e in it if e.is_file() and is_image_file(e.name)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [os.path.join(path, n) for n in sorted(names, key=_natural_key)]


def _has_images(path: str) -> bool:
    try:
        with os.scandir(path) as it:
            return any(e.is_file() and is_image_file(e.name) for e in it)
    except (FileNotFoundError, NotADirectoryError):
        return False


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _stem_index(path: str) -> dict[str, str]:
    """Map file stem -> full path for the images in ``path`` (one scan per folder)."""
    index: dict[str, str] = {}
    for p in _images(path):
        # Prefer PNG when a stem exists in several formats.
        s = _stem(p)
        if s not in index or p.lower().endswith(".png"):
            index[s] = p
    return index


def _mask_for(index: dict[str, str], stem: str, suffixes=("_mask", "")) -> str | None:
    for suffix in suffixes:
        hit = index.get(stem + suffix)
        if hit is not None:
            return hit
    return None


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [value]
    return list(value)


def choose_classes(available: Iterable[str], classes, root, layout: str) -> list[str]:
    """The classes to load: all of ``available`` when ``classes`` is None.

    An unknown name is an error that lists the available classes.
    """
    available = sorted(set(available))
    if not available:
        raise DataError(
            f"{root}: no classes found for layout {layout!r}; expected {LAYOUTS[layout].expected}",
            str(root),
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


def _isdir(*parts: str) -> bool:
    return os.path.isdir(os.path.join(*parts))


def _class_dirs(root: str, marker: Callable[[str], bool]) -> list[str]:
    return [d for d in _subdirs(root) if marker(os.path.join(root, d))]


def _normal_records(paths, cls) -> list[Record]:
    return [Record(p, (), 0, cls, NORMAL) for p in paths]


def _listed_mask(problems: Problems, image: str, base: str, rel, source: str, absent: str):
    """The mask a JSON listing names for an anomalous image, or None, reported, when the
    listing gives none (``absent`` says how) or the file does not exist."""
    mask = os.path.join(base, str(rel)) if rel else ""
    if not mask or not os.path.isfile(mask):
        problems.report(image, f"anomalous image has no mask file {mask or absent} (named in {source})")
        return None
    return mask


def _report_empty(problems: Problems, folder: str, what: str) -> None:
    problems.report(folder, f"class folder has no images ({what})")


# --------------------------------------------------------------------------- MVTec AD / MPDD


def _list_defect_folders(root, split, classes, problems, layout, class_marker, train_dirs,
                         masks_of, test_what):
    """The walk MVTec AD and LOCO share: normal training folders per class, then
    ``test/<defect>/`` folders whose anomalous images get their masks from
    ``masks_of(base, defect)``, a function image -> (mask paths, expected location).
    A class is a folder holding ``test/`` or ``class_marker`` (a relative path)."""
    available = _class_dirs(root, lambda d: _isdir(d, *class_marker) or _isdir(d, "test"))
    records: list[Record] = []
    for cls in choose_classes(available, classes, root, layout):
        base = os.path.join(root, cls)
        if split == "train":
            folders = [os.path.join(base, *d) for d in train_dirs]
            imgs = [p for f in folders for p in _images(f)]
            if not imgs:
                _report_empty(problems, folders[0], "/".join(train_dirs[0]))
            records += _normal_records(imgs, cls)
            continue
        test = os.path.join(base, "test")
        n = len(records)
        for defect in _subdirs(test):
            imgs = _images(os.path.join(test, defect))
            if defect == NORMAL:
                records += _normal_records(imgs, cls)
                continue
            find = masks_of(base, defect)
            for p in imgs:
                masks, expected = find(p)
                if not masks:
                    problems.report(p, f"anomalous image has no mask (expected {expected})")
                    continue
                records.append(Record(p, masks, 1, cls, defect))
        if len(records) == n:
            _report_empty(problems, test, test_what)
    return records


def list_mvtec(root: str, split: str, classes, problems: Problems, layout="mvtec") -> list[Record]:
    """``<cls>/train/good``, ``<cls>/test/<defect>``, ``<cls>/ground_truth/<defect>/<stem>_mask.png``."""

    def masks_of(base, defect):
        gt = os.path.join(base, "ground_truth", defect)
        index = _stem_index(gt)

        def find(p):
            m = _mask_for(index, _stem(p))
            return ((m,) if m else ()), os.path.join(gt, _stem(p) + "_mask.png")

        return find

    return _list_defect_folders(root, split, classes, problems, layout, ("train",),
                                [("train", "good")], masks_of, "test/<defect>")


def list_mpdd(root, split, classes, problems) -> list[Record]:
    """MPDD uses MVTec AD's layout unchanged."""
    return list_mvtec(root, split, classes, problems, layout="mpdd")


# --------------------------------------------------------------------------- BTAD


def list_btad(root: str, split: str, classes, problems: Problems) -> list[Record]:
    """``<cls>/train/ok``, ``<cls>/test/{ok,ko}``, ``<cls>/ground_truth/ko/<stem>.png|bmp``."""
    available = _class_dirs(root, lambda d: _isdir(d, "train", "ok") or _isdir(d, "test", "ok"))
    records: list[Record] = []
    for cls in choose_classes(available, classes, root, "btad"):
        base = os.path.join(root, cls)
        if split == "train":
            folder = os.path.join(base, "train", "ok")
            imgs = _images(folder)
            if not imgs:
                _report_empty(problems, folder, "train/ok")
            records += _normal_records(imgs, cls)
            continue
        n = len(records)
        records += _normal_records(_images(os.path.join(base, "test", "ok")), cls)
        gt = os.path.join(base, "ground_truth", "ko")
        masks = _stem_index(gt)
        for p in _images(os.path.join(base, "test", "ko")):
            m = _mask_for(masks, _stem(p), ("", "_mask"))
            if m is None:
                problems.report(p, f"anomalous image has no mask (expected {gt}/{_stem(p)}.png or .bmp)")
                continue
            records.append(Record(p, (m,), 1, cls, "ko"))
        if len(records) == n:
            _report_empty(problems, os.path.join(base, "test"), "test/ok, test/ko")
    return records


# --------------------------------------------------------------------------- MVTec LOCO


def list_mvtec_loco(
    root: str, split: str, classes, problems: Problems, include_validation: bool = False
) -> list[Record]:
    """``<cls>/test/<type>/NNN.png`` with every mask in ``ground_truth/<type>/NNN/``.

    A LOCO test image may have several masks (one per defect region); they are
    OR-ed when read. ``include_validation=True`` adds ``validation/good`` to
    the training split (the official protocol keeps it for validation).
    """
    train_dirs = [("train", "good")] + ([("validation", "good")] if include_validation else [])

    def masks_of(base, defect):
        def find(p):
            mask_dir = os.path.join(base, "ground_truth", defect, _stem(p))
            return tuple(_images(mask_dir)), f"{mask_dir}/000.png"

        return find

    return _list_defect_folders(root, split, classes, problems, "mvtec_loco", ("train", "good"),
                                train_dirs, masks_of, "test/<type>")


# --------------------------------------------------------------------------- MVTec 3D-AD (RGB)


def list_mvtec3d(
    root: str, split: str, classes, problems: Problems, include_validation: bool = False
) -> list[Record]:
    """RGB part only: ``<cls>/<split>/<defect>/rgb/NNN.png`` with ``gt/NNN.png``."""
    available = _class_dirs(root, lambda d: _isdir(d, "train", "good", "rgb") or _isdir(d, "test"))
    records: list[Record] = []
    for cls in choose_classes(available, classes, root, "mvtec3d"):
        base = os.path.join(root, cls)
        if split == "train":
            folders = [os.path.join(base, "train", "good", "rgb")]
            if include_validation:
                folders.append(os.path.join(base, "validation", "good", "rgb"))
            imgs = [p for f in folders for p in _images(f)]
            if not imgs:
                _report_empty(problems, folders[0], "train/good/rgb")
            records += _normal_records(imgs, cls)
            continue
        test = os.path.join(base, "test")
        n = len(records)
        for defect in _subdirs(test):
            imgs = _images(os.path.join(test, defect, "rgb"))
            if defect == NORMAL:
                records += _normal_records(imgs, cls)
                continue
            gt = os.path.join(test, defect, "gt")
            masks = _stem_index(gt)
            for p in imgs:
                m = _mask_for(masks, _stem(p), ("", "_mask"))
                if m is None:
                    problems.report(p, f"anomalous image has no mask (expected {gt}/{_stem(p)}.png)")
                    continue
                records.append(Record(p, (m,), 1, cls, defect))
        if len(records) == n:
            _report_empty(problems, test, "test/<defect>/rgb")
    return records


# --------------------------------------------------------------------------- VisA


def _read_csv(path: str, required: tuple[str, ...]) -> list[dict]:
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


def _visa_defect_names(root: str, cls: str) -> dict[str, str]:
    """Defect types from the optional ``<cls>/image_anno.csv`` (image -> label)."""
    path = os.path.join(root, cls, "image_anno.csv")
    if not os.path.isfile(path):
        return {}
    rows = _read_csv(path, ("image", "label"))
    return {os.path.normpath(r["image"]): r["label"] for r in rows if r["image"] and r["label"]}


def list_visa(
    root: str, split: str, classes, problems: Problems, split_file: str = "split_csv/1cls.csv"
) -> list[Record]:
    """Rows of ``split_csv/1cls.csv`` (object,split,label,image,mask; paths relative to root).

    Defect types come from ``<cls>/image_anno.csv`` when present, else "anomaly".
    """
    csv_path = split_file if os.path.isabs(split_file) else os.path.join(root, split_file)
    rows = _read_csv(csv_path, ("object", "split", "label", "image", "mask"))
    chosen = choose_classes({r["object"] for r in rows if r["object"]}, classes, root, "visa")
    wanted = set(chosen)
    names = {cls: _visa_defect_names(root, cls) for cls in chosen}
    records: list[Record] = []
    seen: set[str] = set()
    for line, row in enumerate(rows, start=2):
        cls = row["object"]
        if row["split"] != split or cls not in wanted:
            continue
        where = f"named in {csv_path} line {line}"
        label = row["label"].lower()
        if label not in ("normal", "anomaly"):
            problems.report(csv_path, f"line {line}: label {row['label']!r} is neither 'normal' nor 'anomaly'")
            continue
        image = os.path.join(root, row["image"])
        if not row["image"] or not os.path.isfile(image):
            problems.report(image, f"image file is missing ({where})")
            continue
        seen.add(cls)
        if label == "normal":
            records.append(Record(image, (), 0, cls, NORMAL))
            continue
        mask = os.path.join(root, row["mask"]) if row["mask"] else ""
        if not mask or not os.path.isfile(mask):
            problems.report(image, f"anomalous image has no mask file {mask or '(empty mask column)'} ({where})")
            continue
        defect = names[cls].get(os.path.normpath(row["image"]), "anomaly")
        records.append(Record(image, (mask,), 1, cls, defect))
    for cls in sorted(wanted - seen):
        problems.report(csv_path, f"class {cls!r} has no usable {split} images in the split file")
    return records


# --------------------------------------------------------------------------- Real-IAD

_VIEW = re.compile(r"_(C\d+)_")


def _realiad_resolution(root: str, resolution) -> str:
    found = sorted(d[len("realiad_"):] for d in _subdirs(root) if d.startswith("realiad_") and d != "realiad_jsons")
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
                f"{folder}: Real-IAD json folder not found; found: {', '.join(_subdirs(base)) or 'none'}",
                folder,
            )
        return folder
    if any(n.endswith(".json") for n in os.listdir(base)):
        return base
    variants = [d for d in _subdirs(base) if any(n.endswith(".json") for n in os.listdir(os.path.join(base, d)))]
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
        views = {views} if isinstance(views, str) else set(views)
        bad = [v for v in views if not re.fullmatch(r"C\d+", str(v))]
        if bad:
            raise ValueError(f"views must be camera names like 'C1'..'C5', got {bad}")
    available = [n[:-5] for n in os.listdir(json_dir) if n.endswith(".json")]
    records: list[Record] = []
    for cls in choose_classes(available, classes, root, "realiad"):
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
            mask = _listed_mask(problems, image, base, item.get("mask_path"), path, "(no mask_path)")
            if mask is None:
                continue
            records.append(Record(image, (mask,), 1, cls, defect))
        if len(records) == n:
            only = "" if views is None else f" of views {', '.join(sorted(views))}"
            problems.report(path, f"class {cls!r} has no usable {split} images{only}")
    return records


# --------------------------------------------------------------------------- ADer meta.json


def list_ader(root: str, split: str, classes, problems: Problems, meta_file: str = "meta.json") -> list[Record]:
    """ADer's ``meta.json``: ``{split: {cls: [{img_path, mask_path, specie_name, anomaly}]}}``."""
    path = meta_file if os.path.isabs(meta_file) else os.path.join(root, meta_file)
    meta = _load_json(path)
    if not isinstance(meta, dict) or not all(isinstance(meta.get(s, {}), dict) for s in SPLITS):
        raise DataError(f"{path}: expected {{'train': {{class: [...]}}, 'test': {{...}}}}", path)
    available = set(meta.get("train", {})) | set(meta.get("test", {}))
    records: list[Record] = []
    for cls in choose_classes(available, classes, root, "ader"):
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
            mask = _listed_mask(problems, image, root, item.get("mask_path"), path, "(empty mask_path)")
            if mask is None:
                continue
            defect = str(item.get("specie_name") or "anomaly")
            records.append(Record(image, (mask,), 1, cls, defect))
        if len(records) == n:
            problems.report(path, f"class {cls!r} has no usable {split} images")
    return records


# --------------------------------------------------------------------------- custom folders


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
    choose_classes([name], classes, root, "folder")
    test_root = os.path.join(root, "test")
    if split == "train":
        dirs = [resolve(d) for d in _as_list(normal_dirs)]
        if not dirs:
            dirs = [d for d in (os.path.join(root, "train", "good"), os.path.join(root, "good")) if os.path.isdir(d)][:1]
        if not dirs:
            raise DataError(f"{root}: folder layout needs normal_dirs=... (no train/good or good folder)", root)
        records: list[Record] = []
        for d in dirs:
            imgs = _images(d)
            if not imgs:
                _report_empty(problems, d, "normal images")
            records += _normal_records(imgs, name)
        return records

    normal = [resolve(d) for d in _as_list(test_normal_dirs)]
    if test_normal_dirs is None and os.path.isdir(os.path.join(test_root, NORMAL)):
        normal = [os.path.join(test_root, NORMAL)]
    if isinstance(defect_dirs, dict):
        defects = [(str(k), resolve(v)) for k, v in defect_dirs.items()]
    elif defect_dirs is not None:
        defects = [(os.path.basename(os.path.normpath(resolve(d))), resolve(d)) for d in _as_list(defect_dirs)]
    else:
        defects = [(d, os.path.join(test_root, d)) for d in _subdirs(test_root) if d != NORMAL]
    if not defects and not normal:
        raise DataError(f"{root}: folder layout needs defect_dirs=... and test_normal_dirs=... for the test split", root)

    records = []
    for d in normal:
        imgs = _images(d)
        if not imgs:
            _report_empty(problems, d, "test normal images")
        records += _normal_records(imgs, name)
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
        flat = [resolve(d) for d in _as_list(mask_dirs)]
    use_masks = mask_dirs is not None
    indexes: dict[str, dict[str, str]] = {}

    def index(folder: str) -> dict[str, str]:
        if folder not in indexes:
            indexes[folder] = _stem_index(folder)
        return indexes[folder]

    for defect, d in defects:
        imgs = _images(d)
        if not imgs:
            _report_empty(problems, d, f"defect {defect!r}")
        # The defect's own sub-folder first: flat folders may repeat stems.
        search = mask_lookup.get(defect, []) + [os.path.join(f, defect) for f in flat] + flat
        for p in imgs:
            if not use_masks:
                records.append(Record(p, (), 1, name, defect))
                continue
            m = next((hit for f in search if (hit := _mask_for(index(f), _stem(p))) is not None), None)
            if m is None:
                where = ", ".join(search) or "(no mask folder for this defect)"
                problems.report(p, f"anomalous image has no mask <stem>.png or <stem>_mask.png in {where}")
                continue
            records.append(Record(p, (m,), 1, name, defect))
    return records


# --------------------------------------------------------------------------- registry and detection


@dataclass(frozen=True)
class Layout:
    """A lister, the options it accepts, and the file structure it expects."""

    name: str
    lister: Callable[..., list[Record]]
    options: tuple[str, ...]
    expected: str


_LAYOUT_TABLE = [
    # name, lister, options, the files it expects (for error messages)
    ("mvtec", list_mvtec, (),
     "<cls>/train/good/*.png, <cls>/test/<defect>/*.png, <cls>/ground_truth/<defect>/<stem>_mask.png"),
    ("mpdd", list_mpdd, (), "the MVTec AD layout"),
    ("visa", list_visa, ("split_file",),
     "split_csv/1cls.csv and <cls>/Data/Images/{Normal,Anomaly}/*.JPG"),
    ("realiad", list_realiad, ("resolution", "variant", "views"),
     "realiad_<res>/<cls>/{OK,NG}/... and realiad_jsons/<variant>/<cls>.json"),
    ("btad", list_btad, (), "<cls>/train/ok/, <cls>/test/{ok,ko}/, <cls>/ground_truth/ko/"),
    ("mvtec_loco", list_mvtec_loco, ("include_validation",),
     "<cls>/{train,validation}/good/, <cls>/test/{good,logical_anomalies,structural_anomalies}/, "
     "<cls>/ground_truth/<type>/NNN/*.png"),
    ("mvtec3d", list_mvtec3d, ("include_validation",), "<cls>/{train,validation,test}/<defect>/{rgb,gt}/NNN.png"),
    ("ader", list_ader, ("meta_file",), "meta.json with {'train': {cls: [...]}, 'test': {...}}"),
    ("folder", list_folder, ("normal_dirs", "defect_dirs", "mask_dirs", "test_normal_dirs", "class_name"),
     "folders given by normal_dirs=, defect_dirs=, mask_dirs="),
]
LAYOUTS: dict[str, Layout] = {row[0]: Layout(*row) for row in _LAYOUT_TABLE}


def _class_dir_kind(d: str) -> str | None:
    """Which class-folder layout a folder looks like, from a few names only."""
    j = os.path.join
    if os.path.isdir(j(d, "train", "good", "rgb")) or os.path.isdir(j(d, "test", "good", "rgb")):
        return "mvtec3d"
    if os.path.isdir(j(d, "train", "ok")) or os.path.isdir(j(d, "test", "ko")):
        return "btad"
    if (
        os.path.isdir(j(d, "test", "logical_anomalies"))
        or os.path.isdir(j(d, "test", "structural_anomalies"))
        or (os.path.isdir(j(d, "validation", "good")) and _has_images(j(d, "validation", "good")))
    ):
        return "mvtec_loco"
    if _has_images(j(d, "train", "good")) or (
        os.path.isdir(j(d, "test")) and os.path.isdir(j(d, "ground_truth"))
    ):
        return "mvtec"
    return None


def detect_layout(root) -> str:
    """Guess the layout from file names; an error says what was found when unsure."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise DataError(f"{root}: dataset folder not found", root)
    found: dict[str, str] = {}
    if os.path.isdir(os.path.join(root, "split_csv")):
        found["visa"] = "split_csv/"
    if os.path.isdir(os.path.join(root, "realiad_jsons")):
        found["realiad"] = "realiad_jsons/"
    if os.path.isfile(os.path.join(root, "meta.json")):
        found["ader"] = "meta.json"
    kinds: dict[str, list[str]] = {}
    for d in _subdirs(root):
        kind = _class_dir_kind(os.path.join(root, d))
        if kind is not None:
            kinds.setdefault(kind, []).append(d)
    for kind, dirs in kinds.items():
        found[kind] = "class folder(s) " + ", ".join(dirs[:5]) + (" ..." if len(dirs) > 5 else "")
    if len(found) == 1:
        return next(iter(found))
    expected = "; ".join(f"{n}: {l.expected}" for n, l in LAYOUTS.items() if n not in ("mpdd", "folder"))
    if found:
        what = "; ".join(f"{k} ({v})" for k, v in found.items())
        raise DataError(
            f"{root}: ambiguous dataset layout, it looks like {what}; pass layout= one of {', '.join(found)}",
            root,
        )
    entries = sorted(os.listdir(root), key=_natural_key)
    shown = ", ".join(entries[:12]) + (" ..." if len(entries) > 12 else "") or "nothing"
    raise DataError(
        f"{root}: unknown dataset layout; found {shown}. Expected one of: {expected}. "
        "For your own folders use layout='folder' with normal_dirs=..., defect_dirs=...",
        root,
    )


def list_records(root, layout: str, split: str, classes, problems: Problems, **options) -> list[Record]:
    """Records of one split for a named layout; checks the layout's option names."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; known layouts: {', '.join(LAYOUTS)}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    spec = LAYOUTS[layout]
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        accepted = ", ".join(spec.options) or "none"
        raise ValueError(f"layout {layout!r} does not take option(s) {', '.join(unknown)}; it accepts: {accepted}")
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise DataError(f"{root}: dataset folder not found", root)
    return spec.lister(root, split, classes, problems, **options)
