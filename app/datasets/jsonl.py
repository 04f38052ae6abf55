"""JSON records (JSONL lines or JSON array elements) read, checked and converted to canonical
training records: the part of dataset validation that the one-process path (validation.py) and
the worker processes of large uploads (parallel.py) share.
"""

from __future__ import annotations

import io
from collections import Counter
from itertools import chain, repeat
from operator import add, itemgetter
from typing import Any

import orjson

from app.datasets.formats import iter_json_array
from app.datasets.report import _DUMP_OPT, Collector, canonical_texts, fingerprint, normalised
from app.datasets.shapes import CONVERTERS, EXPECTED_FIELDS, shape_of

# The canonical bytes of a user/assistant pair, as orjson.dumps writes the dict (tested).
_USER = b'{"messages":[{"role":"user","content":'
_ASSISTANT = b'},{"role":"assistant","content":'
_END = b"}]}\n"
PAIR_KEYS = {"prompt_response": ("prompt", "response"), "prompt_completion": ("prompt", "completion")}
DETECT_RECORDS = 50
DETECT_BYTES = 8 << 20


class JsonlRecords:
    """Iterate (line, record_no, obj) over JSON object lines; report lines that are not objects.

    `convert_rest` is the hot path for everything after format detection.
    """

    def __init__(self, reader: io.BufferedReader, col: Collector, limit: int) -> None:
        self.reader, self.readline, self.col, self.limit = reader, reader.readline, col, limit
        self.lineno = 0

    def _next_line(self) -> bytes | None:
        """The next line that needs a closer look (None at the end); skips over-long lines."""
        line = self.readline(self.limit)
        if not line:
            return None
        self.lineno += 1
        if len(line) == self.limit and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):
                line = self.readline(self.limit)
            self._too_long()
            return b""
        return line

    def _too_long(self) -> None:
        self.col.total += 1
        self.col.issue(self.lineno, self.col.total, None, "too_long",
                       f"The line is longer than {self.limit:,} bytes; shorten or split the record.")

    def _parse_failed(self, line: bytes, err: Exception) -> None:
        if not line.strip():
            return
        self.col.total += 1
        _bad_json_line(self.col, self.lineno, line, str(err))

    def _not_object(self, obj: Any) -> None:
        self.col.issue(self.lineno, self.col.total, None, "not_an_object",
                       f"Each line must be a JSON object, got {type(obj).__name__}.")

    def _object(self, line: bytes) -> dict[str, Any] | None:
        """The line's JSON object, counted as a record; None (reported, unless blank) when it is not one."""
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            self._parse_failed(line, e)
            return None
        self.col.total += 1
        if type(obj) is dict:
            return obj
        self._not_object(obj)
        return None

    def __iter__(self) -> Any:
        while (line := self._next_line()) is not None:
            if line and (obj := self._object(line)) is not None:
                yield self.lineno, self.col.total, obj

    def convert_rest(self, convert: Any, slow: Any, pair: tuple[str, str] | None = None) -> None:
        """Convert every remaining line, 64 KiB of lines at a time (the hot path).

        Prompt/response pairs (`pair` names their fields) are parsed a batch at a time, and
        runs of plain pairs (`_odd_pairs`) converted in bulk by `_add_pairs`, with no Python
        code per record. Other records, and batches that are not all objects with both fields
        as strings, go line by line, with `convert`; records with a problem through `slow`
        (the path the first 50 records took).
        """
        for lines in line_batches(self.reader, self.limit):
            parsed = _parse_pairs(lines, pair, self.limit) if pair is not None else None
            if parsed is None:
                self._convert_lines(lines, convert, slow)
                continue
            objs, ps, rs = parsed
            start = 0
            for i in [*_odd_pairs(objs, ps, rs, self.col.long_chars), len(lines)]:
                if start < i:
                    _add_pairs(self.col, ps[start:i], rs[start:i])
                    self.lineno += i - start
                if i < len(lines):
                    self._convert_lines(lines[i:i + 1], convert, slow)
                start = i + 1

    def _convert_lines(self, lines: list[bytes], convert: Any, slow: Any) -> None:
        """Convert lines one by one; records with a problem go through `slow`."""
        col, limit, long_chars, dumps = self.col, self.limit, self.col.long_chars, orjson.dumps
        hashes: list[int] = []
        for line in lines:
            self.lineno += 1
            if len(line) > limit:
                self._too_long()
                continue
            if (obj := self._object(line)) is None:
                continue
            converted = convert(obj)
            canon, plen, rlen, problems = converted
            if problems is None and plen + rlen <= long_chars:
                try:
                    data = dumps(canon, option=_DUMP_OPT)
                except orjson.JSONEncodeError:
                    pass
                else:
                    hashes.append(fingerprint(canonical_texts(canon)))
                    col.keep(data, plen, rlen)
                    continue
            slow(self.lineno, col.total, obj, converted)
        col.duplicates += col.dedup.count_seen(hashes)


