"""The plain record every layout lister produces.

Records hold paths and labels only, so a whole dataset (Real-IAD has 151,050
images) can be listed, filtered, counted and pickled to loader workers without
reading a single pixel.
"""
from __future__ import annotations

from dataclasses import dataclass

NORMAL = "good"


@dataclass(frozen=True)
class Record:
    """One image of a split.

    ``mask_paths`` is empty for normal images; several masks (MVTec LOCO) are
    OR-ed together when read. ``defect`` is ``"good"`` for normal images.
    """

    image_path: str
    mask_paths: tuple[str, ...] = ()
    label: int = 0
    class_name: str = ""
    defect: str = NORMAL
