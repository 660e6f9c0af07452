"""One torch Dataset over records: read, orient, convert to RGB, resize, normalise.

The dataset is built from plain records, so its size, classes and labels are
known before any pixel is read (samplers and per-class evaluation need them),
and it pickles cheaply to loader workers. ``validate()`` checks every file
from its header before training, so a bad test mask costs seconds, not epochs.
"""
from __future__ import annotations

import os
import warnings
from typing import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DataError, DataWarning, Problem, Problems, check_on_error, check_positive_int
from .imageio import ORIENTATIONS, Header, read_header, read_mask, read_rgb
from .layouts import detect_layout, list_records, normalise_layout
from .records import Record
from .transforms import check_mask_threshold, prepare_image, prepare_mask


def _size_mismatch(mask_path: str, mask: Header, image_path: str, image: Header,
                   applied: bool) -> DataError:
    """A mask whose size differs from its image's, saying when EXIF orientation is involved."""
    (mw, mh), (w, h) = mask.size, image.size
    text = f"{mask_path}: mask is {mw}x{mh} but its image {image_path} is {w}x{h}"
    turned = [f"{which} has EXIF orientation {hdr.orientation} ({ORIENTATIONS[hdr.orientation]})"
              for which, hdr in (("the image", image), ("the mask", mask)) if hdr.orientation != 1]
    if turned and applied:
        (rmw, rmh), (rw, rh) = mask.raw_size, image.raw_size
        text += (f" after EXIF orientation ({'; '.join(turned)}; stored: mask {rmw}x{rmh}, image "
                 f"{rw}x{rh}; exif_orientation=False reads stored pixels)")
    elif turned:
        text += f" (EXIF orientation not applied: {'; '.join(turned)})"
    return DataError(text, mask_path)


