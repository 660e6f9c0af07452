"""The edges a new user hits with `mtad predict` and the files it writes: odd and
undecodable file names, spreadsheet formulas in names, damaged photos, bad flags,
unsupported image formats. An untrained tiny model saved as a run (conftest's tiny_run:
seconds, no training): these tests are about files, not scores."""
import csv
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mtad.deploy import open_model
from mtad.engine.predict import predict
from mtad.report.cells import FORMULA_START, csv_cell, printable, write_csv

# (cell, what a spreadsheet must get): formulas neutralised, numbers and text left alone
CELLS = [("=1+2.png", "'=1+2.png"), ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
         ("-2+3", "'-2+3"), ("@SUM(A1)", "'@SUM(A1)"), ("\tx.png", "'\tx.png"),
         ("\rx.png", "'\rx.png"), ("-0.25", "-0.25"), ("+1e-3", "+1e-3"), ("-.5", "-.5"),
         ("-inf", "'-inf"), ("a=b.png", "a=b.png"), ("", ""), ("part.png", "part.png")]


def quiet(*args, **kwargs):
    pass


def photo(path, seed=0, size=(60, 70)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(60, 200, (*size, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, format="PNG")
    return path


def test_csv_cells_starting_a_formula_get_an_apostrophe(tmp_path):
    for cell, safe in CELLS:
        assert csv_cell(cell) == safe, cell
    assert csv_cell(-0.5) == -0.5 and csv_cell(None) is None and csv_cell(3) == 3
    write_csv(tmp_path / "t.csv", ["a", "b"], [{"a": "=HYPERLINK(\"x\")", "b": 1}])
    write_csv(tmp_path / "t.csv", ["a", "b"], [{"a": "@x", "b": "-1"}], append=True)
    rows = list(csv.DictReader(open(tmp_path / "t.csv", newline="", encoding="utf-8")))
    assert rows == [{"a": "'=HYPERLINK(\"x\")", "b": "1"}, {"a": "'@x", "b": "-1"}]


@pytest.mark.slow
def test_the_serve_pages_csv_download_follows_the_same_rule():
    """static/app.js's csvCell, run by node, against csv_cell (then CSV quoting)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (apt-get install nodejs)")
    import json
    import re
    from pathlib import Path

    js = (Path(__file__).parents[1] / "mtad/serve/static/app.js").read_text()
    func = re.search(r"^function csvCell\(v\) \{.*?^\}", js, re.S | re.M).group(0)
    cases = [c for c, _ in CELLS] + ['say "hi", ok']
    script = f"{func}\nconsole.log(JSON.stringify({json.dumps(cases)}.map(csvCell)));"
    out = json.loads(subprocess.run([node, "-e", script], capture_output=True, text=True,
                                    check=True, timeout=60).stdout)

    def quoted(s):
        return '"' + s.replace('"', '""') + '"' if any(c in s for c in '",\n\r') else s

    assert out == [quoted(str(csv_cell(c))) for c in cases]
    assert set(FORMULA_START) == {"=", "+", "-", "@", "\t", "\r"}


@pytest.mark.skipif(sys.platform != "linux", reason="file names of any bytes: Linux")
def test_predict_takes_file_names_of_any_bytes_and_formula_names(tiny_run, tmp_path):
    """Names that are not UTF-8 (caf\\xe9.png, latin-1) are written backslash-escaped in
    scores.csv; other odd names round-trip; a name that is a formula is neutralised."""
    folder = tmp_path / "Prüfung 2024"
    names = ["фото 1.png", 'a,b"c\'d.png', "tab\tname.png", "line\nbreak.png", "emoji_🔧.png",
             "=1+2.png"]
    for i, name in enumerate(names):
        photo(folder / name, i)
    latin = os.fsdecode(os.fsencode(folder) + b"/caf\xe9.png")
    photo(type(folder)(latin), 9)
    out = tmp_path / "out"
    summary = predict(open_model(tiny_run, "cpu"), [folder], out, log=quiet)
    assert summary["processed"] == len(names) + 1
    rows = list(csv.DictReader(open(out / "scores.csv", newline="", encoding="utf-8")))
    paths = sorted(r["image_path"] for r in rows)
    expected = sorted([str(folder / n) for n in names if n != "=1+2.png"]
                      + [str(folder) + "/caf\\xe9.png", str(folder / "=1+2.png")])
    assert paths == expected
    assert (out / os.fsdecode(b"Pr\xc3\xbcfung 2024__caf\xe9_overlay.png")).is_file()
    assert len(list(out.glob("*_overlay.png"))) == len(names) + 1
    # the page of a run names such a file the same way
    assert printable(latin).endswith("/caf\\xe9.png") and printable(folder) == str(folder)


def test_formula_names_are_neutralised_in_scores_csv(tiny_run, tmp_path, monkeypatch):
    """A photo named as a spreadsheet formula (given as a relative path, so the cell starts
    with it) and a class name are written with a leading apostrophe in scores.csv."""
    photo(tmp_path / "=1+2.png")
    photo(tmp_path / "@SUM(A1).png", 1)
    monkeypatch.chdir(tmp_path)
    predict(open_model(tiny_run, "cpu"), ["=1+2.png", "@SUM(A1).png"], "out", log=quiet)
    rows = list(csv.DictReader(open(tmp_path / "out" / "scores.csv", encoding="utf-8")))
    assert [r["image_path"] for r in rows] == ["'=1+2.png", "'@SUM(A1).png"]
    assert all(float(r["pred_score"]) > 0 and r["pred_label"] in "01" for r in rows)


def test_predict_skips_and_names_a_png_cut_after_its_header(tiny_run, tmp_path):
    """Pixel data ending early (bugcase 23): skipped, named, not scored; the rest scored."""
    import struct
    import zlib

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(
            ">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    rows = b"".join(b"\0" + bytes(range(180)) * 3 for _ in range(4))     # 4 of 200 rows
    photo(tmp_path / "in" / "good.png")
    (tmp_path / "in" / "rows4of200.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 180, 200, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    lines = []
    summary = predict(open_model(tiny_run, "cpu"), [tmp_path / "in"], tmp_path / "out",
                      log=lines.append)
    assert summary["processed"] == 1 and summary["skipped"] == [str(tmp_path / "in" /
                                                                    "rows4of200.png")]
    assert any("rows4of200.png" in line and "truncated" in line and "4 of 200 rows" in line
               for line in lines)
    assert not (tmp_path / "out" / "in__rows4of200_overlay.png").exists()


@pytest.mark.slow
def test_predict_flags_batch_size_and_an_out_that_is_a_file(tiny_run, tmp_path):
    """--batch-size 0 / -2: argparse's one-line error, exit 2 (they put every photo in one
    batch); --out naming a file says --out must be a folder; nothing is written."""
    from mtad.cli import main

    photo(tmp_path / "in" / "a.png")
    for value in ("0", "-2"):
        with pytest.raises(SystemExit) as stop:
            main(["predict", "--checkpoint", str(tiny_run), str(tmp_path / "in"), "--out",
                  str(tmp_path / "out"), "--batch-size", value])
        assert stop.value.code == 2
    (tmp_path / "taken").write_text("notes")
    proc = subprocess.run([sys.executable, "-m", "mtad", "predict", "--checkpoint",
                           str(tiny_run), str(tmp_path / "in"), "--out",
                           str(tmp_path / "taken")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"mtad predict: error: --out {tmp_path / 'taken'} is an existing file; --out must be a "
        "folder (a new one, or one mtad predict wrote)"]
    assert not (tmp_path / "out").exists() and (tmp_path / "taken").read_text() == "notes"
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        predict(open_model(tiny_run, "cpu"), [tmp_path / "in"], tmp_path / "o", batch_size=0)


def test_predict_names_images_in_formats_it_does_not_read(tiny_run, tmp_path):
    """A .gif / .heic / .avif in a predict folder is counted as skipped and named; notes
    and spreadsheets stay ignored silently."""
    photo(tmp_path / "in" / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "in" / "anim.gif")
    (tmp_path / "in" / "phone.HEIC").write_bytes(b"\0\0\0\x18ftypheic")
    (tmp_path / "in" / "notes.txt").write_text("shift 2")
    (tmp_path / "in" / "table.csv").write_text("a,b")
    lines = []
    summary = predict(open_model(tiny_run, "cpu"), [tmp_path / "in"], tmp_path / "out",
                      log=lines.append)
    assert summary["processed"] == 1
    assert summary["skipped"] == [str(tmp_path / "in" / "anim.gif"),
                                  str(tmp_path / "in" / "phone.HEIC")]
    said = "\n".join(lines)
    assert ".gif images are not read by mtad (it reads .bmp, .jpeg, .jpg, .png" in said
    assert "phone.HEIC: .HEIC images are not read" in said
    assert "notes.txt" not in said and "table.csv" not in said
    assert "1 images scored (" in lines[-1] and "; 2 skipped;" in lines[-1]


def test_synth_says_what_it_wrote_for_a_person(tmp_path, capsys):
    from mtad.cli import main

    out = tmp_path / "demo"
    assert main(["synth", "--out", str(out), "--image-size", "32", "--n-train", "2",
                 "--n-test-good", "1", "--n-test-defect", "4"]) == 0
    said = capsys.readouterr().out
    assert "{" not in said                          # not a raw dict
    assert said.splitlines()[0] == (
        f"demo dataset written to {out} (MVTec AD layout, 32 px, seed 0): 4 classes (brick, "
        "grass, gravel, tissue); 8 normal training images, 4 normal and 16 defective test "
        "images with masks (foreign_texture, cutpaste, scratch, stain)")
    assert f"mtad train -c demo data.root={out}" in said


def test_train_help_points_to_the_config_keys(capsys):
    from mtad.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "'Config keys' table, or `python -m mtad.config`" in " ".join(capsys.readouterr().out.split())


def test_mtad_test_warns_naming_a_class_the_model_never_saw(tiny_run, tmp_path):
    from conftest import write_tiny_mvtec
    from mtad.data.errors import DataWarning
    from mtad.engine.test import run_test

    root = write_tiny_mvtec(tmp_path / "data")
    shutil.copytree(root / "alpha", root / "gamma")
    with pytest.warns(DataWarning, match=r"the model was not trained on class gamma of .*data "
                                         r"\(it was trained on alpha, beta\)"):
        results = run_test(tiny_run, None, [f"data.root={root}", "data.num_workers=0",
                                                "eval.report_images=0", "data.test_batch_size=4"],
                           out_dir=tmp_path / "out", device="cpu", log=quiet)
    assert set(results["classes"]) == {"alpha", "beta", "gamma"}
