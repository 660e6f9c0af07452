"""MVTec AD and the layouts built like it: MPDD, BTAD, MVTec LOCO, MVTec 3D-AD (RGB).

All five keep one folder per class holding ``train/<normal>/`` and
``test/<defect>/`` folders; they differ in the normal folder's name (BTAD:
``ok``), in a sub-folder of images (MVTec 3D-AD: ``rgb/``) and in where the
masks are. So one walker (``walk_defect_folders``) lists them all, given a
``DefectFolders`` description; each layout's ``is_class`` predicate says
which folders of the root are its classes, for listing and detection alike.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from ..errors import Problems
from ..records import NORMAL, Record
from .base import (
    Layout,
    Option,
    check_bool,
    choose_classes,
    has_images,
    images,
    isdir,
    mask_for,
    normal_records,
    report_empty,
    stem,
    stem_index,
    subdirs,
)

# (class folder, defect) -> (image path -> (mask paths, where the mask was expected; None:
# this defect folder has no ground truth at all, its images are read without masks))
MaskFinder = Callable[[str, str], Callable[[str], tuple[tuple[str, ...], str]]]


@dataclass(frozen=True)
class DefectFolders:
    """How one layout of the ``<cls>/{train,test}/<defect>/`` family is built."""

    name: str
    expected: str
    is_class: Callable[[str], bool]
    masks: MaskFinder
    normal: str = NORMAL  # the normal images' folder name
    sub: tuple[str, ...] = ()  # images live in <split>/<defect>/<sub>/

    def where(self, *parts: str) -> str:
        return "/".join(parts + self.sub)


def walk_defect_folders(spec: DefectFolders, root: str, split: str, classes, problems: Problems,
                        include_validation: bool = False) -> list[Record]:
    """Records of one split: ``train/<normal>`` (and ``validation/<normal>``), or
    every ``test/<defect>`` folder, normal ones labelled 0 and the others 1 with
    the masks ``spec.masks`` finds for them."""
    available = [d for d in subdirs(root) if spec.is_class(os.path.join(root, d))]
    records: list[Record] = []
    for cls in choose_classes(available, classes, root, spec.name, spec.expected):
        base = os.path.join(root, cls)
        if split == "train":
            parts = ["train"] + (["validation"] if include_validation else [])
            folders = [os.path.join(base, p, spec.normal, *spec.sub) for p in parts]
            imgs = [p for f in folders for p in images(f)]
            if not imgs:
                report_empty(problems, folders[0], spec.where("train", spec.normal))
            records += normal_records(imgs, cls)
            continue
        test = os.path.join(base, "test")
        n = len(records)
        for defect in subdirs(test):
            imgs = images(os.path.join(test, defect, *spec.sub))
            if defect == spec.normal:
                records += normal_records(imgs, cls)
                continue
            find = spec.masks(base, defect)
            for p in imgs:
                masks, expected = find(p)
                if not masks and expected is not None:
                    problems.report(p, f"anomalous image has no mask (expected {expected})")
                    continue
                records.append(Record(p, masks, 1, cls, defect))
        if len(records) == n:
            report_empty(problems, test, spec.where("test", "<defect>"))
    return records


def _ground_truth_masks(suffixes: tuple[str, ...], expected_suffix: str,
                        optional: bool = False) -> MaskFinder:
    """Masks in ``<cls>/ground_truth/<defect>/<stem><suffix>.<ext>``. With ``optional``,
    a defect folder without a ``ground_truth/<defect>/`` folder is read without masks
    (image metrics only for its class: a set of operator-confirmed defects, `mtad
    review export`); a ground-truth folder that lacks one image's mask stays an error."""

    def masks_of(base: str, defect: str):
        gt = os.path.join(base, "ground_truth", defect)
        if optional and not os.path.isdir(gt):
            return lambda p: ((), None)
        index = stem_index(gt)

        def find(p: str):
            m = mask_for(index, stem(p), suffixes)
            return ((m,) if m else ()), os.path.join(gt, stem(p) + expected_suffix)

        return find

    return masks_of


def _loco_masks(base: str, defect: str):
    """Every image in ``<cls>/ground_truth/<type>/<stem>/`` (one per defect region)."""

    def find(p: str):
        mask_dir = os.path.join(base, "ground_truth", defect, stem(p))
        return tuple(images(mask_dir)), f"{mask_dir}/000.png"

    return find


def _mvtec3d_masks(base: str, defect: str):
    """``<cls>/test/<defect>/gt/<stem>.png``."""
    gt = os.path.join(base, "test", defect, "gt")
    index = stem_index(gt)

    def find(p: str):
        m = mask_for(index, stem(p), ("", "_mask"))
        return ((m,) if m else ()), os.path.join(gt, stem(p) + ".png")

    return find


# --------------------------------------------------------------------------- class predicates
# One per layout, used both to list classes and to detect the layout. Detection
# tries the specific ones first (3D, BTAD, LOCO), since a LOCO class is also
# shaped like an MVTec AD class.