class AnomalyDataset(Dataset):
    """Images of one split with ground-truth masks, labels, class and defect names.

    Items are dicts with anomalib's field names:

    - ``image``: 3 x S x S float32, ImageNet-normalised (S = ``image_size``);
    - ``gt_mask``: 1 x M x M float32 in {0, 1} (zeros for normal images), M =
      ``mask_size`` (by default S: ground truth may be kept at another size than the
      model's input, e.g. pixel metrics at 256 px);
    - ``gt_label``: int, 0 normal, 1 anomalous;
    - ``class_name``, ``defect`` (str; "good" when normal), ``image_path`` (str).

    Files are read with their EXIF orientation applied (``exif_orientation``).
    Pixel problems (a corrupt file, a mask whose size differs from its image)
    raise ``DataError`` naming the file when the item is read; ``validate()``
    finds them up front from file headers and, with ``on_error="skip"``, drops
    them. After ``validate()``, ``oriented`` lists the files that carry an
    EXIF orientation other than the identity and ``lossy_masks`` the masks
    stored in a lossy format (JPEG, lossy WebP).
    """

    def __init__(
        self,
        records: Iterable[Record],
        image_size: int = 256,
        mask_threshold: float = 0.5,
        on_error: str = "raise",
        skipped: Sequence[Problem] = (),
        layout: str | None = None,
        root: str | None = None,
        split: str | None = None,
        mask_size: int | None = None,
        exif_orientation: bool = True,
    ):
        self.image_size = check_positive_int(image_size, "image_size")
        self.mask_size = int(mask_size or image_size)
        self.mask_threshold = check_mask_threshold(mask_threshold)
        self.on_error = check_on_error(on_error)
        self.exif_orientation = bool(exif_orientation)
        self.skipped: list[Problem] = list(skipped)
        self.layout, self.root, self.split = layout, root, split
        self.oriented: list[str] = []
        self.lossy_masks: list[str] = []
        self._set_records(list(records))

    def _set_records(self, records: list[Record]) -> None:
        self.records = records
        self.labels = [r.label for r in records]
        self.item_classes = [r.class_name for r in records]
        self.classes = sorted(set(self.item_classes))
        # Classes with a defective image that has no mask (a folder set given without
        # masks, confirmed defects from `mtad review export`): image metrics only.
        self.classes_without_masks = sorted({r.class_name for r in records
                                             if r.label == 1 and not r.mask_paths})
        self.has_masks = not self.classes_without_masks

    def __len__(self) -> int:
        return len(self.records)

    def _mismatch(self, record: Record, mask_path: str) -> DataError:
        applied = self.exif_orientation
        return _size_mismatch(mask_path, read_header(mask_path, applied), record.image_path,
                              read_header(record.image_path, applied), applied)

    def read_mask(self, record: Record, size: tuple[int, int]) -> np.ndarray:
        """The OR of a record's masks (H x W bool) at full resolution, checked against
        the image's (width, height) ``size``."""
        w, h = size
        mask = np.zeros((h, w), dtype=bool)
        for path in record.mask_paths:
            m = read_mask(path, self.exif_orientation)
            if m.shape != (h, w):
                raise self._mismatch(record, path)
            mask |= m
        return mask

    def __getitem__(self, index: int) -> dict:
        r = self.records[index]
        rgb = read_rgb(r.image_path, self.exif_orientation)
        image, _ = prepare_image(rgb, self.image_size)
        if r.mask_paths:
            full = self.read_mask(r, (rgb.shape[1], rgb.shape[0]))
            gt_mask = prepare_mask(full, self.mask_size, self.mask_threshold)
        else:
            gt_mask = torch.zeros(1, self.mask_size, self.mask_size, dtype=torch.float32)
        return {
            "image": image,
            "gt_mask": gt_mask,
            "gt_label": r.label,
            "class_name": r.class_name,
            "defect": r.defect,
            "image_path": r.image_path,
        }

    def _check(self, r: Record, decode: bool, oriented: list[str], lossy: list[str]) -> None:
        """Header check of one record (and a full decode with ``decode``)."""
        applied = self.exif_orientation
        image = read_header(r.image_path, applied)
        if image.orientation != 1:
            oriented.append(r.image_path)
        for path in r.mask_paths:
            mask = read_header(path, applied)
            if mask.orientation != 1:
                oriented.append(path)
            if mask.lossy:
                lossy.append(path)
            if mask.size != image.size:
                raise _size_mismatch(path, mask, r.image_path, image, applied)
        if decode:
            rgb = read_rgb(r.image_path, applied)
            self.read_mask(r, (rgb.shape[1], rgb.shape[0]))

    def validate(self, decode: bool = False) -> "AnomalyDataset":
        """Check every file before training; drop bad ones when ``on_error="skip"``.

        By default only headers are read (fast: thousands of files a second),
        which finds unreadable files and masks whose size differs from their
        image's after orientation; ``decode=True`` also decodes all pixels,
        which finds truncated files too. Fills ``oriented`` and
        ``lossy_masks``, and warns once (``DataWarning``) when masks are stored
        in a lossy format.

        Raises:
            DataError: naming the file and both sizes (with ``on_error="raise"``),
                or when no usable image is left.
        """
        problems = Problems(self.on_error)
        keep: list[Record] = []
        oriented: list[str] = []
        lossy: list[str] = []
        for r in self.records:
            o, lm = [], []
            try:
                self._check(r, decode, o, lm)
            except DataError as exc:
                path = exc.path or r.image_path
                text = str(exc)
                problems.report(path, text[len(path) + 2 :] if text.startswith(path + ": ") else text)
                continue
            keep.append(r)
            oriented += o
            lossy += lm
        self.oriented, self.lossy_masks = oriented, lossy
        if lossy:
            warnings.warn(
                f"{len(lossy)} mask(s) stored in a lossy format, e.g. {lossy[0]}: compression "
                "blurs their edges; they are binarised at half their maximum (store masks as PNG "
                "for exact ground truth)",
                DataWarning,
                stacklevel=2,
            )
        if problems.items:
            self.skipped += problems.items
            problems.summarise(f"validating {self.root or 'dataset'}")
            self._set_records(keep)
            if not keep:
                raise DataError(f"{self.root}: no usable images left after validation", self.root)
        return self

    def orientation_note(self) -> str | None:
        """One line for the run log about EXIF orientations (after ``validate()``), or None."""
        if not self.oriented:
            return None
        what = "applied" if self.exif_orientation else "ignored (exif_orientation=False)"
        return (f"{len(self.oriented)} file(s) carry an EXIF orientation, {what}; "
                f"e.g. {self.oriented[0]}")

    def __repr__(self) -> str:
        n_bad = sum(self.labels)
        return (
            f"AnomalyDataset(layout={self.layout!r}, split={self.split!r}, "
            f"classes={len(self.classes)}, images={len(self)} ({n_bad} anomalous), "
            f"skipped={len(self.skipped)})"
        )


