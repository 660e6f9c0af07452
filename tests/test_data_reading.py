"""Reading files: every image mode, masks judged by content, EXIF orientation, uploads."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFile, ImageOps, features

from layout_builders import S, png16_rgb, write_mask
from mtad.data import DataError, binarise_mask, read_header, read_mask, read_rgb, resize_rgb, to_unit_float
from mtad.data.transforms import prepare_image


def test_read_rgb_handles_every_mode(tmp_path):
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    Image.fromarray(grey).save(tmp_path / "grey.png")
    assert read_rgb(tmp_path / "grey.png").shape == (8, 8, 3)
    assert (read_rgb(tmp_path / "grey.png")[:, :, 1] == grey).all()

    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0  # fully transparent: alpha must be ignored
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert tuple(read_rgb(tmp_path / "rgba.png")[0, 0]) == (200, 0, 0)

    pal = Image.fromarray(np.full((8, 8, 3), (10, 180, 60), np.uint8)).convert("P", palette=Image.ADAPTIVE)
    pal.save(tmp_path / "pal.png")
    assert Image.open(tmp_path / "pal.png").mode == "P"
    assert tuple(read_rgb(tmp_path / "pal.png")[3, 3]) == (10, 180, 60)

    wide = np.full((8, 8), 1000, np.uint16)
    wide[0, 0], wide[0, 1] = 65535, 32768
    Image.fromarray(wide).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    g16 = read_rgb(tmp_path / "g16.png")
    assert g16.dtype == np.uint8
    # Scaled (1000 / 65535 * 255 = 3.9), not clipped to 255 as PIL's convert does.
    assert tuple(g16[1, 1]) == (4, 4, 4) and g16[0, 0, 0] == 255 and g16[0, 1, 0] == 128

    c16 = np.zeros((8, 8, 3), np.uint16)
    c16[..., 0], c16[..., 1], c16[..., 2] = 65535, 32768, 1000
    png16_rgb(tmp_path / "c16.png", c16)
    assert tuple(read_rgb(tmp_path / "c16.png")[0, 0]) in {(255, 128, 3), (255, 128, 4)}

    Image.fromarray(np.full((8, 8, 3), 77, np.uint8)).save(tmp_path / "x.bmp")
    Image.fromarray(np.full((8, 8, 3), 77, np.uint8)).save(tmp_path / "x.jpg", quality=95)
    Image.fromarray(grey).convert("1").save(tmp_path / "bw.png")
    Image.fromarray(np.stack([grey, grey], -1), "LA").save(tmp_path / "la.png")
    for name in ("x.bmp", "x.jpg", "bw.png", "la.png"):
        a = read_rgb(tmp_path / name)
        assert a.dtype == np.uint8 and a.shape == (8, 8, 3), name
    assert abs(int(read_rgb(tmp_path / "x.jpg")[4, 4, 0]) - 77) <= 2   # JPEG is lossy


def test_read_mask_counts_any_nonzero(tmp_path):
    write_mask(tmp_path / "m.png", 4, value=1)
    assert read_mask(tmp_path / "m.png").sum() == 4 * S
    rgb = np.zeros((S, S, 3), np.uint8)
    rgb[:2, :, 2] = 1
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert read_mask(tmp_path / "rgb.png").sum() == 2 * S


# ----------------------------------------------------------------------------- masks judged by content


def scratch(side=128, scale=1):
    """A 2-px scratch drawn at ``scale`` times the size (then shrunk: anti-aliased)."""
    img = Image.new("L", (side * scale, side * scale), 0)
    ImageDraw.Draw(img).line([(10 * scale, 20 * scale), (110 * scale, 100 * scale)], fill=255, width=2 * scale)
    return img if scale == 1 else img.resize((side, side), Image.BOX)


@pytest.mark.parametrize("ext, kw", [("jpg", {"quality": 95}), ("jpg", {"quality": 75}), ("png", "aa")])
def test_grey_level_masks_keep_the_drawn_area(tmp_path, ext, kw):
    if kw == "aa":  # anti-aliased PNG: drawn at 4x, shrunk; the drawn area is its coverage
        img = scratch(scale=4)
        drawn = np.asarray(img, np.float64).sum() / 255
        img.save(tmp_path / "m.png")
    else:
        img = scratch()
        drawn = (np.asarray(img) >= 128).sum()
        img.save(tmp_path / f"m.{ext}", **kw)
    stored = np.asarray(Image.open(tmp_path / f"m.{ext}"))
    assert len(np.unique(stored)) > 10  # really a spread of grey levels
    assert (stored > 0).sum() > 1.4 * drawn  # what "any non-zero" used to count
    area = read_mask(tmp_path / f"m.{ext}").sum()
    assert abs(area / drawn - 1) < 0.05, (area, drawn)  # the format's edge blur, not rounding


def test_label_masks_count_every_nonzero_value(tmp_path):
    loco = np.zeros((S, S), np.uint8)
    loco[0:2], loco[4:7], loco[9:10] = 236, 240, 255  # LOCO's values
    Image.fromarray(loco).save(tmp_path / "loco.png")
    assert read_mask(tmp_path / "loco.png").sum() == 6 * S
    visa = np.zeros((S, S), np.uint8)
    visa[0:3], visa[5:6] = 1, 2  # VisA's region values
    Image.fromarray(visa).save(tmp_path / "visa.png")
    assert read_mask(tmp_path / "visa.png").sum() == 4 * S
    # Region indices 1..12: too many levels for "a handful", but all small: indices, not greys.
    regions = np.repeat(np.arange(13, dtype=np.uint8), 2)[None].repeat(4, 0)
    assert binarise_mask(regions).sum() == 4 * 24
    # Grey values as class labels (none faint next to the brightest): all count.
    assert binarise_mask(np.array([[0, 50, 85, 170, 255]], np.uint8)).sum() == 4
    # JPEG ringing beside a bright stroke: faint values, however few, do not count.
    assert binarise_mask(np.array([[0, 1, 2, 255, 255]], np.uint8)).sum() == 2
    wide = np.zeros((4, 4), np.uint16)
    wide[0] = 65535
    assert binarise_mask(wide).sum() == 4
    # A spread of grey levels: half the maximum.
    greys = np.arange(0, 200, dtype=np.uint8)
    assert binarise_mask(greys).sum() == 100
    assert binarise_mask(greys.astype(np.float32) / 199).sum() == 100


# ----------------------------------------------------------------------------- EXIF orientation


def tagged(a, orientation, fmt="PNG"):
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, fmt, exif=exif)
    return buf.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_exif_transpose(orientation, monkeypatch):
    raw = (np.arange(3 * 5 * 3).reshape(3, 5, 3) * 5).astype(np.uint8)
    data = tagged(raw, orientation)
    shown = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    assert np.array_equal(read_rgb(data), shown)
    assert np.array_equal(read_rgb(data, exif_orientation=False), raw)
    mask = tagged((raw[:, :, 0] > 30).astype(np.uint8) * 255, orientation)
    assert np.array_equal(read_mask(mask), shown[:, :, 0] > 30)
    assert np.array_equal(read_mask(mask, exif_orientation=False), raw[:, :, 0] > 30)
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded pixels"))
    head = read_header(data)
    assert head.size == (shown.shape[1], shown.shape[0]) and head.raw_size == (5, 3)
    assert head.orientation == orientation and not head.lossy
    assert read_header(data, exif_orientation=False).size == (5, 3)


def test_exif_orientation_of_a_jpeg(tmp_path):
    raw = np.full((32, 48, 3), 200, np.uint8)
    raw[2:12, 2:12] = 0  # dark at the stored top-left
    (tmp_path / "photo.jpg").write_bytes(tagged(raw, 6, "JPEG"))
    rgb = read_rgb(tmp_path / "photo.jpg")
    assert rgb.shape == (48, 32, 3)  # shown rotated 90 clockwise: top-left -> top-right
    assert rgb[2:12, -12:-2].mean() < 30 and rgb[2:12, 2:12].mean() > 170
    head = read_header(tmp_path / "photo.jpg")
    assert head.size == (32, 48) and head.lossy and head.format == "JPEG"


# ----------------------------------------------------------------------------- uploads and limits


def test_read_rgb_takes_uploads_and_limits_pixels(tmp_path, monkeypatch):
    a = (np.random.default_rng(0).random((8, 12, 3)) * 255).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "x.png")
    data = (tmp_path / "x.png").read_bytes()
    assert np.array_equal(read_rgb(data), a)
    assert np.array_equal(read_rgb(io.BytesIO(data)), a)
    with open(tmp_path / "x.png", "rb") as f:
        assert np.array_equal(read_rgb(f, max_pixels=96), a)
        f.seek(0)
        with pytest.raises(DataError, match=r"x\.png: 12 x 8 = 96 pixels, more than the 95-pixel limit"):
            read_rgb(f, max_pixels=95)
    with pytest.raises(DataError, match="uploaded bytes.*not|uploaded bytes: cannot read"):
        read_rgb(b"not an image")
    # PIL's own decompression-bomb guard becomes a DataError naming the file and the limit.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20)
    with pytest.raises(DataError) as err:
        read_rgb(tmp_path / "x.png")
    assert str(err.value).startswith(str(tmp_path / "x.png")) and "more than the 40-pixel limit" in str(err.value)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 60)  # over the warning level only: read
    assert read_rgb(tmp_path / "x.png").shape == (8, 12, 3)


def test_lossy_formats_are_recognised_from_headers(tmp_path):
    a = np.zeros((8, 8, 3), np.uint8)
    Image.fromarray(a).save(tmp_path / "a.jpg")
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(a).save(tmp_path / "a.bmp")
    assert read_header(tmp_path / "a.jpg").lossy
    assert not read_header(tmp_path / "a.png").lossy and not read_header(tmp_path / "a.bmp").lossy
    if features.check("webp"):
        Image.fromarray(a).save(tmp_path / "lossy.webp", quality=80)
        Image.fromarray(a).save(tmp_path / "lossless.webp", lossless=True)
        assert read_header(tmp_path / "lossy.webp").lossy
        assert not read_header(tmp_path / "lossless.webp").lossy


# ----------------------------------------------------------------------------- resizing without torch


def test_resize_rgb_is_the_resize_training_uses(tmp_path):
    rgb = (np.random.default_rng(1).random((30, 50, 3)) * 255).astype(np.uint8)
    small = resize_rgb(rgb, 20)
    tensor, display = prepare_image(rgb, 20)
    assert small.shape == (20, 20, 3) and small.dtype == np.uint8 and np.array_equal(small, display)
    unit = to_unit_float(np.stack([small, small]))
    assert unit.shape == (2, 3, 20, 20) and unit.dtype == np.float32
    assert np.array_equal(unit[0], small.transpose(2, 0, 1) / np.float32(255))
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    # float32 (x - mean) / std of values <= 2.7: <= ~10 correctly rounded ops' worth, 6e-7
    np.testing.assert_allclose(tensor.numpy(), (unit[0] - mean[:, None, None]) / std[:, None, None], atol=1e-6)
    with pytest.raises(DataError, match="image_size: 0 is not a positive integer"):
        resize_rgb(rgb, 0)


@pytest.mark.slow
def test_reading_and_resizing_need_no_torch(tmp_path):
    rgb = (np.random.default_rng(2).random((30, 50, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # import torch now raises ImportError
        from mtad.data.imageio import read_rgb, read_mask
        from mtad.data.transforms import resize_rgb, to_unit_float
        from mtad.data.layouts import LAYOUT_NAMES, normalise_layout
        x = to_unit_float(resize_rgb(read_rgb({str(tmp_path / "x.png")!r}), 16))
        assert x.shape == (1, 3, 16, 16) and 0 <= x.min() and x.max() <= 1
        assert normalise_layout("MVTec") == "mvtec"
        print("ok")
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def _png(width, height, raw_rows: bytes, colour=2, interlace=0) -> bytes:
    """A PNG from its filtered scanlines (filter byte 0 each), zlib stream complete."""
    import struct
    import zlib

    def chunk(tag, data):
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, interlace)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw_rows))
            + chunk(b"IEND", b""))


def test_png_whose_pixel_data_ends_early_is_refused_naming_it(tmp_path):
    """A PNG cut after 4 of its 40 rows with an intact header and a complete zlib stream
    (a writer stopped early): Pillow reads it black-padded without a word; mtad refuses
    it as truncated, for images, masks and uploads alike (bugcase 23)."""
    rgb = np.random.default_rng(3).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    rows = [b"\0" + rgb[y].tobytes() for y in range(40)]
    (tmp_path / "whole.png").write_bytes(_png(30, 40, b"".join(rows)))
    np.testing.assert_array_equal(read_rgb(tmp_path / "whole.png"), rgb)   # the writer is right
    (tmp_path / "cut.png").write_bytes(_png(30, 40, b"".join(rows[:4])))
    Image.open(tmp_path / "cut.png").load()                                  # Pillow: no error
    for read in (read_rgb, read_mask):
        with pytest.raises(DataError, match=r"cut\.png: cannot read image \(truncated: its pixel "
                                            r"data ends after 4 of 40 rows\)"):
            read(tmp_path / "cut.png")
    upload = io.BytesIO((tmp_path / "cut.png").read_bytes())
    upload.name = "upload.png"
    with pytest.raises(DataError, match=r"upload\.png: .*4 of 40 rows"):
        read_rgb(upload)
    # Adam7-interlaced: the seven passes' rows, each sub-sampled
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
              (0, 1, 1, 2)]
    interlaced = b"".join(b"\0" + rgb[y, x0::dx].tobytes()
                          for x0, y0, dx, dy in passes for y in range(y0, 40, dy))
    (tmp_path / "adam7.png").write_bytes(_png(30, 40, interlaced, interlace=1))
    np.testing.assert_array_equal(read_rgb(tmp_path / "adam7.png"), rgb)
    (tmp_path / "adam7_cut.png").write_bytes(_png(30, 40, interlaced[:len(interlaced) // 3],
                                                  interlace=1))
    with pytest.raises(DataError, match=r"adam7_cut\.png: .*truncated.*% of it \(interlaced\)"):
        read_rgb(tmp_path / "adam7_cut.png")
    # what Pillow writes, in many IDAT chunks and every mode, is whole
    big = np.random.default_rng(4).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    Image.fromarray(big).save(tmp_path / "big.png", compress_level=0)
    np.testing.assert_array_equal(read_rgb(tmp_path / "big.png"), big)


@pytest.mark.slow
def test_nothing_mtad_imports_lets_pillow_pad_truncated_images():
    """ImageFile.LOAD_TRUNCATED_IMAGES on would make every cut-short file read as whole."""
    code = ("import mtad.engine.predict, mtad.engine.train, mtad.deploy.inferencer, "
            "mtad.serve.app, timm, torchvision\nfrom PIL import ImageFile\n"
            "print(ImageFile.LOAD_TRUNCATED_IMAGES)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr[-2000:]