def _parse_pairs(lines: list[bytes], pair: tuple[str, str], limit: int
                 ) -> tuple[list[dict[str, Any]], list[str], list[str]] | None:
    """The objects of a batch of lines and their two texts; None unless every line is an object
    with both fields, as strings (then the batch goes line by line)."""
    if max(map(len, lines)) >= limit:
        return None
    try:
        objs = list(map(orjson.loads, lines))
        ps, rs = list(map(itemgetter(pair[0]), objs)), list(map(itemgetter(pair[1]), objs))
    except (orjson.JSONDecodeError, KeyError, TypeError):  # a blank or bad line, a non-object, a field missing
        return None
    return (objs, ps, rs) if {*map(type, ps), *map(type, rs)} == {str} else None


def _odd_pairs(objs: list[dict[str, Any]], ps: list[str], rs: list[str], long_chars: int) -> list[int]:
    """The indices of the pairs that are not plain, in order (usually none).

    A plain pair has two non-blank texts with nothing to warn about ("{" in either, "<" in
    the response), no "system" field, and fewer than `long_chars` characters in all: what
    `convert_pair` and `Collector.emit` pass without an issue. The batch is checked at C
    speed first; records are looked at one by one only when something was found.
    """
    if (all(ps) and all(rs) and not any(map(str.isspace, ps)) and not any(map(str.isspace, rs))
            and not any(map(str.__contains__, ps, repeat("{")))
            and not any(map(str.__contains__, rs, repeat("{")))
            and not any(map(str.__contains__, rs, repeat("<")))
            and not any(map(dict.__contains__, objs, repeat("system")))
            and max(map(add, map(len, ps), map(len, rs))) <= long_chars):
        return []
    return [i for i, (o, p, r) in enumerate(zip(objs, ps, rs, strict=True))
            if not p or not r or p.isspace() or r.isspace() or "{" in p or "{" in r or "<" in r
            or "system" in o or len(p) + len(r) > long_chars]


def _add_pairs(col: Collector, ps: list[str], rs: list[str]) -> None:
    """Count and write plain pairs, each step a `map` over them: the output is what orjson
    writes for the canonical dict (tested), the fingerprints what `report.fingerprint` gives."""
    dumps = orjson.dumps
    col.output(b"".join(chain.from_iterable(
        zip(repeat(_USER), map(dumps, ps), repeat(_ASSISTANT), map(dumps, rs), repeat(_END)))))
    col.duplicates += col.dedup.count_seen(list(map(hash, zip(normalised(ps), normalised(rs), strict=True))))
    plens, rlens = list(map(len, ps)), list(map(len, rs))
    col.total += len(ps)
    col.valid += len(ps)
    col.prompt_sum += sum(plens)
    col.response_sum += sum(rlens)
    col.prompt_max = max(col.prompt_max, *plens)
    col.response_max = max(col.response_max, *rlens)


def line_batches(reader: io.BufferedReader, limit: int, size: int = 1 << 16) -> Any:
    """Yield lists of the lines of `reader` (as readline returns them), ~`size` bytes of them at a time.

    Memory stays under 2 * `size` + `limit`: a line of `limit` bytes or more (not counting its
    "\\n") comes cut to `limit` + 1 bytes, the rest skipped; shorter lines come whole.
    64 KiB keeps a batch in the CPU caches from one step to the next, and each chunk below glibc's
    mmap threshold (bench/dataset_pipeline.py: larger batches were markedly slower).
    """
    while chunk := reader.read(size):
        lines = io.BytesIO(chunk).readlines()
        if not lines[-1].endswith(b"\n"):  # the chunk ends inside a line: read up to its end, or `limit` bytes
            tail = lines.pop()
            if len(tail) < limit:
                tail += reader.readline(limit - len(tail))
            if len(tail) >= limit and not tail.endswith(b"\n"):  # too long: skip the rest
                while (rest := reader.readline(limit)) and not rest.endswith(b"\n"):
                    pass
                tail = tail[:limit] + b"\x00"
            lines.append(tail)
        yield lines