def open_dataset(
    root,
    layout: str | None = None,
    split: str = "train",
    classes=None,
    image_size: int = 256,
    mask_threshold: float = 0.5,
    on_error: str = "raise",
    *,
    exif_orientation: bool = True,
    mask_size: int | None = None,
    **layout_options,
) -> AnomalyDataset:
    """Open one split of a dataset on disk, all classes or the named ones.

    ``layout`` (any case, e.g. ``MVTec``) is detected from the files when None
    (an ambiguous or unknown folder is an error saying what was found).
    Listing reads no pixels; missing masks, split entries naming missing files
    and empty class folders are found here (``.validate()`` on the result also
    checks every file's header). ``exif_orientation=False`` reads stored pixels, ignoring EXIF
    orientation tags. ``mask_size`` (default: ``image_size``) is the side of the
    ground-truth masks, resized by the protocol's rule (bilinear, > threshold).
    ``layout_options`` go to the layout's lister (e.g.
    ``views=("C1",)`` for Real-IAD, ``normal_dirs=`` for ``folder``).

    Raises:
        DataError: a bad argument value (``<key>: <what is wrong>; <what is
            allowed>``), or a dataset problem naming the file (with
            ``on_error="raise"``; ``"skip"`` warns and goes on).
    """
    problems = Problems(on_error)
    check_positive_int(image_size, "image_size")
    check_mask_threshold(mask_threshold)
    root = os.fspath(root)
    layout = normalise_layout(layout) or detect_layout(root)
    records = list_records(root, layout, split, classes, problems, **layout_options)
    problems.summarise(f"listing the {split} split of {root}")
    ds = AnomalyDataset(
        records,
        image_size=image_size,
        mask_threshold=mask_threshold,
        on_error=on_error,
        skipped=problems.items,
        layout=layout,
        root=root,
        split=split,
        mask_size=mask_size,
        exif_orientation=exif_orientation,
    )
    if not ds.records:
        raise DataError(f"{root}: no usable images in the {split} split (layout {layout!r})", root)
    return ds


def open_split(data, split: str, mask_size: int | None = None) -> AnomalyDataset:
    """One split of the dataset a run config's ``data`` section describes
    (a `mtad.config.DataConfig`; its fields are read, nothing else).

    The train split also holds the train splits of ``data.extra_train`` (each
    folder's layout detected, all its classes).

    Raises:
        DataError: see `open_dataset`.
    """
    ds = open_dataset(data.root, layout=data.layout, split=split,
                      classes=[str(c) for c in data.classes] if data.classes else None,
                      image_size=data.image_size, mask_threshold=data.mask_threshold,
                      on_error=data.on_error, mask_size=mask_size,
                      exif_orientation=data.exif_orientation, **data.options)
    extra = getattr(data, "extra_train", None) or []
    if split == "train" and extra:
        added = [r for folder in extra
                 for r in open_dataset(folder, split="train", image_size=data.image_size,
                                       on_error=data.on_error,
                                       exif_orientation=data.exif_orientation).records]
        ds._set_records(ds.records + added)
    return ds
