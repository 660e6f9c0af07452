"""Uploads: a multipart body read into memory within limits, and images decoded safely.

Starlette's own form parser spools file parts above 1 MB to temporary files
(and keeps whole requests of any size), so `mtad serve` parses the body itself
with python-multipart's low-level streaming parser: each chunk is appended to
the part's bytes in memory, a part that passes the per-file limit stops being
kept (it answers 413, the other files go on), and a body that passes the
request limit stops the reading at once (the whole request answers 413).
Nothing is written to disk here; a client that disconnects mid-upload leaves
only garbage-collected bytes.

Decoding checks the pixel count from the image header before decoding, so a
decompression bomb (a small file that decodes to gigapixels) is refused
without allocating it.
"""
from __future__ import annotations

import io
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from python_multipart.multipart import MultipartParser, parse_options_header

MB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """What one server accepts. Memory for requests is bounded by about
    ``2 * (queue + 1) * max_request_bytes`` for bodies (those being received share a
    budget of ``(queue + 1) * max_request_bytes``; then at most ``queue + 1`` requests
    hold a place in the model's queue) plus two photos being decoded (decoding takes a
    server-wide slot of two; each photo is dropped once resized to the model's input),
    e.g. 18 x 100 MB + 2 x ~0.3 GB with the defaults.

    Attributes:
        max_file_bytes: bytes per uploaded file (default 20 MB); larger -> 413.
        max_pixels: decoded pixels per image (width x height, default 40 M); more -> 413.
        max_files: files per request (default 32); more -> 413 for the request.
        max_request_bytes: bytes per request body (default 100 MB); more -> 413.
        queue: requests admitted beyond the one being computed (default 8); when
            that many already wait, 503 with Retry-After. A request is admitted once
            its whole body has arrived: uploads still being sent hold no place.
        max_batch: images the worker runs through the model at once (default 8).
        max_request_pixels: decoded pixels per request, all its files together
            (default 160 M, four photos at the pixel limit, ~6 s of decoding on a 2-core
            CPU); the files past it answer 413 and the others are scored. With
            `DecodeGate` (one full-size decode at a time per client address) this bounds
            the decoding work one client can ask for: a valid 6000 x 6000 PNG of 105 kB
            costs ~1.5 s to decode and resize.
    """

    max_file_bytes: int = 20 * MB
    max_pixels: int = 40_000_000
    max_files: int = 32
    max_request_bytes: int = 100 * MB
    queue: int = 8
    max_batch: int = 8
    max_request_pixels: int = 160_000_000

    def __post_init__(self):
        for name in ("max_file_bytes", "max_pixels", "max_files", "max_request_bytes",
                     "max_batch", "max_request_pixels"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"serve limit {name} must be >= 1, got {getattr(self, name)!r}")
        if int(self.queue) < 0:
            raise ValueError(f"serve limit queue must be >= 0, got {self.queue!r}")

    def as_dict(self) -> dict:
        return {"max_file_bytes": self.max_file_bytes, "max_pixels": self.max_pixels,
                "max_files": self.max_files, "max_request_bytes": self.max_request_bytes,
                "queue": self.queue, "max_batch": self.max_batch,
                "max_request_pixels": self.max_request_pixels}


