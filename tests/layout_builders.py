"""Writers of tiny images and masks, and builders of miniature trees of every layout.

Shared by the tests of mtad.data (test_layouts_*.py, test_data_*.py); trees are
built in pytest's tmp_path.
"""
from __future__ import annotations

import csv
import json
import os
import struct
import zlib

import numpy as np
from PIL import Image

S = 16  # side of the tiny test images; image_size=S keeps mask areas exact


# ----------------------------------------------------------------------------- writers


def write_img(path, value=128, size=(S, S), mode="RGB"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    a = np.full((size[1], size[0], 3), value, np.uint8)
    Image.fromarray(a).convert(mode).save(path)
    return str(path)


def write_mask(path, rows, size=(S, S), value=255, start=0):
    """A mask whose first ``rows`` rows (from ``start``) are set: its area identifies it."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    a = np.zeros((size[1], size[0]), np.uint8)
    a[start : start + rows] = value
    Image.fromarray(a).save(path)
    return str(path)


def png16_rgb(path, arr):
    """A 16-bit RGB PNG (PIL cannot write one)."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, payload):
        body = tag + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


# ----------------------------------------------------------------------------- layout builders

MVTEC_DEFECTS = {"crack": ["1", "2", "10"], "scratch": ["0"]}


def build_mvtec(root, classes=("bottle", "cable"), n_train=3, n_good=2, defects=MVTEC_DEFECTS):
    for cls in classes:
        for i in range(n_train):
            write_img(root / cls / "train" / "good" / f"{i:03d}.png")
        for i in range(n_good):
            write_img(root / cls / "test" / "good" / f"{i:03d}.png")
        for defect, stems in defects.items():
            for stem in stems:
                write_img(root / cls / "test" / defect / f"{stem}.png")
                write_mask(root / cls / "ground_truth" / defect / f"{stem}_mask.png", int(stem) + 1)
    return root


def build_btad(root):
    for cls in ("01", "02"):
        for i in range(2):
            write_img(root / cls / "train" / "ok" / f"{i:04d}.bmp")
            write_img(root / cls / "test" / "ok" / f"{i:04d}.bmp")
        for stem, rows in (("0000", 3), ("0007", 5)):
            write_img(root / cls / "test" / "ko" / f"{stem}.bmp")
            write_mask(root / cls / "ground_truth" / "ko" / f"{stem}.png", rows)
    return root


def build_loco(root):
    cls = "juice_bottle"
    for i in range(2):
        write_img(root / cls / "train" / "good" / f"{i:03d}.png")
        write_img(root / cls / "validation" / "good" / f"{i:03d}.png")
        write_img(root / cls / "test" / "good" / f"{i:03d}.png")
    write_img(root / cls / "test" / "logical_anomalies" / "000.png")
    write_mask(root / cls / "ground_truth" / "logical_anomalies" / "000" / "000.png", 2, start=0)
    write_mask(root / cls / "ground_truth" / "logical_anomalies" / "000" / "001.png", 3, start=10)
    write_img(root / cls / "test" / "structural_anomalies" / "000.png")
    write_mask(root / cls / "ground_truth" / "structural_anomalies" / "000" / "000.png", 4)
    return root


def build_mvtec3d(root):
    cls = "bagel"
    for i in range(2):
        write_img(root / cls / "train" / "good" / "rgb" / f"{i:03d}.png")
        write_mask(root / cls / "train" / "good" / "gt" / f"{i:03d}.png", 0)
        write_img(root / cls / "validation" / "good" / "rgb" / f"{i:03d}.png")
        write_img(root / cls / "test" / "good" / "rgb" / f"{i:03d}.png")
        write_mask(root / cls / "test" / "good" / "gt" / f"{i:03d}.png", 0)
    write_img(root / cls / "test" / "crack" / "rgb" / "000.png")
    write_mask(root / cls / "test" / "crack" / "gt" / "000.png", 6)
    os.makedirs(root / cls / "test" / "crack" / "xyz")
    return root


def build_visa(root, mask_value=1):
    rows = []
    for cls in ("candle", "pcb1"):
        for i in range(3):
            rel = f"{cls}/Data/Images/Normal/{i:04d}.JPG"
            write_img(root / rel)
            rows.append([cls, "train" if i < 2 else "test", "normal", rel, ""])
        anno = [["image", "label", "mask"]]
        for i, rows_set in ((0, 2), (1, 5)):
            rel = f"{cls}/Data/Images/Anomaly/{i:03d}.JPG"
            mrel = f"{cls}/Data/Masks/Anomaly/{i:03d}.png"
            write_img(root / rel)
            write_mask(root / mrel, rows_set, value=mask_value)
            rows.append([cls, "test", "anomaly", rel, mrel])
            anno.append([rel, "scratch" if i == 0 else "chunk missing", mrel])
        with open(root / cls / "image_anno.csv", "w", newline="") as f:
            csv.writer(f).writerows(anno)
    os.makedirs(root / "split_csv", exist_ok=True)
    with open(root / "split_csv" / "1cls.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["object", "split", "label", "image", "mask"])
        w.writerows(rows)
    return root


def realiad_name(cls, sample, kind, view):
    return f"{cls}_{sample:04d}_{kind}_{view}_2023102113110{sample}"


def build_realiad(root, res="256"):
    for cls in ("audiojack", "woodstick"):
        base = root / f"realiad_{res}" / cls
        train, test = [], []
        for sample, split in ((1, train), (2, test)):
            for view in ("C1", "C2"):
                rel = f"OK/S{sample:04d}/{realiad_name(cls, sample, 'OK', view)}.jpg"
                write_img(base / rel)
                split.append({"category": cls, "anomaly_class": "OK", "image_path": rel, "mask_path": None})
        for view, rows in (("C1", 2), ("C2", 7)):
            stem = realiad_name(cls, 3, "NG", view)
            rel = f"NG/AK/S0003/{stem}.jpg"
            write_img(base / rel)
            write_mask(base / f"NG/AK/S0003/{stem}.png", rows)
            test.append({"category": cls, "anomaly_class": "AK", "image_path": rel, "mask_path": f"NG/AK/S0003/{stem}.png"})
        jdir = root / "realiad_jsons" / "realiad_jsons"
        os.makedirs(jdir, exist_ok=True)
        with open(jdir / f"{cls}.json", "w") as f:
            json.dump({"meta": {"normal_class": "OK"}, "train": train, "test": test}, f)
    return root


def build_ader(root):
    meta = {"train": {}, "test": {}}
    for cls in ("capsule", "grid"):
        meta["train"][cls] = [
            {"img_path": write_rel(root, f"imgs/{cls}/train/{i}.png"), "mask_path": "", "cls_name": cls, "specie_name": "good", "anomaly": 0}
            for i in range(2)
        ]
        test = [{"img_path": write_rel(root, f"imgs/{cls}/test/ok.png"), "mask_path": "", "cls_name": cls, "specie_name": "good", "anomaly": 0}]
        mrel = f"masks/{cls}/hole.png"
        write_mask(root / mrel, 3)
        test.append({"img_path": write_rel(root, f"imgs/{cls}/test/hole.png"), "mask_path": mrel, "cls_name": cls, "specie_name": "hole", "anomaly": 1})
        meta["test"][cls] = test
    with open(root / "meta.json", "w") as f:
        json.dump(meta, f)
    return root


def write_rel(root, rel):
    write_img(root / rel)
    return rel


BUILDERS = {
    "mvtec": build_mvtec,
    "btad": build_btad,
    "mvtec_loco": build_loco,
    "mvtec3d": build_mvtec3d,
    "visa": build_visa,
    "realiad": build_realiad,
    "ader": build_ader,
}
