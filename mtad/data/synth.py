"""Demo data in MVTec AD layout, made from real photographs that ship with scikit-image.

No industrial dataset can be downloaded on offline machines, yet the demo and
the quality tests need real image statistics (a pretrained encoder sees
through synthetic noise textures). So each class is one real texture photo:
training crops come from its left part, test crops from its right part (the
two regions never share a pixel), with random offsets and flips so normal
images vary. An optional calibration split (``calibration/<class>/NNN.png``,
good images for `mtad calibrate`) is cropped from the test part too, from its
own random stream, so adding it changes no other image. Test images carry synthetic defects (``defects.py``) with exact
masks. Everything derives from one seeded numpy Generator per class, so a
seed always gives the same bytes.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .defects import AREA_RANGE, DEFECT_KINDS, add_defect


@dataclass(frozen=True)
class Photo:
    """A photograph inside the scikit-image wheel (no network needed)."""

    loader: str  # name of the skimage.data function
    licence: str


# Class name -> texture photograph. The order fixes each class's random stream.
CLASS_PHOTOS = {
    "brick": Photo("brick", "CC0 (CC0Textures Bricks25)"),
    "grass": Photo("grass", "CC0 (CC0Textures)"),
    "gravel": Photo("gravel", "CC0 (CC0Textures Gravel04)"),
    "tissue": Photo("immunohistochemistry", "no known copyright restrictions"),
    "stars": Photo("hubble_deep_field", "public domain (NASA)"),
}
DEFAULT_CLASSES = ("brick", "grass", "gravel", "tissue")

# Other photographs whose crops become the foreign texture of DRAEM-style defects.
FOREIGN_PHOTOS = {
    "coffee": Photo("coffee", "CC0 (Rachel Michetti)"),
    "chelsea": Photo("chelsea", "CC0 (Stefan van der Walt)"),
    "astronaut": Photo("astronaut", "public domain (NASA)"),
    "rocket": Photo("rocket", "public domain (SpaceX)"),
    "retina": Photo("retina", "CC0 1.0"),
    "camera": Photo("camera", "CC0 (Lav Varshney)"),
    "coins": Photo("coins", "no known copyright restrictions"),
}

SUMMARY_FILE = "demo_summary.json"
CALIBRATION_DIR = "calibration"   # good images for `mtad calibrate DIR/<class>/...`
MANIFEST_FILE = "demo_manifest.json"
README_FILE = "README.txt"

# Fraction of the photo width left unused between the training and test regions.
_GAP = 0.03
# Crop side as a fraction of the region's shorter side: room for random offsets.
_CROP = 0.875


def load_photo(loader: str) -> np.ndarray:
    """A scikit-image sample photo as uint8 (H x W grey or H x W x 3 colour)."""
    import skimage.data

    a = np.asarray(getattr(skimage.data, loader)())
    if a.ndim == 3:
        a = a[:, :, :3]
    return np.ascontiguousarray(a.astype(np.uint8))


def regions(width: int, height: int) -> dict[str, tuple[int, int, int, int]]:
    """Disjoint (x0, y0, x1, y1) boxes: left part for training, right part for testing."""
    gap = max(2, int(round(_GAP * width)))
    left = (width - gap) // 2
    return {"train": (0, 0, left, height), "test": (left + gap, 0, width, height)}


def sample_box(region, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A random square crop inside ``region``."""
    x0, y0, x1, y1 = region
    side = int(_CROP * min(x1 - x0, y1 - y0))
    x = x0 + int(rng.integers(0, x1 - x0 - side + 1))
    y = y0 + int(rng.integers(0, y1 - y0 - side + 1))
    return (x, y, x + side, y + side)


def render_crop(photo: np.ndarray, box, hflip: bool, vflip: bool, size: int) -> np.ndarray:
    """The crop ``box`` of ``photo``, flipped, resized to ``size`` (same channels)."""
    x0, y0, x1, y1 = box
    crop = photo[y0:y1, x0:x1]
    if hflip:
        crop = crop[:, ::-1]
    if vflip:
        crop = crop[::-1]
    img = Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.BICUBIC)
    return np.asarray(img)


def _as_channels(a: np.ndarray, channels: int) -> np.ndarray:
    if a.ndim == 2:
        a = a[:, :, None]
    if channels == 1 and a.shape[2] == 3:
        grey = np.asarray(Image.fromarray(a).convert("L"))
        return grey[:, :, None]
    if channels == 3 and a.shape[2] == 1:
        return np.repeat(a, 3, axis=2)
    return a


