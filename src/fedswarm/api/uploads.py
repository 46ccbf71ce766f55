"""Multipart uploads read as they arrive, straight into their files, each part under its own cap.

Starlette's ``request.form()`` parses the whole body (spooling files to temporary files) before a
route sees any of it, so a size rule in the route comes too late and a 2 GiB "model" would be
read into memory by ``await model.read()``. :func:`read_form` instead feeds the body to
python-multipart's push parser piece by piece: a file part is written to its destination while
it streams and refused (413) the moment it passes its cap; a text field is kept in memory up to
its (small) cap; unknown, repeated or surplus parts and bad file names are a 400. Nothing it
wrote survives a refusal.
"""

from __future__ import annotations

import shutil
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

MAX_NAME = 128
MAX_PARTS = 16
MAX_PART_HEADERS = 8


class UploadError(ValueError):
    """A multipart body the node refuses; ``status`` is 400 or 413, the message is one line."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class UploadLimits:
    """Which parts a route accepts: file fields and text fields with their byte caps."""

    files: dict[str, int]
    fields: dict[str, int]
    max_parts: int = MAX_PARTS

    @property
    def max_body(self) -> int:
        """The most a conforming body can weigh (parts, plus room for their headers)."""
        return sum(self.files.values()) + sum(self.fields.values()) + 8192 * self.max_parts


@dataclass(frozen=True)
class SavedFile:
    """A file part written to disk: where, the name the client gave (checked), its size."""

    path: Path
    filename: str
    size: int


@dataclass
class UploadForm:
    """The parts of one multipart body."""

    files: dict[str, SavedFile] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)

    def remove(self) -> None:
        """Delete every file this form wrote."""
        for f in self.files.values():
            f.path.unlink(missing_ok=True)


def safe_filename(name: str | None) -> str:
    """The client's file name if it is a plain name, else :class:`UploadError` (400).

    Refused: empty, ``.``/``..``, path separators, NUL and other control characters, and names
    over :data:`MAX_NAME` characters. Never silently rewritten: the user sees what was wrong.
    """
    if not name:
        raise UploadError("an uploaded file has no file name")
    if name in (".", "..") or "/" in name or "\\" in name:
        raise UploadError(f"file name {name[:40]!r} is not a plain file name")
    if any(unicodedata.category(c) in ("Cc", "Cf") for c in name):
        raise UploadError("file name contains control characters")
    if len(name) > MAX_NAME:
        raise UploadError(f"file name is {len(name)} characters long; the limit is {MAX_NAME}")
    return name


class _Reader:
    """Parser callbacks: builds the form, writes file parts, enforces every cap."""

    def __init__(self, dest: Path, limits: UploadLimits) -> None:
        self.dest, self.limits = dest, limits
        self.form = UploadForm()
        self.parts = 0
        self._headers: dict[str, bytes] = {}
        self._hname = b""
        self._hvalue = b""
        self._name: str | None = None
        self._cap = 0
        self._size = 0
        self._file: BinaryIO | None = None
        self._filename = ""
        self._text = bytearray()
        self.error: UploadError | None = None

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > self.limits.max_parts:
            raise UploadError(f"more than {self.limits.max_parts} form parts")
        self._headers = {}
        self._name = None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._hname += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._hvalue += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._hname.decode("latin-1").lower()] = self._hvalue
        self._hname, self._hvalue = b"", b""

    def on_headers_finished(self) -> None:
        disposition, params = parse_options_header(self._headers.get("content-disposition", b""))
        if disposition != b"form-data" or b"name" not in params:
            raise UploadError("a form part has no Content-Disposition: form-data; name=...")
        name = params[b"name"].decode("utf-8", "replace")
        if name in self.form.files or name in self.form.fields:
            raise UploadError(f"form field {name[:40]!r} appears twice")
        self._name, self._size = name, 0
        if b"filename" in params:
            if name not in self.limits.files:
                raise UploadError(f"unexpected file field {name[:40]!r}; expected {', '.join(self.limits.files)}")
            self._filename = safe_filename(params[b"filename"].decode("utf-8", "replace"))
            self._cap = self.limits.files[name]
            # one folder per field keeps the user's own name (errors quote it) without clashes
            folder = self.dest / _field_dir(name)
            folder.mkdir(exist_ok=True)
            path = folder / self._filename
            self._file = path.open("xb")
            self.form.files[name] = SavedFile(path, self._filename, 0)
        else:
            if name not in self.limits.fields:
                raise UploadError(f"unexpected form field {name[:40]!r}")
            self._cap = self.limits.fields[name]
            self._text = bytearray()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._size += end - start
        if self._size > self._cap:
            raise UploadError(f"form part {self._name!r} is over its cap of {self._cap} bytes", 413)
        if self._file is not None:
            self._file.write(data[start:end])
        else:
            self._text += data[start:end]

    def on_part_end(self) -> None:
        assert self._name is not None
        if self._file is not None:
            self._file.close()
            self._file = None
            old = self.form.files[self._name]
            self.form.files[self._name] = SavedFile(old.path, old.filename, self._size)
        else:
            try:
                self.form.fields[self._name] = self._text.decode("utf-8")
            except UnicodeDecodeError:
                raise UploadError(f"form field {self._name!r} is not UTF-8 text") from None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _boundary(request: Request) -> bytes:
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise UploadError("send the files as multipart/form-data")
    boundary = params[b"boundary"]
    if len(boundary) > 200:
        raise UploadError("multipart boundary is too long")
    return boundary


async def read_form(request: Request, dest: Path, limits: UploadLimits) -> UploadForm:
    """Stream ``request``'s multipart body into ``dest`` (created) under ``limits``.

    Raises :class:`UploadError`; on any error the files written so far are removed.
    """
    boundary = _boundary(request)
    dest.mkdir(parents=True, exist_ok=True)
    reader = _Reader(dest, limits)
    callbacks = {n: getattr(reader, n) for n in (
        "on_part_begin", "on_part_data", "on_part_end", "on_header_field", "on_header_value",
        "on_header_end", "on_headers_finished")}
    parser = MultipartParser(boundary, callbacks, max_size=limits.max_body,  # type: ignore[arg-type]
                             max_header_count=MAX_PART_HEADERS)
    try:
        total = 0
        async for piece in request.stream():
            total += len(piece)
            if total > limits.max_body:
                raise UploadError(f"request body is over the cap of {limits.max_body} bytes", 413)
            parser.write(piece)
        parser.finalize()
        if reader._file is not None or reader.parts == 0:
            raise UploadError("the multipart body ends in the middle of a part")
    except UploadError:
        reader.close()
        reader.form.remove()
        raise
    except Exception as exc:  # python-multipart's parse errors: a malformed body, not a crash
        reader.close()
        reader.form.remove()
        raise UploadError(f"malformed multipart body ({str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__})") from None
    return reader.form


def _field_dir(name: str) -> str:
    # field names are from the route's own list (checked before this), so always plain
    return "f-" + "".join(c if c.isalnum() else "_" for c in name)


def remove_tree(path: Path) -> None:
    """Remove an upload folder and everything in it (rmtree does not follow symlinks)."""
    shutil.rmtree(path, ignore_errors=True)
