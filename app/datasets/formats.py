"""Reading uploaded dataset files: sniffing, containers and record shapes.

Everything here streams: a file is read in chunks or line by line, never whole.

Containers (how records are laid out in the file): ``jsonl``, ``json_array``, ``csv``,
``tsv``, ``txt``. Formats (the shape of one record, what the report calls ``format``):
``prompt_response``, ``prompt_completion``, ``alpaca``, ``openai_chat``, ``sharegpt``,
``text`` for JSON records, ``csv`` for CSV/TSV rows and ``txt`` for plain text.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from collections.abc import Iterator
from typing import Any, BinaryIO

HEAD_BYTES = 64 * 1024
BOM = codecs.BOM_UTF8

JSON_SHAPES = ("prompt_response", "prompt_completion", "alpaca", "openai_chat", "sharegpt", "text")
FORMATS = (*JSON_SHAPES, "csv", "txt")
CONTAINERS = ("jsonl", "json_array", "csv", "tsv", "txt")

# Names a user may give in the `format` form field -> (container or None, format or None).
_FORMAT_ALIASES: dict[str, tuple[str | None, str | None]] = {
    **{s: (None, s) for s in JSON_SHAPES},
    "jsonl": ("jsonl", None), "ndjson": ("jsonl", None), "json": (None, None),
    "json_array": ("json_array", None),
    "csv": ("csv", "csv"), "tsv": ("tsv", "csv"),
    "txt": ("txt", "txt"), "plain": ("txt", "txt"), "plain_text": ("txt", "txt"),
    "plaintext": ("txt", "txt"),
    "chat": (None, "openai_chat"), "messages": (None, "openai_chat"), "openai": (None, "openai_chat"),
    "conversations": (None, "sharegpt"), "share_gpt": (None, "sharegpt"),
    "instruction": (None, "alpaca"),
}

# CSV column pairs tried, in order, when the user names no columns (compared case-insensitively).
COLUMN_PAIRS = (
    ("prompt", "response"), ("prompt", "completion"), ("question", "answer"),
    ("instruction", "response"), ("instruction", "output"), ("input", "output"),
    ("query", "response"), ("user", "assistant"),
)


class DatasetFileError(Exception):
    """A file the platform cannot read at all; `status_code` is the HTTP status to answer."""

    status_code = 422

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class UnsupportedFile(DatasetFileError):
    """Not a text file (binary, not UTF-8): answered 415."""

    status_code = 415


class UnknownFormat(DatasetFileError):
    """The `format` field names no format we know: answered 422."""


def parse_format(name: str | None) -> tuple[str | None, str | None]:
    """The (container, format) a user-given format name forces; (None, None) when none is given."""
    if not name:
        return None, None
    key = name.strip().lower().replace("-", "_")
    if key not in _FORMAT_ALIASES:
        raise UnknownFormat(
            "unknown_format",
            f"Unknown format {name!r}; use one of: {', '.join(FORMATS)} (or jsonl, json, tsv), "
            "or leave it empty to detect it from the content.",
        )
    return _FORMAT_ALIASES[key]


class _ChainedRaw(io.RawIOBase):
    """`head` followed by the rest of `src`, as a raw stream (so it can be buffered)."""

    def __init__(self, head: bytes, src: BinaryIO) -> None:
        self._head = memoryview(head)
        self._src = src

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._src.read(len(b))
        n = len(data)
        b[:n] = data
        return n


class Sniffed:
    """What the first chunk of a file says about it."""

    __slots__ = ("container", "encoding", "line_ending", "head_text", "reader")

    def __init__(self, container: str, encoding: str, line_ending: str, head_text: str,
                 reader: Any) -> None:
        self.container = container
        self.encoding = encoding
        self.line_ending = line_ending
        self.head_text = head_text
        self.reader = reader


def _decode_head(head: bytes) -> str:
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_LE)):
        raise UnsupportedFile(
            "unsupported_file_type", "The file is UTF-16/UTF-32 encoded; save it as UTF-8 and upload again."
        )
    if b"\x00" in head:
        raise UnsupportedFile(
            "unsupported_file_type",
            "The file is not text (it contains NUL bytes). Upload JSONL, JSON, CSV, TSV or plain text "
            "encoded as UTF-8.",
        )
    try:
        return head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start >= len(head) - 3 and "unexpected end" in e.reason:
            return head[: e.start].decode("utf-8")  # a character cut at the chunk boundary
        raise UnsupportedFile(
            "unsupported_file_type",
            f"The file is not UTF-8 text (invalid byte at offset {e.start}). Save it as UTF-8 "
            "and upload again.",
        ) from None


def _looks_like_json(text: str, first: str) -> bool:
    rest = text.lstrip()[1:].lstrip()
    if first == "[":
        return not rest or rest[0] in '{]"'
    return not rest or rest[0] in '"}'


def sniff(src: BinaryIO, filename: str | None, container: str | None = None) -> Sniffed:
    """Read the first chunk of `src`, check it is UTF-8 text and guess the container."""
    head = src.read(HEAD_BYTES)
    encoding = "utf-8"
    if head.startswith(BOM):
        head = head[len(BOM):]
        encoding = "utf-8-sig"
    text = _decode_head(head)
    line_ending = "crlf" if "\r\n" in text else "lf"
    reader = io.BufferedReader(_ChainedRaw(head, src), buffer_size=1 << 20)
    if container is None:
        container = _guess_container(text, (filename or "").lower())
    return Sniffed(container, encoding, line_ending, text, reader)


def _guess_container(text: str, name: str) -> str:
    stripped = text.lstrip()
    first = stripped[:1]
    if first in ("[", "{") and _looks_like_json(stripped, first):
        return "json_array" if first == "[" else "jsonl"
    ext = name.rsplit(".", 1)[-1] if "." in name else ""
    if ext in ("csv", "tsv"):
        return ext
    if ext in ("jsonl", "json", "ndjson"):
        return "jsonl"
    if ext in ("txt", "text", "md"):
        return "txt"
    header = stripped.split("\n", 1)[0].rstrip("\r")
    for delim, kind in (("\t", "tsv"), (",", "csv")):
        if delim in header:
            cols: list[str] = next(iter(_csv_reader([header], delim)), [])
            if guess_columns(cols) is not None:
                return kind
    return "txt"


def sniff_txt_blocks(head_text: str) -> bool:
    """True when the text separates examples with blank lines (decided on the first chunk)."""
    return re.search(r"\n[ \t\r]*\n", head_text.strip()) is not None


# ---------------------------------------------------------------- JSON arrays

def iter_json_array(reader: io.BufferedReader, chunk_size: int = 1 << 20,
                    max_element_chars: int = 1 << 24) -> Iterator[tuple[int, int, Any, str | None]]:
    """Yield (start_line, end_line, value, error) for each top-level element of a JSON array.

    Streams with `raw_decode` over a sliding buffer. `error` is set (and value None) for
    a syntax error, after which the array cannot be followed and iteration stops; the
    special error "invalid_encoding" marks an element with bytes that are not UTF-8.
    """
    decoder = json.JSONDecoder()
    dec = codecs.getincrementaldecoder("utf-8")("replace")
    buf, pos, line, eof = "", 0, 1, False
    bad_lines: list[int] = []

    def more() -> bool:
        nonlocal buf, pos, eof
        if eof:
            return False
        raw = reader.read(chunk_size)
        eof = not raw
        s = dec.decode(raw, final=eof)
        if "\ufffd" in s and s.count("\ufffd") != raw.count(b"\xef\xbf\xbd"):
            bad_lines.append(line + buf.count("\n", pos) + s[: s.index("\ufffd")].count("\n"))
        buf = buf[pos:] + s
        pos = 0
        return bool(s) or not eof

    def skip_ws() -> str:
        nonlocal pos, line
        while True:
            n = len(buf)
            while pos < n and buf[pos] in " \t\r\n":
                if buf[pos] == "\n":
                    line += 1
                pos += 1
            if pos < n:
                return buf[pos]
            if not more():
                return ""

    if skip_ws() != "[":
        yield line, line, None, "The file does not start with '[' (expected a JSON array)."
        return
    pos += 1
    while True:
        c = skip_ws()
        if c == "]":  # also tolerates a trailing comma
            return
        if not c:
            yield line, line, None, "The JSON array is not closed: the file ends before its final ']'."
            return
        while True:
            try:
                value, end = decoder.raw_decode(buf, pos)
                break
            except json.JSONDecodeError as e:
                err_line = line + buf.count("\n", pos, e.pos)
                err = f"Invalid JSON: {e.msg} (column {e.colno})."
                if len(buf) - pos < max_element_chars and more():  # maybe only cut by the chunk end
                    continue
                yield err_line, err_line, None, err
                return
        start = line
        line += buf.count("\n", pos, end)
        pos = end
        if bad_lines and bad_lines[0] <= line:
            bad = bad_lines.pop(0)
            yield bad, line, None, "invalid_encoding"
        else:
            yield start, line, value, None
        c = skip_ws()
        if c == ",":
            pos += 1
        elif c != "]":
            msg = "expected ',' or ']' after an element" if c else "the file ends before the closing ']'"
            yield line, line, None, f"Invalid JSON: {msg}."
            return


# ---------------------------------------------------------------- CSV / TSV

def _csv_reader(lines: Any, delimiter: str) -> Any:
    return csv.reader(lines, delimiter=delimiter, strict=False)


def guess_columns(columns: list[str]) -> tuple[str, str] | None:
    """The (prompt, response) column pair to use, from well-known names (case-insensitive)."""
    lower = {c.strip().lower(): c for c in columns}
    for p, r in COLUMN_PAIRS:
        if p in lower and r in lower:
            return lower[p], lower[r]
    return None


class DecodedLines:
    """Iterate a binary reader as str lines (CSV rows may span lines), noting undecodable lines."""

    def __init__(self, reader: io.BufferedReader) -> None:
        self._reader = reader
        self.line = 0
        self.last_bad_line = 0

    def __iter__(self) -> Iterator[str]:
        for raw in self._reader:
            self.line += 1
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                self.last_bad_line = self.line
                yield raw.decode("utf-8", "replace")