def is_mvtec_class(d: str) -> bool:
    """A ``train/good``, ``test/good`` or ``ground_truth`` folder (empty or not: an empty
    class is reported by the lister, not skipped)."""
    return isdir(d, "train", "good") or isdir(d, "test", "good") or isdir(d, "ground_truth")


def is_btad_class(d: str) -> bool:
    """``train/ok``, ``test/ok`` or ``test/ko``."""
    return isdir(d, "train", "ok") or isdir(d, "test", "ok") or isdir(d, "test", "ko")


def is_loco_class(d: str) -> bool:
    """LOCO's anomaly folders, or normal images in ``validation/good``."""
    return (isdir(d, "test", "logical_anomalies") or isdir(d, "test", "structural_anomalies")
            or has_images(d, "validation", "good"))


def is_mvtec3d_class(d: str) -> bool:
    """``<split>/good/rgb`` for any split."""
    return any(isdir(d, s, "good", "rgb") for s in ("train", "validation", "test"))


# --------------------------------------------------------------------------- the layouts

MVTEC = DefectFolders(
    "mvtec",
    "<cls>/train/good/*.png, <cls>/test/<defect>/*.png, <cls>/ground_truth/<defect>/<stem>_mask.png",
    is_mvtec_class, _ground_truth_masks(("_mask", ""), "_mask.png", optional=True))
MPDD = DefectFolders("mpdd", "the MVTec AD layout", is_mvtec_class, MVTEC.masks)
BTAD = DefectFolders(
    "btad", "<cls>/train/ok/, <cls>/test/{ok,ko}/, <cls>/ground_truth/ko/<stem>.png|bmp",
    is_btad_class, _ground_truth_masks(("", "_mask"), ".png or .bmp"), normal="ok")
MVTEC_LOCO = DefectFolders(
    "mvtec_loco",
    "<cls>/{train,validation}/good/, <cls>/test/{good,logical_anomalies,structural_anomalies}/, "
    "<cls>/ground_truth/<type>/NNN/*.png",
    is_loco_class, _loco_masks)
MVTEC3D = DefectFolders(
    "mvtec3d", "<cls>/{train,validation,test}/<defect>/{rgb,gt}/NNN.png",
    is_mvtec3d_class, _mvtec3d_masks, sub=("rgb",))


def list_mvtec(root: str, split: str, classes, problems: Problems) -> list[Record]:
    """``<cls>/train/good``, ``<cls>/test/<defect>``, ``<cls>/ground_truth/<defect>/<stem>_mask.png``."""
    return walk_defect_folders(MVTEC, root, split, classes, problems)


def list_mpdd(root: str, split: str, classes, problems: Problems) -> list[Record]:
    """MPDD uses MVTec AD's layout unchanged."""
    return walk_defect_folders(MPDD, root, split, classes, problems)


def list_btad(root: str, split: str, classes, problems: Problems) -> list[Record]:
    """``<cls>/train/ok``, ``<cls>/test/{ok,ko}``, ``<cls>/ground_truth/ko/<stem>.png|bmp``;
    ``ok`` images are normal (defect "good")."""
    return walk_defect_folders(BTAD, root, split, classes, problems)


def list_mvtec_loco(root: str, split: str, classes, problems: Problems,
                    include_validation: bool = False) -> list[Record]:
    """``<cls>/test/<type>/NNN.png`` with every mask in ``ground_truth/<type>/NNN/``.

    A LOCO test image may have several masks (one per defect region); they are
    OR-ed when read. ``include_validation=True`` adds ``validation/good`` to
    the training split (the official protocol keeps it for validation).
    """
    return walk_defect_folders(MVTEC_LOCO, root, split, classes, problems, include_validation)


def list_mvtec3d(root: str, split: str, classes, problems: Problems,
                 include_validation: bool = False) -> list[Record]:
    """RGB part only: ``<cls>/<split>/<defect>/rgb/NNN.png`` with ``gt/NNN.png``."""
    return walk_defect_folders(MVTEC3D, root, split, classes, problems, include_validation)


_INCLUDE_VALIDATION = {"include_validation": Option(check_bool, "true or false")}

LAYOUTS = [
    Layout("mvtec", list_mvtec, MVTEC.expected, is_class=MVTEC.is_class),
    Layout("mpdd", list_mpdd, MPDD.expected),  # not detected: indistinguishable from mvtec
    Layout("btad", list_btad, BTAD.expected, is_class=BTAD.is_class),
    Layout("mvtec_loco", list_mvtec_loco, MVTEC_LOCO.expected, _INCLUDE_VALIDATION,
           is_class=MVTEC_LOCO.is_class),
    Layout("mvtec3d", list_mvtec3d, MVTEC3D.expected, _INCLUDE_VALIDATION, is_class=MVTEC3D.is_class),
]
