"""The inspection log: one SQLite row per inspected image (standard library sqlite3).

Columns (`COLUMNS`): ``id``, ``time`` (UTC, ISO 8601 with milliseconds,
``2026-12-02T01:02:03.456Z``: sorts as text), ``source`` (the file or upload
name), ``station``, ``class_name`` (None: the pooled thresholds applied),
``pred_score``, ``verdict`` (OK / REVIEW / NG), ``thresholds_version`` (the
calibration.json version applied; None for a checkpoint's own thresholds),
``model_sha256``, ``latency_ms``, ``image_sha256`` (of the bytes as received),
``image_file`` (the kept PNG, relative to the images folder; None when not
kept), ``review`` ("good" | "defect" | None), ``review_note``, ``review_time``.

Durability: `InspectionLog.record` returns only after its row is committed
(WAL journal, ``synchronous=FULL``: a committed row survives the process being
killed and a power cut), so a caller that answers after it never answers an
inspection without its row. Writers from several processes take SQLite's
write lock in turn (``BEGIN IMMEDIATE`` with a busy timeout); a write that
cannot get the lock within ``timeout`` seconds, or fails (disk full, read-only
file), raises `LogWriteError` naming the reason, and nothing is half-written.

Images: the parts the ``keep`` policy names (``flagged``: REVIEW and NG, the
default; ``all``; ``none``) are kept as PNG in ``<db stem>.images/`` beside the
database (``inspections.db`` -> ``inspections.images/``). ``keep_days`` bounds
them: images older than that are deleted (their rows stay, with
``image_file`` set to None), checked on open and at most hourly after.

Schema versions (``PRAGMA user_version``; ``application_id`` marks an mtad
log): 1 had no review columns; 2 adds ``review``, ``review_note``,
``review_time``. An older log is migrated on open, in one transaction; a newer
one, an SQLite file that is not an mtad log, or a file that is not SQLite at
all is a `LogError` at open.
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import os
import sqlite3
import threading
import time as _time
from pathlib import Path

SCHEMA_VERSION = 2
APPLICATION_ID = 0x6D746164  # "mtad"
COLUMNS = ("id", "time", "source", "station", "class_name", "pred_score", "verdict",
           "thresholds_version", "model_sha256", "latency_ms", "image_sha256", "image_file",
           "review", "review_note", "review_time")
VERDICTS = ("OK", "REVIEW", "NG")
REVIEWS = ("good", "defect")
KEEP = ("flagged", "all", "none")
MAX_LIMIT = 1000
MAX_NOTE = 2000  # characters of a review note

_V1_TABLE = """CREATE TABLE inspections (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    source TEXT,
    station TEXT,
    class_name TEXT,
    pred_score REAL,
    verdict TEXT NOT NULL,
    thresholds_version INTEGER,
    model_sha256 TEXT,
    latency_ms REAL,
    image_sha256 TEXT,
    image_file TEXT)"""
# version -> statements that bring a log of that version to the next one
_MIGRATIONS = {
    0: [_V1_TABLE, "CREATE INDEX inspections_class ON inspections (class_name, id)",
        "CREATE INDEX inspections_time ON inspections (time)"],
    1: ["ALTER TABLE inspections ADD COLUMN review TEXT",
        "ALTER TABLE inspections ADD COLUMN review_note TEXT",
        "ALTER TABLE inspections ADD COLUMN review_time TEXT"],
}


class LogError(ValueError):
    """The log cannot be opened (not a database, not an mtad log, a newer schema) or a
    query's arguments are invalid."""


class LogWriteError(LogError):
    """A row could not be committed (locked past the timeout, disk full, read-only)."""


def now_utc() -> str:
    """The current UTC time as the log writes it: ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    return _format(_dt.datetime.now(_dt.timezone.utc))


def _format(t: _dt.datetime) -> str:
    return t.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_time(text: str, name: str = "time") -> str:
    """An ISO 8601 date or time (``2026-12-02``, ``2026-12-02T01:02:03Z``, with an offset
    or none: none means UTC) in the log's own format, for comparison with ``time``.

    Raises:
        LogError: not an ISO 8601 date or time (naming ``name``).
    """
    try:
        t = _dt.datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
    except ValueError:
        raise LogError(f"{name}: not an ISO 8601 date or time: {text!r} "
                       "(e.g. 2026-12-02 or 2026-12-02T08:00:00Z)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return _format(t)


def images_dir(db_path: str | Path) -> Path:
    """``inspections.db`` -> ``inspections.images/`` beside it."""
    p = Path(db_path)
    return p.with_name(p.stem + ".images")


def overlay_file(image_file: str) -> str:
    """The kept overlay's file name beside a kept image: ``<stem>_overlay.png``."""
    return image_file[:-len(".png")] + "_overlay.png"


