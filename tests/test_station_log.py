"""The inspection log (mtad/station/log.py): columns, commit-before-answer, schema versions,
kept images, two writing processes, queries and the CSV export."""
import csv
import io
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from mtad.station.log import (COLUMNS, SCHEMA_VERSION, InspectionLog, LogError, LogWriteError,
                              images_dir, overlay_file, parse_time, write_csv)


def _rgb(seed=0):
    return np.random.default_rng(seed).integers(0, 255, (16, 20, 3), dtype=np.uint8)


def _record(log, verdict="OK", cls="alpha", score=0.1, **kw):
    return log.record(source=kw.pop("source", "part.png"), class_name=cls, pred_score=score,
                      verdict=verdict, **kw)


def test_a_row_has_the_issue_columns_and_is_committed_when_record_returns(tmp_path):
    db = tmp_path / "inspections.db"
    with InspectionLog(db, timeout=1) as log:
        row = _record(log, "REVIEW", station="line3", thresholds_version=2, model_sha256="ab",
                      latency_ms=12.5, image_sha256="cd" * 32, image=_rgb())
        # another connection sees it at once: the row was committed, not merely inserted
        other = sqlite3.connect(db)
        got = other.execute("SELECT * FROM inspections").fetchall()
        names = [d[0] for d in other.execute("SELECT * FROM inspections").description]
        other.close()
    assert tuple(names) == COLUMNS
    assert len(got) == 1 and dict(zip(names, got[0]))["station"] == "line3"
    assert row["time"].endswith("Z") and parse_time(row["time"]) == row["time"]
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_flagged_images_are_kept_as_png_beside_the_database_and_ok_ones_not(tmp_path):
    db = tmp_path / "inspections.db"
    img = _rgb(1)
    with InspectionLog(db) as log:
        ok = _record(log, "OK", image=img)
        ng = _record(log, "NG", image=img)
    assert images_dir(db) == tmp_path / "inspections.images"
    assert ok["image_file"] is None
    kept = np.asarray(Image.open(tmp_path / "inspections.images" / ng["image_file"]))
    assert np.array_equal(kept, img)  # PNG is lossless
    with InspectionLog(db, keep="all") as log:
        assert _record(log, "OK", image=img)["image_file"] is not None
    with InspectionLog(db, keep="none") as log:
        assert _record(log, "NG", image=img)["image_file"] is None
    with pytest.raises(LogError, match="--keep"):
        InspectionLog(db, keep="some")


def test_keep_days_deletes_old_images_and_keeps_their_rows(tmp_path):
    db = tmp_path / "i.db"
    with InspectionLog(db) as log:
        old = _record(log, "NG", image=_rgb(), overlay=_rgb(3), time="2020-01-01T00:00:00.000Z")
        assert (images_dir(db) / overlay_file(old["image_file"])).is_file()
        new = _record(log, "NG", image=_rgb(2))
    with InspectionLog(db, keep_days=30) as log:    # pruned on open
        assert log.get(old["id"])["image_file"] is None
        assert log.get(new["id"])["image_file"] == new["image_file"]
    assert not (images_dir(db) / old["image_file"]).exists()
    assert not (images_dir(db) / overlay_file(old["image_file"])).exists()
    assert (images_dir(db) / new["image_file"]).exists()


def test_a_write_locked_past_the_timeout_raises_and_leaves_no_row_or_image(tmp_path):
    db = tmp_path / "i.db"
    log = InspectionLog(db, timeout=0.2)
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")              # another writer holds the lock
    with pytest.raises(LogWriteError, match="locked by another writer for more than 0.2 s"):
        _record(log, "NG", image=_rgb(), overlay=_rgb(1))
    assert "locked" in log.check()                  # /health says so until a write succeeds
    blocker.execute("ROLLBACK")
    blocker.close()
    assert log.query()["total"] == 0
    assert list(images_dir(db).glob("*")) == []
    _record(log)
    assert log.check() is None and log.query()["total"] == 1


def test_an_older_schema_is_migrated_on_open_and_keeps_its_rows(tmp_path):
    db = tmp_path / "v1.db"
    con = sqlite3.connect(db)
    from mtad.station import log as logmod
    for statement in logmod._MIGRATIONS[0]:
        con.execute(statement)
    con.execute("INSERT INTO inspections (time, source, class_name, pred_score, verdict) "
                "VALUES ('2026-01-01T00:00:00.000Z', 'old.png', 'alpha', 0.5, 'NG')")
    con.execute(f"PRAGMA application_id={logmod.APPLICATION_ID}")
    con.execute("PRAGMA user_version=1")
    con.commit()
    con.close()
    with pytest.raises(LogError, match="older"):    # a reader does not migrate
        InspectionLog(db, readonly=True)
    with InspectionLog(db) as log:
        row = log.query()["items"][0]
        assert row["source"] == "old.png" and row["review"] is None
        log.review(row["id"], "good", "fine")
    assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_newer_schema_another_database_or_a_non_database_is_a_one_line_error(tmp_path):
    newer = tmp_path / "newer.db"
    InspectionLog(newer).close()
    con = sqlite3.connect(newer)
    con.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    con.commit()
    con.close()
    with pytest.raises(LogError, match="newer mtad") as info:
        InspectionLog(newer)
    assert "\n" not in str(info.value)
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE users (name TEXT)")
    con.commit()
    con.close()
    with pytest.raises(LogError, match="not an mtad inspection log"):
        InspectionLog(other)
    text = tmp_path / "notes.db"
    text.write_text("this is not a database, " * 100)
    with pytest.raises(LogError, match="not an mtad inspection log") as info:
        InspectionLog(text)
    assert "\n" not in str(info.value)
    assert text.read_text().startswith("this is not")   # nothing overwritten


