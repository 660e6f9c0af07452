"""The layout registry: detection, names and options checked with one-line errors."""
from __future__ import annotations

import pytest

from layout_builders import BUILDERS, build_mvtec, write_img
from mtad.data import (
    LAYOUT_NAMES,
    DataError,
    check_data_options,
    check_on_error,
    detect_layout,
    normalise_layout,
    open_dataset,
)


@pytest.mark.parametrize("layout", sorted(BUILDERS))
def test_detect_layout(tmp_path, layout):
    BUILDERS[layout](tmp_path)
    assert detect_layout(tmp_path) == layout
    assert open_dataset(tmp_path, split="test").layout == layout


def test_detect_layout_ambiguous_and_unknown(tmp_path):
    both = build_mvtec(tmp_path / "both")
    (both / "meta.json").write_text('{"train": {}, "test": {}}')
    with pytest.raises(DataError, match=r"ambiguous.*ader.*mvtec|ambiguous.*mvtec.*ader"):
        detect_layout(both)
    assert open_dataset(both, "mvtec").layout == "mvtec"
    odd = tmp_path / "odd"
    write_img(odd / "pictures" / "a.png")
    with pytest.raises(DataError) as err:
        open_dataset(odd)
    assert "unknown dataset layout" in str(err.value) and "pictures" in str(err.value)
    assert "mvtec:" in str(err.value) and "train/good" in str(err.value)
    with pytest.raises(DataError, match="not found"):
        detect_layout(tmp_path / "missing")


def test_argument_errors(tmp_path):
    build_mvtec(tmp_path)
    with pytest.raises(DataError) as err:
        open_dataset(tmp_path, classes=["bottle", "nope"])
    assert "nope" in str(err.value) and "bottle, cable" in str(err.value)
    with pytest.raises(ValueError, match="views"):
        open_dataset(tmp_path, "mvtec", views=("C1",))
    with pytest.raises(ValueError, match="unknown layout"):
        open_dataset(tmp_path, "mvtek")
    with pytest.raises(ValueError, match="split"):
        open_dataset(tmp_path, split="val")
    with pytest.raises(ValueError, match="on_error"):
        open_dataset(tmp_path, on_error="ignore")


# ----------------------------------------------------------------------------- values checked where declared

KNOWN = "mvtec, mpdd, btad, mvtec_loco, mvtec3d, visa, realiad, ader, folder"


def one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as err:
        fn(*args, **kwargs)
    text = str(err.value)
    assert "\n" not in text and isinstance(err.value, ValueError)
    return text


def test_layout_names_match_case_insensitively(tmp_path):
    build_mvtec(tmp_path)
    assert open_dataset(tmp_path, "MVTec").layout == "mvtec"
    assert [normalise_layout(n) for n in ("MVTec", " mpdd", "MVTec-LOCO", "mvtec 3d", "Real-IAD", None)] == [
        "mvtec", "mpdd", "mvtec_loco", "mvtec3d", "realiad", None]
    assert LAYOUT_NAMES == tuple(KNOWN.split(", "))


def test_unknown_layout_lists_the_known_ones_and_a_close_match(tmp_path):
    build_mvtec(tmp_path)
    assert one_line_error(open_dataset, tmp_path, "mvtech") == (
        f"layout: unknown layout 'mvtech'; known: {KNOWN} (did you mean mvtec?)")
    assert one_line_error(normalise_layout, "zzz", key="data.layout") == (
        f"data.layout: unknown layout 'zzz'; known: {KNOWN}")


def test_on_error_split_and_sizes_are_checked(tmp_path):
    build_mvtec(tmp_path)
    assert open_dataset(tmp_path, on_error="Skip").on_error == "skip"
    assert check_on_error("RAISE") == "raise"
    assert one_line_error(open_dataset, tmp_path, on_error="ignore") == (
        "on_error: unknown value 'ignore'; allowed: raise, skip")
    assert one_line_error(check_on_error, "skp", key="data.on_error") == (
        "data.on_error: unknown value 'skp'; allowed: raise, skip (did you mean skip?)")
    assert one_line_error(open_dataset, tmp_path, split="val") == "split: unknown value 'val'; allowed: train, test"
    for bad in (0, -3, 2.5, True, "256", None):
        assert one_line_error(open_dataset, tmp_path, image_size=bad) == (
            f"image_size: {bad!r} is not a positive integer; allowed: an integer >= 1")
    assert len(open_dataset(tmp_path, image_size=16.0)[0]["image"][0]) == 16
    assert one_line_error(open_dataset, tmp_path, mask_threshold=1.5).startswith("mask_threshold: 1.5 is out of range")


def test_layout_options_are_checked_by_name_and_value(tmp_path):
    build_mvtec(tmp_path)
    # The case: a Real-IAD option on an MVTec tree (layout detected).
    assert one_line_error(open_dataset, tmp_path, views=["C1"]) == (
        "options: layout 'mvtec' takes no option 'views'; its options: none")
    assert one_line_error(check_data_options, "visa", {"split_fle": "x.csv"}, key="data.options") == (
        "data.options: layout 'visa' takes no option 'split_fle'; its options: split_file (did you mean split_file?)")
    # With the layout still to be detected, any layout's option passes, checked by value.
    assert check_data_options(None, {"views": ["c1", "C3"]}) == {"views": ("C1", "C3")}
    assert check_data_options("Real-IAD", {"views": "C2", "resolution": 1024}) == {"views": ("C2",), "resolution": "1024"}
    assert one_line_error(check_data_options, None, {"viewz": ["C1"]}).startswith(
        "options: no layout takes an option 'viewz'; options of all layouts: class_name, defect_dirs, ")
    assert one_line_error(check_data_options, "realiad", {"views": ["X1"]}, key="data.options") == (
        "data.options.views: 'X1' is not a camera view name; allowed: camera view names C1..C5, e.g. [C1, C3]")
    assert one_line_error(check_data_options, "mvtec_loco", {"include_validation": "yes"}) == (
        "options.include_validation: 'yes' is not true or false; allowed: true or false")
    assert one_line_error(check_data_options, "folder", {"normal_dirs": 3}).startswith(
        "options.normal_dirs: 3 is not a folder path or a list of them; allowed: a folder")
    assert one_line_error(check_data_options, "mvtec", ["views"]) == (
        "options: ['views'] is not a mapping; allowed: {option: value, ...}")