class UploadError(Exception):
    """A request or a file refused, with the HTTP status that says why
    (400 malformed, 408 stalled, 413 too large, 415 not an image, 422 bad field, 503 busy)
    and the headers its answer carries (e.g. Retry-After)."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def human_bytes(n: int) -> str:
    return f"{n / MB:.3g} MB" if n >= MB else f"{n / 1024:.3g} kB" if n >= 1024 else f"{n} B"


@dataclass
class Upload:
    """One file part: its name as sent (path stripped), its bytes, or why it was refused."""

    filename: str
    data: bytearray = field(default_factory=bytearray)
    error: UploadError | None = None


@dataclass
class Form:
    """A parsed multipart form: the ``files`` parts in order, and the text fields."""

    files: list[Upload] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)


def _basename(raw: bytes) -> str:
    name = raw.decode("utf-8", errors="replace").replace("\\", "/").rsplit("/", 1)[-1]
    return name or "(unnamed)"


class FormReader:
    """Feed body chunks with `feed`; `close` returns the `Form`.

    Raises (from `feed`/`close`):
        UploadError: 413 when the body passes ``max_request_bytes`` or holds more
            than ``max_files`` files; 400 for a malformed body or a text field
            over 64 kB. A file over ``max_file_bytes`` is not an exception: its
            `Upload.error` says 413 and the other files are kept.
    """

    MAX_FIELD_BYTES = 64 * 1024

    def __init__(self, content_type: str | None, limits: Limits):
        kind, options = parse_options_header(content_type or "")
        if kind != b"multipart/form-data" or not options.get(b"boundary"):
            raise UploadError(415, "send the images as multipart/form-data with one 'files' "
                                   f"field per image (got Content-Type {content_type or 'none'!r})")
        self.limits = limits
        self.form = Form()
        self.received = 0
        self._headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""
        self._part: Upload | None = None
        self._text: tuple[str, bytearray] | None = None
        self._skip = False
        self._parser = MultipartParser(options[b"boundary"], {
            "on_part_begin": self._part_begin, "on_part_data": self._part_data,
            "on_part_end": self._part_end, "on_header_field": self._header_field,
            "on_header_value": self._header_value, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished})

    # -- parser callbacks -------------------------------------------------------------
    def _part_begin(self):
        self._headers, self._part, self._text, self._skip = {}, None, None, False

    def _header_field(self, data, start, end):
        self._field += data[start:end]

    def _header_value(self, data, start, end):
        self._value += data[start:end]

    def _header_end(self):
        self._headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def _headers_finished(self):
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", errors="replace")
        if b"filename" in options:
            if len(self.form.files) >= self.limits.max_files:
                raise UploadError(413, f"too many files in one request: the limit is "
                                       f"{self.limits.max_files} (send them in several requests)")
            if name != "files":
                raise UploadError(400, f"file field {name!r}: send images in the field 'files'")
            self._part = Upload(_basename(options[b"filename"]))
            self.form.files.append(self._part)
        else:
            self._text = (name, bytearray())

    def _part_data(self, data, start, end):
        if self._part is not None:
            if self._part.error is not None:
                return  # already refused: drop the rest of this file
            if len(self._part.data) + (end - start) > self.limits.max_file_bytes:
                self._part.error = UploadError(
                    413, f"{self._part.filename}: file larger than the "
                         f"{human_bytes(self.limits.max_file_bytes)} limit per file")
                self._part.data = bytearray()
                return
            self._part.data += data[start:end]
        elif self._text is not None:
            if len(self._text[1]) + (end - start) > self.MAX_FIELD_BYTES:
                raise UploadError(400, f"form field {self._text[0]!r} is longer than 64 kB")
            self._text[1].extend(data[start:end])

    def _part_end(self):
        if self._text is not None:
            self.form.fields[self._text[0]] = self._text[1].decode("utf-8", errors="replace")
        self._part, self._text = None, None

    # -- driving ------------------------------------------------------------------------
    def feed(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.limits.max_request_bytes:
            raise UploadError(413, f"request body larger than the "
                                   f"{human_bytes(self.limits.max_request_bytes)} limit per request")
        try:
            self._parser.write(chunk)
        except UploadError:
            raise
        except Exception as exc:  # python-multipart's parse errors
            raise UploadError(400, f"malformed multipart body ({exc})") from None

    def close(self) -> Form:
        try:
            self._parser.finalize()
        except Exception as exc:
            raise UploadError(400, f"malformed multipart body ({exc})") from None
        return self.form


def decode_image(data: bytes, filename: str, max_pixels: int) -> np.ndarray:
    """An uploaded file's bytes -> 8-bit RGB (H x W x 3 uint8), upright, read exactly
    as dataset images are (`mtad.data.imageio.read_rgb`: EXIF orientation applied,
    16-bit, palette, alpha and grey converted).

    Raises:
        UploadError: 413 when width x height passes ``max_pixels`` (checked from
            the header, before decoding), 415 when the bytes are not a decodable
            image; each message names ``filename``.
    """
    from mtad.data.errors import DataError, ImageTooLarge
    from mtad.data.imageio import read_rgb

    if not data:
        raise UploadError(415, f"{filename}: empty file, not an image")
    upload = io.BytesIO(data)
    upload.name = filename  # named in read_rgb's messages
    try:
        return read_rgb(upload, max_pixels=max_pixels)
    except ImageTooLarge as exc:
        raise UploadError(413, str(exc)) from None
    except DataError as exc:
        detail = str(exc).removeprefix(f"{filename}: ").removeprefix("cannot read image ")
        raise UploadError(415, f"{filename}: not a decodable image {detail}") from None


def header_pixels(data: bytes) -> int:
    """Width x height from an image's header (nothing decoded); 0 when PIL cannot
    identify the bytes (decoding then reports them)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return int(img.width) * int(img.height)
    except Exception:           # not an image, or a header PIL refuses: decode_image says why
        return 0


class DecodeGate:
    """Who decodes a full-size photo now: at most ``slots`` photos at once
    server-wide (memory: each is dropped once resized) and at most ``per_client``
    at a time per client address, so that a client sending many large photos
    waits on itself while other clients keep the remaining slots.

    Use ``with gate.slot(client_host): ...`` around a decode; ``client_host`` may be
    None (a client without an address shares one bucket).
    """

    def __init__(self, slots: int = 2, per_client: int = 1):
        self._slots = threading.BoundedSemaphore(slots)
        self._per_client = per_client
        self._clients: dict = {}       # host -> [semaphore, users]
        self._lock = threading.Lock()

    @contextmanager
    def slot(self, client_host: str | None):
        with self._lock:
            entry = self._clients.setdefault(client_host,
                                             [threading.Semaphore(self._per_client), 0])
            entry[1] += 1
        try:
            with entry[0], self._slots:   # the client's own turn first: waiting holds no slot
                yield
        finally:
            with self._lock:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._clients[client_host]

    @contextmanager
    def any_client(self):
        """A server-wide slot only (a photo decoded again for --save or --log, after its
        request's own turn)."""
        with self._slots:
            yield

    def waiting_clients(self) -> int:
        """Client addresses now decoding or waiting to (for tests and /health)."""
        with self._lock:
            return len(self._clients)


def charge_request_pixels(data: bytes, filename: str, spent: int, limits: Limits) -> int:
    """The request's decoded pixels after this file: ``spent`` plus its header's
    width x height. Raises UploadError 413 naming the file and the budget when that
    passes ``limits.max_request_pixels`` (the file is not decoded)."""
    total = spent + header_pixels(data)
    if total > limits.max_request_pixels:
        raise UploadError(413, f"{filename}: the request's images pass the "
                               f"{limits.max_request_pixels:,}-pixel decode budget of one request "
                               f"(max_request_pixels); send the rest in another request")
    return total
