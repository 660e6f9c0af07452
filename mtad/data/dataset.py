"""One torch Dataset over records: read, convert to RGB, resize, crop, normalise.

The dataset is built from plain records, so its size, classes and labels are
known before any pixel is read (samplers and per-class evaluation need them),
and it pickles cheaply to loader workers.
"""
from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DataError, Problem, Problems, check_on_error
from .imageio import image_size as header_size
from .imageio import read_mask, read_rgb
from .layouts import detect_layout, list_records
from .records import Record
from .transforms import check_sizes, prepare_image, prepare_mask


class AnomalyDataset(Dataset):
    """Images of one split with masks, labels, class and defect names.

    Items are dicts (anomalib's names): ``image`` (3 x S x S float32,
    ImageNet-normalised), ``gt_mask`` (1 x M x M float32 in {0, 1}, M = ``mask_size``;
    zeros for normal images), ``gt_label`` (0 normal, 1 anomalous), ``class_name``,
    ``defect`` ("good" when normal) and ``image_path``. Pixel problems (a corrupt file, a mask whose size differs from
    its image) raise ``DataError`` naming the file when the item is read;
    ``validate()`` finds them up front and, with ``on_error="skip"``, drops them.
    """

    def __init__(
        self,
        records: Iterable[Record],
        image_size: int = 256,
        mask_threshold: float = 0.5,
        crop_size: int | None = None,
        on_error: str = "raise",
        skipped: Sequence[Problem] = (),
        layout: str | None = None,
        root: str | None = None,
        split: str | None = None,
        mask_size: int | None = None,
    ):
        check_sizes(image_size, crop_size)
        if not 0.0 <= mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must be in [0, 1), got {mask_threshold!r}")
        self.image_size = int(image_size)
        # Ground truth can be kept at another size than the model's input (pixel
        # metrics at the protocol's 256 px whatever the model sees).
        self.mask_size = int(mask_size or image_size)
        self.crop_size = crop_size
        self.mask_threshold = float(mask_threshold)
        self.on_error = check_on_error(on_error)
        self.skipped: list[Problem] = list(skipped)
        self.layout, self.root, self.split = layout, root, split
        self._set_records(list(records))

    def _set_records(self, records: list[Record]) -> None:
        self.records = records
        self.labels = [r.label for r in records]
        self.item_classes = [r.class_name for r in records]
        self.classes = sorted(set(self.item_classes))
        # False for a custom folder set given without masks: no pixel metrics then.
        self.has_masks = all(r.mask_paths for r in records if r.label == 1)

    @property
    def output_size(self) -> int:
        return self.crop_size or self.image_size

    @property
    def mask_output_size(self) -> int:
        """Side of ``gt_mask``: ``mask_size``, cropped in proportion with the image."""
        if self.crop_size is None:
            return self.mask_size
        return round(self.crop_size * self.mask_size / self.image_size)

    def __len__(self) -> int:
        return len(self.records)

    def read_mask(self, record: Record, size: tuple[int, int]) -> np.ndarray:
        """The OR of a record's masks at full resolution, checked against the image size."""
        w, h = size
        mask = np.zeros((h, w), dtype=bool)
        for path in record.mask_paths:
            m = read_mask(path)
            if m.shape != (h, w):
                raise DataError(
                    f"{path}: mask is {m.shape[1]}x{m.shape[0]} but its image "
                    f"{record.image_path} is {w}x{h}",
                    path,
                )
            mask |= m
        return mask

    def __getitem__(self, index: int) -> dict:
        r = self.records[index]
        rgb = read_rgb(r.image_path)
        image, _ = prepare_image(rgb, self.image_size, self.crop_size)
        if r.mask_paths:
            full = self.read_mask(r, (rgb.shape[1], rgb.shape[0]))
            crop = None if self.crop_size is None else self.mask_output_size
            mask = prepare_mask(full, self.mask_size, self.mask_threshold, crop)
        else:
            s = self.mask_output_size
            mask = torch.zeros(1, s, s, dtype=torch.float32)
        return {
            "image": image,
            "gt_mask": mask,
            "gt_label": r.label,
            "class_name": r.class_name,
            "defect": r.defect,
            "image_path": r.image_path,
        }

    def _check(self, r: Record, decode: bool) -> None:
        if decode:
            rgb = read_rgb(r.image_path)
            self.read_mask(r, (rgb.shape[1], rgb.shape[0]))
            return
        w, h = header_size(r.image_path)
        for path in r.mask_paths:
            mw, mh = header_size(path)
            if (mw, mh) != (w, h):
                raise DataError(
                    f"{path}: mask is {mw}x{mh} but its image {r.image_path} is {w}x{h}", path
                )

    def validate(self, decode: bool = False) -> "AnomalyDataset":
        """Check every file before training; drop bad ones when ``on_error="skip"``.

        By default only headers are read (PIL open + size: cheap, finds
        unreadable files and mask size mismatches); ``decode=True`` also
        decodes all pixels, which finds truncated files too.
        """
        problems = Problems(self.on_error)
        keep: list[Record] = []
        for r in self.records:
            try:
                self._check(r, decode)
            except DataError as exc:
                path = exc.path or r.image_path
                text = str(exc)
                problems.report(path, text[len(path) + 2 :] if text.startswith(path + ": ") else text)
                continue
            keep.append(r)
        if problems.items:
            self.skipped += problems.items
            problems.summarise(f"validating {self.root or 'dataset'}")
            self._set_records(keep)
            if not keep:
                raise DataError(f"{self.root}: no usable images left after validation", self.root)
        return self

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
    crop_size: int | None = None,
    validate: bool = False,
    mask_size: int | None = None,
    **layout_options,
) -> AnomalyDataset:
    """Open one split of a dataset on disk, all classes or the named ones.

    ``layout`` is detected from the files when None (an ambiguous or unknown
    folder is an error saying what was found). Listing reads no pixels;
    missing masks, split entries naming missing files and empty class folders
    are found here. ``validate=True`` also checks every file's header now.
    ``crop_size`` (default: none) centre-crops after the resize, for recipes
    such as 448 -> 392. ``mask_size`` (default: ``image_size``) is the side of the
    ground-truth masks, resized by the protocol's rule (bilinear, > threshold). ``layout_options`` go to the layout's lister (e.g.
    ``views=("C1",)`` for Real-IAD, ``normal_dirs=`` for ``folder``).
    """
    problems = Problems(on_error)
    root = os.fspath(root)
    if layout is None:
        layout = detect_layout(root)
    records = list_records(root, layout, split, classes, problems, **layout_options)
    problems.summarise(f"listing the {split} split of {root}")
    ds = AnomalyDataset(
        records,
        image_size=image_size,
        mask_threshold=mask_threshold,
        crop_size=crop_size,
        on_error=on_error,
        skipped=problems.items,
        layout=layout,
        root=root,
        split=split,
        mask_size=mask_size,
    )
    if not ds.records:
        raise DataError(f"{root}: no usable images in the {split} split (layout {layout!r})", root)
    if validate:
        ds.validate()
    return ds


def open_split(data, split: str, mask_size: int | None = None) -> AnomalyDataset:
    """One split of the dataset a run config's ``data`` section describes
    (a `mtad.config.DataConfig`; its fields are read, nothing else).

    Raises:
        DataError: see `open_dataset`.
    """
    return open_dataset(data.root, layout=data.layout, split=split,
                        classes=[str(c) for c in data.classes] if data.classes else None,
                        image_size=data.image_size, mask_threshold=data.mask_threshold,
                        on_error=data.on_error, mask_size=mask_size, **data.options)