def _foreign_source(pool: list[np.ndarray], size: int, channels: int):
    """A function drawing a random crop of a random foreign photo, as floats in [0, 1]."""

    def draw(rng: np.random.Generator) -> np.ndarray:
        photo = pool[int(rng.integers(0, len(pool)))]
        h, w = photo.shape[:2]
        side = int(min(h, w) * rng.uniform(0.3, 0.7))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = render_crop(photo, (x, y, x + side, y + side), bool(rng.random() < 0.5), False, size)
        return _as_channels(crop, channels).astype(np.float64) / 255.0

    return draw


def _save(a: np.ndarray, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    Image.fromarray(np.ascontiguousarray(a)).save(path, format="PNG")


def _prepare_out_dir(out_dir: str) -> None:
    """Create ``out_dir``; replace a previous demo there, refuse to touch anything else."""
    if not os.path.exists(out_dir):
        os.makedirs(out_dir)
        return
    entries = os.listdir(out_dir)
    if not entries:
        return
    summary = os.path.join(out_dir, SUMMARY_FILE)
    if not os.path.isfile(summary):
        raise FileExistsError(
            f"{out_dir}: folder is not empty and holds no earlier demo ({SUMMARY_FILE}); "
            "choose an empty or new folder"
        )
    with open(summary, encoding="utf-8") as f:
        old = json.load(f)
    for cls in old.get("classes", {}):
        path = os.path.join(out_dir, cls)
        if os.path.isdir(path) and os.path.basename(os.path.normpath(path)) == cls:
            shutil.rmtree(path)
    if os.path.isdir(os.path.join(out_dir, CALIBRATION_DIR)):
        shutil.rmtree(os.path.join(out_dir, CALIBRATION_DIR))
    for name in (SUMMARY_FILE, MANIFEST_FILE, README_FILE):
        if os.path.isfile(os.path.join(out_dir, name)):
            os.remove(os.path.join(out_dir, name))


def _readme(summary: dict) -> str:
    lines = [
        "mtad demo dataset (MVTec AD layout), generated by mtad.data.synth.make_demo_dataset",
        f"seed {summary['seed']}, image size {summary['image_size']} px",
        "",
        "Each class is one real photograph shipped inside the scikit-image wheel.",
        "Training crops come from the left part of the photo, test crops from the",
        "right part; the two regions share no pixel (see demo_manifest.json for",
        "every crop box). Test defects are synthetic, painted onto real test crops:",
        "  foreign_texture  a crop of another photo on a Perlin-noise blob (DRAEM style)",
        "  cutpaste         a jittered patch or thin scar of the same image (CutPaste)",
        "  scratch          thin scratches and branching cracks",
        "  stain            darker/lighter stains, tints and colour shifts",
        "Masks (ground_truth/<kind>/NNN_mask.png, 0/255) mark exactly the changed pixels;",
        f"each defect covers {AREA_RANGE[0]:.1%} to {AREA_RANGE[1]:.0%} of its image.",
        "",
        "Classes:",
    ]
    for cls, info in summary["classes"].items():
        d = ", ".join(f"{k} {v}" for k, v in info["test_defect"].items())
        lines.append(
            f"  {cls}: skimage.data.{info['photo']}() ({info['licence']}; "
            f"{'colour' if info['colour'] else 'grey'}); train {info['train']}, "
            f"test good {info['test_good']}, test defect: {d}, "
            f"calibration good {info['calibration']} (calibration/{cls}/)"
        )
    lines += ["", "Foreign textures from skimage.data: " + ", ".join(
        f"{p.loader}() ({p.licence})" for p in summary["_foreign"].values()
    )]
    return "\n".join(lines) + "\n"


def make_demo_dataset(
    out_dir,
    seed: int = 0,
    image_size: int = 256,
    n_train: int = 40,
    n_test_good: int = 12,
    n_test_defect: int = 16,
    n_calibration: int = 0,
    classes=None,
    defect_kinds=DEFECT_KINDS,
) -> dict:
    """Write a small MVTec-AD-layout dataset of real texture photos with synthetic defects.

    Classes default to brick, grass, gravel (grey) and tissue (colour); also
    available: stars. Defect images are spread evenly over ``defect_kinds``.
    Returns a summary (also written to ``demo_summary.json``; every crop box
    and defect area goes to ``demo_manifest.json``, provenance to README.txt).
    """
    if classes is None:
        classes = DEFAULT_CLASSES
    classes = [classes] if isinstance(classes, str) else list(classes)
    unknown = [c for c in classes if c not in CLASS_PHOTOS]
    if unknown or not classes:
        raise ValueError(f"unknown demo class(es) {unknown}; available: {', '.join(CLASS_PHOTOS)}")
    bad_kinds = [k for k in defect_kinds if k not in DEFECT_KINDS]
    if bad_kinds or not defect_kinds:
        raise ValueError(f"unknown defect kind(s) {bad_kinds}; available: {', '.join(DEFECT_KINDS)}")
    if int(image_size) != image_size or image_size < 16:
        raise ValueError(f"image_size must be an integer >= 16, got {image_size!r}")
    for name, n in (("n_train", n_train), ("n_test_good", n_test_good),
                    ("n_test_defect", n_test_defect), ("n_calibration", n_calibration)):
        if int(n) != n or n < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {n!r}")
    if n_train < 1:
        raise ValueError("n_train must be at least 1")
    out_dir = os.fspath(out_dir)
    _prepare_out_dir(out_dir)

    foreign_names = dict(FOREIGN_PHOTOS)
    for cls in CLASS_PHOTOS:
        if cls not in classes and cls not in DEFAULT_CLASSES:
            foreign_names[cls] = CLASS_PHOTOS[cls]
    foreign = [load_photo(p.loader) for p in foreign_names.values()]
    summary: dict = {
        "seed": int(seed),
        "image_size": int(image_size),
        "defect_kinds": list(defect_kinds),
        "classes": {},
    }
    manifest: dict = {"regions": {}, "images": []}
    order = list(CLASS_PHOTOS)

    for cls in classes:
        photo_info = CLASS_PHOTOS[cls]
        photo = load_photo(photo_info.loader)
        h, w = photo.shape[:2]
        channels = 3 if photo.ndim == 3 else 1
        rng = np.random.default_rng([int(seed), order.index(cls)])
        boxes = regions(w, h)
        manifest["regions"][cls] = {
            "photo": photo_info.loader, "width": w, "height": h, **{k: list(v) for k, v in boxes.items()}
        }
        draw_foreign = _foreign_source(foreign, image_size, channels)
        counts = {k: 0 for k in defect_kinds}

        def crop(split: str) -> tuple[np.ndarray, dict]:
            box = sample_box(boxes[split], rng)
            hflip, vflip = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
            img = _as_channels(render_crop(photo, box, hflip, vflip, image_size), channels)
            return img, {"box": list(box), "hflip": hflip, "vflip": vflip}

        jobs = [("train", "good", i) for i in range(n_train)]
        jobs += [("test", "good", i) for i in range(n_test_good)]
        for i in range(n_test_defect):
            kind = defect_kinds[i % len(defect_kinds)]
            jobs.append(("test", kind, counts[kind]))
            counts[kind] += 1
        cal_rng = np.random.default_rng([int(seed), order.index(cls), 1])   # its own stream
        for index in range(n_calibration):
            box = sample_box(boxes["test"], cal_rng)
            hflip, vflip = bool(cal_rng.random() < 0.5), bool(cal_rng.random() < 0.5)
            img = _as_channels(render_crop(photo, box, hflip, vflip, image_size), channels)
            rel = f"{CALIBRATION_DIR}/{cls}/{index:03d}.png"
            _save(img, os.path.join(out_dir, rel))
            manifest["images"].append({"path": rel, "class": cls, "split": "calibration",
                                       "defect": "good", "box": list(box), "hflip": hflip,
                                       "vflip": vflip})
        for split, kind, index in jobs:
            img, info = crop(split)
            rel = f"{cls}/{split}/{kind}/{index:03d}.png"
            entry = {"path": rel, "class": cls, "split": split, "defect": kind, **info}
            if kind != "good":
                img, mask = add_defect(img, kind, rng, draw_foreign)
                mask_rel = f"{cls}/ground_truth/{kind}/{index:03d}_mask.png"
                _save(mask.astype(np.uint8) * 255, os.path.join(out_dir, mask_rel))
                entry.update(mask=mask_rel, defect_area=round(float(mask.mean()), 6))
            _save(img, os.path.join(out_dir, rel))
            manifest["images"].append(entry)
        summary["classes"][cls] = {
            "photo": photo_info.loader,
            "licence": photo_info.licence,
            "colour": channels == 3,
            "train": n_train,
            "test_good": n_test_good,
            "calibration": n_calibration,
            "test_defect": {k: v for k, v in counts.items() if v},
        }

    summary["_foreign"] = foreign_names
    readme = _readme(summary)
    del summary["_foreign"]
    summary["foreign_photos"] = {n: p.licence for n, p in foreign_names.items()}
    with open(os.path.join(out_dir, README_FILE), "w", encoding="utf-8") as f:
        f.write(readme)
    for name, data in ((SUMMARY_FILE, summary), (MANIFEST_FILE, manifest)):
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=False)
            f.write("\n")
    return {**summary, "out_dir": out_dir}