def _bad_json_line(col: Collector, lineno: int, line: bytes, err: str) -> None:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as e:
        col.issue(lineno, col.total, None, "invalid_encoding",
                  f"The line is not valid UTF-8 (byte offset {e.start} in the line); save the file as UTF-8.")
        return
    col.issue(lineno, col.total, None, "invalid_json", f"The line is not valid JSON: {err}.")


def array_records(reader: io.BufferedReader, col: Collector, limit: int) -> Any:
    for start, _end, value, error in iter_json_array(reader, max_element_chars=limit):
        col.total += error is None or error == "invalid_encoding"
        if error == "invalid_encoding":
            col.issue(start, col.total, None, "invalid_encoding",
                      "The record contains bytes that are not valid UTF-8; save the file as UTF-8.")
        elif error is not None:
            col.issue(start, None, None, "invalid_json", error + " Records after this point were not read.")
        elif type(value) is dict:
            yield start, col.total, value
        else:
            col.issue(start, col.total, None, "not_an_object",
                      f"Each array element must be a JSON object, got {type(value).__name__}.")


def run_json(records: Any, col: Collector, shape: str | None) -> str:
    """Convert JSON records with one shape (forced, or the majority of the first 50)."""
    pending: list[tuple[int, int, dict[str, Any]]] = []
    if shape is None:
        pending = first_records(records)
        shape = majority_shape([r[2] for r in pending])
    if shape is None:
        for line, no, obj in chain(pending, records):
            _unrecognized(col, line, no, obj)
        return "unknown"
    convert = CONVERTERS[shape]

    def emit(line: int, no: int, obj: dict[str, Any], converted: Any) -> None:
        canon, plen, rlen, problems = converted
        if canon is None:
            other = shape_of(obj)
            if other is not None and other != shape:
                problems = [(None, "format_mismatch", (
                    f"This record looks like {other} but the file is {shape} "
                    f"({EXPECTED_FIELDS[shape]}); convert it or upload it separately."), "error")]
            elif other is None and shape_of(obj, loose=True) is None:
                _unrecognized(col, line, no, obj, shape)
                return
        col.emit(line, no, canon, plen, rlen, problems, obj)

    if isinstance(records, JsonlRecords):
        for line, no, obj in pending:
            emit(line, no, obj, convert(obj))
        records.convert_rest(convert, emit, PAIR_KEYS.get(shape))
    else:
        for line, no, obj in chain(pending, records):
            emit(line, no, obj, convert(obj))
    return shape


def first_records(records: Any) -> list[tuple[int, int, dict[str, Any]]]:
    """The records that decide the format: the first `DETECT_RECORDS` objects."""
    pending: list[tuple[int, int, dict[str, Any]]] = []
    size = 0
    for rec in records:
        pending.append(rec)
        size += len(rec[2])
        if len(pending) >= DETECT_RECORDS or size > DETECT_BYTES:
            break
    return pending


def majority_shape(objs: list[dict[str, Any]]) -> str | None:
    """The most common complete shape among `objs`, else the most common by key presence."""
    votes = Counter(shape_of(o) for o in objs)
    votes.pop(None, None)
    if not votes:
        votes = Counter(shape_of(o, loose=True) for o in objs)
        votes.pop(None, None)
    return votes.most_common(1)[0][0] if votes else None


def _unrecognized(col: Collector, line: int, no: int, obj: dict[str, Any], shape: str | None = None) -> None:
    expected = EXPECTED_FIELDS[shape] if shape else "; ".join(EXPECTED_FIELDS.values())
    found = ", ".join(list(obj)[:10]) or "none"
    col.issue(line, no, None, "unrecognized_record",
              f"Unrecognised record (fields: {found}); expected {expected}.")