def test_review_stores_the_mark_its_note_and_time_and_refuses_bad_values(tmp_path):
    with InspectionLog(tmp_path / "i.db") as log:
        row = _record(log, "REVIEW")
        marked = log.review(row["id"], "defect", "scratch at the edge")
        assert marked["review"] == "defect" and marked["review_note"] == "scratch at the edge"
        assert marked["review_time"] >= row["time"]
        with pytest.raises(LogError, match="good, defect"):
            log.review(row["id"], "maybe")
        with pytest.raises(KeyError):
            log.review(row["id"] + 100, "good")


def test_query_filters_count_everything_and_page_newest_first(tmp_path):
    with InspectionLog(tmp_path / "i.db") as log:
        for i in range(10):
            _record(log, ("OK", "REVIEW", "NG")[i % 3], cls=("alpha", "beta")[i % 2],
                    score=i, time=f"2026-12-0{1 + i // 5}T00:00:0{i % 5}.000Z", source=f"{i}.png")
        everything = log.query()
        assert everything["total"] == 10
        assert [r["source"] for r in everything["items"]] == [f"{i}.png" for i in range(9, -1, -1)]
        page = log.query(limit=3, offset=3)
        assert page["total"] == 10 and [r["source"] for r in page["items"]] == ["6.png", "5.png",
                                                                                 "4.png"]
        alpha_ng = log.query(class_name="alpha", verdict="NG")
        assert [r["source"] for r in alpha_ng["items"]] == ["8.png", "2.png"]
        assert log.query(verdict="review,ng")["total"] == 6
        assert log.query(since="2026-12-02")["total"] == 5
        assert log.query(until="2026-12-01T00:00:02Z")["total"] == 2
        assert log.query(since="2026-12-02T01:00:00+01:00")["total"] == 5  # offsets honoured
        for bad, match in ((dict(verdict="MAYBE"), "verdict"), (dict(since="yesterday"), "since"),
                           (dict(limit=0), "limit"), (dict(offset=-1), "offset")):
            with pytest.raises(LogError, match=match):
                log.query(**bad)
        assert log.counts()["alpha"] == {"OK": 2, "REVIEW": 1, "NG": 2}
        scores, verdicts = log.recent_scores("beta", 3)
        assert scores == [5, 7, 9] and verdicts == ["NG", "REVIEW", "OK"]


def test_csv_cells_from_user_input_never_start_a_formula(tmp_path):
    with InspectionLog(tmp_path / "i.db") as log:
        _record(log, "NG", source="=cmd|'/c calc'!A1", station="@line", score=-0.5,
                cls="-1")
        buf = io.StringIO()
        write_csv(log.query()["items"], buf)
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert rows[0]["source"].startswith("'=") and rows[0]["station"] == "'@line"
    assert rows[0]["class_name"] == "-1"   # a plain number is not a formula (cells.csv_cell)
    assert rows[0]["pred_score"] == "-0.5"   # a number stays a number


@pytest.mark.slow
def test_two_processes_writing_one_log_lose_no_row(tmp_path):
    db = tmp_path / "shared.db"
    InspectionLog(db).close()
    script = textwrap.dedent(f"""
        import sys
        from mtad.station.log import InspectionLog
        log = InspectionLog({str(db)!r}, timeout=20)
        for i in range(150):
            log.record(source=f"{{sys.argv[1]}}-{{i}}", class_name="alpha", pred_score=i,
                       verdict="OK")
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, name]) for name in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    with InspectionLog(db) as log:
        sources = {r["source"] for r in log.query(limit=1000)["items"]}
    assert sources == {f"{n}-{i}" for n in "ab" for i in range(150)}
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_mtad_log_prints_exports_csv_and_names_a_bad_file(tmp_path, capsys):
    from mtad.cli import main

    db = tmp_path / "i.db"
    with InspectionLog(db) as log:
        _record(log, "NG", source="=evil.png")
        _record(log, "OK", cls="beta", source="b.png")
    assert main(["log", str(db), "--verdict", "NG"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("1 inspection(s) match") and "=evil.png" in out and "b.png" not in out
    assert main(["log", str(db), "--csv", str(tmp_path / "all.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "all.csv")))
    assert [r["source"] for r in rows] == ["b.png", "'=evil.png"]
    (tmp_path / "x.db").write_bytes(b"\x00garbage" * 64)
    assert main(["log", str(tmp_path / "x.db")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mtad log: error: ") and "x.db" in err and err.count("\n") == 1
