"""Reading data by headers and names only, against decoding, side by side on the same files:
(1) `AnomalyDataset.validate()` of 1,000 MVTec image + mask pairs (64 px PNGs) by headers,
    vs `validate(decode=True)`;
(2) listing 3,000 Real-IAD items (1 view of 5 kept) from its json, vs reading the header
    of every listed image (what a listing that opened its files would add);
(3) refusing the PNG of bugcase 29 (a 6000 x 6000 header, 16 rows of data) with
    `read_rgb`, vs what taking it would cost: Pillow's decode with LOAD_TRUNCATED_IMAGES
    (black padding), the RGB array and the resize to a 256 px model input.
The tests assert the behaviour (nothing decoded, nothing opened); this measures the time.
Run: .venv/bin/python benchmarks/data.py  (about half a minute; --quick: fewer repeats)."""
import argparse
import io
import json
import os
import statistics
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from mtad.data import DataError, open_dataset, read_header, read_rgb, resize_rgb


def best_of(fn, repeats: int) -> float:
    """Median wall seconds of `repeats` calls of fn()."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def mvtec_pairs(root: Path, n: int) -> Path:
    """n test images and their masks (hard links of one 64 px texture and one mask)."""
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((64, 64, 3)) * 60 + 100).astype(np.uint8)).save(root / "i.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[:5] = 255
    Image.fromarray(mask).save(root / "m.png")
    for folder, src, suffix in (("test/crack", "i.png", ""), ("ground_truth/crack", "m.png", "_mask")):
        os.makedirs(root / "c" / folder)
        for i in range(n):
            os.link(root / src, root / "c" / folder / f"{i:04d}{suffix}.png")
    return root


def realiad_listing(root: Path, n: int) -> Path:
    """A Real-IAD class of n good items over 5 views (hard links of one 64 px JPEG)."""
    base = root / "realiad_1024" / "pcb" / "OK" / "S0001"
    os.makedirs(base)
    Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(root / "one.jpg")
    items = []
    for i in range(n):
        name = f"pcb_{i:04d}_OK_C{i % 5 + 1}_2023.jpg"
        os.link(root / "one.jpg", base / name)
        items.append({"image_path": f"OK/S0001/{name}", "anomaly_class": "OK", "mask_path": None})
    os.makedirs(root / "realiad_jsons")
    (root / "realiad_jsons" / "pcb.json").write_text(json.dumps({"train": items, "test": []}))
    return root


def short_png(width: int = 6000, height: int = 6000, rows: int = 16) -> bytes:
    """An RGB PNG whose header says width x height but whose data holds `rows` rows."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = zlib.compress(b"\0" * (1 + 3 * width) * rows, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


def refuse(data: bytes) -> None:
    try:
        read_rgb(data)
    except DataError as exc:
        assert "16 of 6000 rows" in str(exc), exc
    else:
        raise SystemExit("read_rgb took the truncated PNG")


def pillow_padded(data: bytes) -> None:
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            resize_rgb(np.asarray(img.convert("RGB")), 256)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 repeat instead of 5 (3 for decoding)")
    args = ap.parse_args()
    fast, slow = (1, 1) if args.quick else (5, 3)
    with tempfile.TemporaryDirectory(prefix="mtad_bench_data_") as work:
        work = Path(work)
        os.makedirs(work / "mvtec")
        ds = open_dataset(mvtec_pairs(work / "mvtec", 1000), split="test")
        headers = best_of(ds.validate, fast)
        decoded = best_of(lambda: ds.validate(decode=True), slow)
        print(f"validate 1,000 image + mask pairs (64 px PNG): headers {headers * 1e3:.0f} ms, "
              f"decode=True {decoded * 1e3:.0f} ms ({decoded / headers:.1f}x)")

        os.makedirs(work / "realiad")
        root = realiad_listing(work / "realiad", 3000)
        listed = open_dataset(root, split="train", views=["C3"])
        listing = best_of(lambda: open_dataset(root, split="train", views=["C3"]), fast)
        opening = best_of(lambda: [read_header(r.image_path) for r in listed.records], fast)
        print(f"list 3,000 Real-IAD items ({len(listed)} kept, view C3): {listing * 1e3:.0f} ms; "
              f"opening the header of each kept image would add {opening * 1e3:.0f} ms "
              f"({opening / listing:.1f}x the listing)")

        data = short_png()
        refused = best_of(lambda: refuse(data), fast)
        padded = best_of(lambda: pillow_padded(data), 1)
        print(f"PNG with a 6000 x 6000 header and 16 rows of data ({len(data):,} bytes): "
              f"refused by read_rgb in {refused * 1e3:.1f} ms; taken (Pillow's padded decode, RGB "
              f"array, resize to 256 px) {padded:.2f} s ({padded / refused:,.0f}x)")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