def write_csv(rows: list[dict], handle) -> None:
    """Rows (as `InspectionLog.query` gives them) as CSV with the log's columns on an open
    text ``handle`` (a file, or stdout for `mtad log --csv`), every cell through
    `mtad.report.cells.csv_cell` (no spreadsheet formulas) and text through
    ``printable``."""
    from mtad.report.cells import csv_cell, printable

    writer = csv.writer(handle)
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([csv_cell(printable(v)) if isinstance(v, str) else
                         ("" if v is None else v) for v in (row.get(c) for c in COLUMNS)])


def _png_bytes(image) -> bytes:
    """PNG bytes of an H x W x 3 uint8 array (or bytes already PNG-encoded)."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class InspectionLog:
    """An open inspection log (one connection; safe to share between threads).

    Args:
        path: the database file (created with its folder when missing).
        keep: which parts' images are kept: "flagged" (REVIEW and NG), "all", "none".
        keep_days: delete kept images older than this many days (None: keep all).
        timeout: seconds a write waits for another writer's lock before `LogWriteError`.
        readonly: open for queries only (no migration; `mtad log`).

    Raises:
        LogError: the file is not an SQLite database, is SQLite but not an mtad log,
            was written by a newer mtad, or ``keep`` / ``keep_days`` is invalid.
    """

    def __init__(self, path: str | Path, keep: str = "flagged", keep_days: float | None = None,
                 timeout: float = 5.0, readonly: bool = False):
        if keep not in KEEP:
            raise LogError(f"--keep: unknown value {keep!r}; allowed: {', '.join(KEEP)}")
        if keep_days is not None and not keep_days > 0:
            raise LogError(f"--keep-days must be greater than 0, got {keep_days}")
        self.path = Path(path)
        self.images = images_dir(self.path)
        self.keep, self.keep_days, self.timeout = keep, keep_days, timeout
        self._lock = threading.Lock()
        self._pruned_at = 0.0
        self.last_error: str | None = None  # the last failed write, until one succeeds
        if readonly and not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such inspection log")
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            uri = self.path.resolve().as_uri() + "?mode=ro" if readonly else str(self.path)
            self._db = sqlite3.connect(uri, uri=readonly, timeout=timeout,
                                       isolation_level=None, check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            self._open(readonly)
        except sqlite3.DatabaseError as exc:
            self.close()
            raise LogError(f"{self.path}: not an mtad inspection log ({exc})") from None
        except BaseException:
            self.close()
            raise
        if not readonly:
            self.prune()

    # ------------------------------------------------------------------ open and migrate
    def _open(self, readonly: bool) -> None:
        db = self._db
        if not readonly:
            if db.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
                raise sqlite3.DatabaseError("WAL journal mode is not available")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            app = db.execute("PRAGMA application_id").fetchone()[0]
            tables = [r[0] for r in db.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
            if app != APPLICATION_ID and (tables or version):
                raise LogError(f"{self.path}: an SQLite database, but not an mtad inspection log "
                               f"(tables: {', '.join(tables) or 'none'})")
            if version > SCHEMA_VERSION:
                raise LogError(f"{self.path}: written by a newer mtad (log schema version "
                               f"{version}; this mtad reads up to {SCHEMA_VERSION}); upgrade mtad")
            if version < SCHEMA_VERSION:
                if readonly:
                    raise LogError(f"{self.path}: log schema version {version} is older than "
                                   f"{SCHEMA_VERSION}; open it once for writing to migrate it")
                for v in range(version, SCHEMA_VERSION):
                    for statement in _MIGRATIONS[v]:
                        db.execute(statement)
                db.execute(f"PRAGMA application_id={APPLICATION_ID}")
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            if not readonly:
                db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()
            self._db = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ writing
    def keeps(self, verdict: str) -> bool:
        """Whether the image of a part with this verdict is kept."""
        return self.keep == "all" or (self.keep == "flagged" and verdict != "OK")

    def record(self, *, source: str | None, class_name: str | None, pred_score: float,
               verdict: str, station: str | None = None, thresholds_version: int | None = None,
               model_sha256: str | None = None, latency_ms: float | None = None,
               image_sha256: str | None = None, image=None, overlay=None,
               time: str | None = None) -> dict:
        """Insert one inspection and commit it; return the row as stored.

        ``image``: the part's RGB image (H x W x 3 uint8, or PNG bytes), kept as a PNG
        when the keep policy names its verdict; ``overlay`` (the same, drawn with its heat
        map and verdict) beside it as `overlay_file` names it. Both are written (and
        renamed into place) before the row is committed; if the commit fails they are
        removed again.

        Raises:
            LogWriteError: the row could not be committed within ``timeout`` seconds
                (another writer holds the lock) or at all (disk full, read-only file);
                no row and no image remain.
            LogError: ``verdict`` is not OK, REVIEW or NG.
        """
        if verdict not in VERDICTS:
            raise LogError(f"verdict {verdict!r} is not one of {', '.join(VERDICTS)}")
        when = time or now_utc()
        image_file = None
        try:
            if image is not None and self.keeps(verdict):
                image_file = self._write_image(_png_bytes(image), when, image_sha256)
                if overlay is not None:
                    self._write_image(_png_bytes(overlay), when, image_sha256,
                                      overlay_file(image_file))
            values = dict(time=when, source=source, station=station, class_name=class_name,
                          pred_score=float(pred_score), verdict=verdict,
                          thresholds_version=thresholds_version, model_sha256=model_sha256,
                          latency_ms=None if latency_ms is None else float(latency_ms),
                          image_sha256=image_sha256, image_file=image_file)
            names = ", ".join(values)
            marks = ", ".join("?" * len(values))
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    cur = self._db.execute(f"INSERT INTO inspections ({names}) VALUES ({marks})",
                                           tuple(values.values()))
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
            row = {"id": cur.lastrowid, **values, "review": None, "review_note": None,
                   "review_time": None}
        except (sqlite3.Error, OSError) as exc:
            if image_file is not None:
                (self.images / image_file).unlink(missing_ok=True)
                (self.images / overlay_file(image_file)).unlink(missing_ok=True)
            reason = str(exc)
            if isinstance(exc, sqlite3.OperationalError) and "locked" in reason:
                reason = f"database locked by another writer for more than {self.timeout:g} s"
            self.last_error = f"inspection log {self.path}: row not written: {reason}"
            raise LogWriteError(self.last_error) from None
        self.last_error = None
        if self.keep_days is not None and _time.monotonic() - self._pruned_at > 3600:
            self.prune()
        return row

    def _write_image(self, png: bytes, when: str, image_sha256: str | None,
                     name: str | None = None) -> str:
        """Write the PNG atomically into the images folder; return its file name."""
        import hashlib

        self.images.mkdir(exist_ok=True)
        digest = image_sha256 or hashlib.sha256(png).hexdigest()
        name = name or f"{when.replace(':', '').replace('-', '').replace('.', '')}_{digest[:16]}.png"
        tmp = self.images / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            with open(tmp, "wb") as handle:
                handle.write(png)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.images / name)
        finally:
            tmp.unlink(missing_ok=True)
        return name

    def review(self, inspection_id: int, review: str, note: str | None = None) -> dict:
        """Store an operator's mark ("good" or "defect", with an optional note) and its
        time in row ``inspection_id``; return the row.

        Raises:
            LogError: an unknown review value or a note longer than `MAX_NOTE`.
            KeyError: no row with that id.
            LogWriteError: the mark could not be committed.
        """
        if review not in REVIEWS:
            raise LogError(f"review must be one of {', '.join(REVIEWS)}, got {review!r}")
        if note is not None and len(str(note)) > MAX_NOTE:
            raise LogError(f"review note longer than {MAX_NOTE} characters")
        try:
            with self._lock:
                cur = self._db.execute(
                    "UPDATE inspections SET review = ?, review_note = ?, review_time = ? "
                    "WHERE id = ?", (review, None if note is None else str(note), now_utc(),
                                     int(inspection_id)))
        except sqlite3.Error as exc:
            raise LogWriteError(f"inspection log {self.path}: review not written: {exc}") from None
        if cur.rowcount == 0:
            raise KeyError(f"no inspection with id {inspection_id}")
        return self.get(inspection_id)

    def prune(self) -> int:
        """Delete kept images older than ``keep_days`` (rows stay, ``image_file`` None);
        return how many."""
        self._pruned_at = _time.monotonic()
        if self.keep_days is None:
            return 0
        cutoff = _format(_dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(days=self.keep_days))
        with self._lock:
            old = [r[0] for r in self._db.execute(
                "SELECT image_file FROM inspections WHERE image_file IS NOT NULL AND time < ?",
                (cutoff,))]
            for name in old:
                (self.images / name).unlink(missing_ok=True)
                (self.images / overlay_file(name)).unlink(missing_ok=True)
            try:
                self._db.execute("UPDATE inspections SET image_file = NULL "
                                 "WHERE image_file IS NOT NULL AND time < ?", (cutoff,))
            except sqlite3.Error as exc:
                raise LogWriteError(f"inspection log {self.path}: pruning failed: {exc}") from None
        return len(old)

    # ------------------------------------------------------------------ reading
    def get(self, inspection_id: int) -> dict:
        """One row by id. Raises KeyError when there is none."""
        with self._lock:
            r = self._db.execute("SELECT * FROM inspections WHERE id = ?",
                                 (int(inspection_id),)).fetchone()
        if r is None:
            raise KeyError(f"no inspection with id {inspection_id}")
        return dict(r)

    def query(self, class_name: str | None = None, verdict: str | None = None,
              since: str | None = None, until: str | None = None, limit: int = 100,
              offset: int = 0, review: str | None = None) -> dict:
        """``{"total": N, "items": [row, ...]}``: the rows matching every filter given,
        newest first, ``limit`` of them from ``offset``. ``since`` <= time < ``until``
        (ISO 8601, see `parse_time`); ``verdict`` one of OK/REVIEW/NG or a
        comma-separated list; ``review`` "good", "defect", or "none" (not reviewed).

        Raises:
            LogError: a filter value out of its range (naming it).
        """
        where, args = [], []
        if class_name is not None:
            where.append("class_name = ?")
            args.append(class_name)
        if verdict:
            wanted = [v.strip().upper() for v in str(verdict).split(",") if v.strip()]
            bad = [v for v in wanted if v not in VERDICTS]
            if bad:
                raise LogError(f"verdict: unknown value {bad[0]!r}; allowed: {', '.join(VERDICTS)}")
            where.append(f"verdict IN ({', '.join('?' * len(wanted))})")
            args += wanted
        if review is not None:
            if review == "none":
                where.append("review IS NULL")
            elif review in REVIEWS:
                where.append("review = ?")
                args.append(review)
            else:
                raise LogError(f"review: unknown value {review!r}; allowed: good, defect, none")
        if since:
            where.append("time >= ?")
            args.append(parse_time(since, "since"))
        if until:
            where.append("time < ?")
            args.append(parse_time(until, "until"))
        try:
            limit, offset = int(limit), int(offset)
        except (TypeError, ValueError):
            raise LogError("limit and offset must be whole numbers") from None
        if not 0 < limit <= MAX_LIMIT:
            raise LogError(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
        if offset < 0:
            raise LogError(f"offset must be 0 or more, got {offset}")
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM inspections{clause}", args).fetchone()[0]
            rows = self._db.execute(f"SELECT * FROM inspections{clause} ORDER BY time DESC, "
                                    f"id DESC LIMIT ? OFFSET ?", args + [limit, offset]).fetchall()
        return {"total": total, "items": [dict(r) for r in rows]}

    def recent_scores(self, class_name: str | None, n: int) -> tuple[list[float], list[str]]:
        """The scores and verdicts of the last ``n`` inspections of one class (None: the
        rows logged with the pooled thresholds), oldest first."""
        clause = "class_name IS ?"
        with self._lock:
            rows = self._db.execute(f"SELECT pred_score, verdict FROM inspections WHERE {clause} "
                                    "ORDER BY id DESC LIMIT ?", (class_name, int(n))).fetchall()
        rows.reverse()
        return [r[0] for r in rows], [r[1] for r in rows]

    def counts(self) -> dict:
        """``{class_name or "": {verdict: n}}`` over the whole log."""
        out: dict = {}
        with self._lock:
            for cls, verdict, n in self._db.execute(
                    "SELECT class_name, verdict, COUNT(*) FROM inspections "
                    "GROUP BY class_name, verdict"):
                out.setdefault(cls or "", {v: 0 for v in VERDICTS})[verdict] = n
        return out

    def class_names(self) -> list:
        """Every class_name in the log (None for pooled rows), in order of first use."""
        with self._lock:
            return [r[0] for r in self._db.execute(
                "SELECT class_name FROM inspections GROUP BY class_name ORDER BY MIN(id)")]

    def check(self) -> str | None:
        """None when the last write succeeded, the database answers a query and the
        images folder is writable (when images are kept); else the reason, for /health."""
        if self.last_error:
            return self.last_error
        try:
            with self._lock:
                self._db.execute("SELECT 1 FROM inspections LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            return f"inspection log {self.path}: {exc}"
        if self.keep != "none" and self.images.exists() and not os.access(self.images, os.W_OK):
            return f"inspection log images folder {self.images} is not writable"
        return None


def export_rows(log: "InspectionLog", **filters) -> list[dict]:
    """Every row matching ``filters`` (as `InspectionLog.query`, without limit/offset),
    newest first, read a page at a time."""
    rows, offset = [], 0
    while True:
        page = log.query(limit=MAX_LIMIT, offset=offset, **filters)
        rows += page["items"]
        offset += MAX_LIMIT
        if offset >= page["total"] or not page["items"]:
            return rows


def format_table(result: dict) -> str:
    """A query result as plain text for a terminal: one line per row, newest first."""
    shown = ("id", "time", "class_name", "verdict", "pred_score", "review", "source")
    lines = [f"{result['total']} inspection(s) match; newest {len(result['items'])} shown"]
    cells = [[("" if r.get(c) is None else f"{r[c]:.4g}" if isinstance(r.get(c), float)
               else str(r[c])).replace("\n", " ") for c in shown] for r in result["items"]]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(shown)]
    for row in [list(shown)] + cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    return "\n".join(lines)
