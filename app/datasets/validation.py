"""Validate an uploaded dataset and convert it to the canonical training JSONL, in one streaming pass.

``validate_and_convert(src, out, filename=...)`` reads the upload once, in chunks, and never
holds it whole: memory stays flat whatever the file size (the duplicate detector keeps ~60
bytes per distinct example for the first 262,144, then ~16-32; capped at 32 MiB). Valid
examples are written to `out` as canonical records (see shapes.py); each problem becomes an
`Issue` with the 1-based line of the uploaded file where the record starts.

`Report.is_valid` is True when at least one example is valid and no error-level issue was
found: warnings (template slots, end-of-text markers) never make a dataset invalid, but a
single broken record does, so nothing is silently dropped. Training refuses invalid datasets.
"""

from __future__ import annotations

import csv
import io
import logging
from concurrent.futures.process import BrokenProcessPool
from itertools import islice
from typing import Any, BinaryIO

import orjson

from app.datasets import parallel
from app.datasets.formats import (
    BOM,
    DatasetFileError,
    DecodedLines,
    Sniffed,
    UnknownFormat,
    UnsupportedFile,
    guess_columns,
    parse_format,
    sniff,
    sniff_txt_blocks,
)
from app.datasets.jsonl import JsonlRecords, array_records, run_json
from app.datasets.report import Collector, Issue, Report
from app.datasets.shapes import CONVERTERS, TXT_PROMPT_CHARS, txt_record, warn_text

log = logging.getLogger("llmtuner.datasets")

__all__ = [
    "DatasetFileError", "Issue", "Report", "UnknownFormat", "UnsupportedFile", "preview",
    "validate_and_convert",
]

PARALLEL_MIN_BYTES = 32 << 20  # below this, starting worker processes costs more than it saves


def validate_and_convert(src: BinaryIO, out: BinaryIO | None, *, filename: str | None,
                         format: str | None = None, prompt_column: str | None = None,
                         response_column: str | None = None, max_example_chars: int = 1_000_000,
                         long_example_chars: int = 16_000,
                         max_issues: int = 100, workers: int = 1,
                         parallel_min_bytes: int = PARALLEL_MIN_BYTES) -> Report:
    """Read `src` (binary), write valid examples to `out` as canonical JSONL, return the report.

    With `workers` > 1, a JSONL `src` that is a regular file (it has a descriptor) with
    `parallel_min_bytes` or more is converted by that many worker processes, each reading its
    own byte ranges of the file and writing its output into `out` (which must then be None
    or a regular file), with the same report and output, byte for byte (parallel.py).

    Raises `UnsupportedFile` (415) when the file is not UTF-8 text, `UnknownFormat` (422)
    when `format` names no known format.
    """
    forced_container, forced_shape = parse_format(format)
    start = _tell(src) if workers > 1 else None  # where the file's bytes start
    sn = sniff(src, filename, forced_container)
    col = Collector(out, max_example_chars, max_issues, long_example_chars)
    line_limit = max(1 << 20, 16 * max_example_chars)
    columns = None
    if sn.container in ("csv", "tsv"):
        fmt = "csv"
        columns = _run_csv(sn, col, prompt_column, response_column)
    elif sn.container == "txt":
        fmt = "txt"
        _run_txt(sn, col, line_limit)
    else:
        shape = forced_shape if forced_shape in CONVERTERS else None
        span = parallel.file_span(src, start, parallel_min_bytes) \
            if sn.container == "jsonl" and workers > 1 and start is not None else None
        out_fd = parallel.output_fd(out) if span is not None and out is not None else None
        # Both files, and no other upload using the workers (it then runs in this thread only).
        if start is not None and span is not None and (out is None or out_fd is not None) and \
                parallel.RUNNING.acquire(blocking=False):
            try:
                fd, end = span
                first = start + (len(BOM) if sn.encoding == "utf-8-sig" else 0)
                shape = shape or parallel.detect_shape(fd, first, end, line_limit)
                if shape is not None:  # else every record is reported as unrecognised, below
                    out_start = out.tell() if out is not None else 0
                    try:
                        parallel.run_jsonl(fd, first, end, col, out, out_fd, shape, line_limit, workers)
                        return col.report(shape, sn.container, sn.encoding, sn.line_ending)
                    except (BrokenProcessPool, OSError) as e:  # the workers failed, not the data:
                        log.warning("dataset workers failed (%s: %s); validating %s in one process",
                                    type(e).__name__, e, filename)
                    if out is not None:  # start again here: nothing the workers wrote is kept
                        out.seek(out_start)
                        out.truncate()
                    col = Collector(out, max_example_chars, max_issues, long_example_chars)
                    src.seek(start)
                    sn = sniff(src, filename, forced_container)
            finally:
                parallel.RUNNING.release()
        reader = sn.reader
        records = (JsonlRecords(reader, col, line_limit) if sn.container == "jsonl"
                   else array_records(reader, col, line_limit))
        fmt = run_json(records, col, shape)
    return col.report(fmt, sn.container, sn.encoding, sn.line_ending, columns)


def _tell(src: BinaryIO) -> int | None:
    try:
        return src.tell()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


def preview(canonical: BinaryIO, limit: int) -> list[dict[str, Any]]:
    """The first `limit` records of a canonical training file."""
    return [orjson.loads(line) for line in islice(canonical, max(limit, 0)) if line.strip()]


# ---------------------------------------------------------------- CSV / TSV

def _run_csv(sn: Sniffed, col: Collector, prompt_col: str | None, response_col: str | None) -> Any:
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 26))
    lines = DecodedLines(sn.reader)
    rows = csv.reader(lines, delimiter="\t" if sn.container == "tsv" else ",", strict=False)
    header: list[str] = next((r for r in rows if any(c.strip() for c in r)), [])
    header_line = rows.line_num
    mapping = _map_columns(header, prompt_col, response_col)
    if mapping is None:
        col.total = sum(1 for r in rows if any(c.strip() for c in r))
        if header:
            col.issue(header_line, None, None, "unmapped_columns", (
                f"Cannot tell which columns hold the prompt and the response (columns: "
                f"{', '.join(header)}). Set prompt_column and response_column, or name the columns "
                "prompt/response, question/answer or instruction/response."))
        return None
    pname, rname = mapping
    pi, ri = header.index(pname), header.index(rname)
    need = max(pi, ri)
    emit = col.emit
    while True:
        start = rows.line_num + 1
        try:
            row = next(rows)
        except StopIteration:
            break
        except csv.Error as e:
            col.total += 1
            col.issue(start, col.total, None, "invalid_csv", f"The row cannot be parsed as CSV: {e}.")
            continue
        if not row or not any(row):
            continue
        col.total += 1
        if lines.last_bad_line >= start:
            col.issue(lines.last_bad_line, col.total, None, "invalid_encoding",
                      "The row contains bytes that are not valid UTF-8; save the file as UTF-8.")
            continue
        if len(row) <= need:
            missing = pname if len(row) <= pi else rname
            col.issue(start, col.total, missing, "missing_field", (
                f"The row has {len(row)} columns, so it has no '{missing}' value; check quoting "
                "and delimiters."))
            continue
        p, r = row[pi], row[ri]
        problems: list[Any] | None = None
        if not p.strip() or not r.strip():
            emit(start, col.total, None, 0, 0, [
                (name, "empty_field", f"The '{name}' column is empty in this row; fill it in.", "error")
                for name, v in ((pname, p), (rname, r)) if not v.strip()])
            continue
        if "{" in p or "{" in r or "<" in r:
            problems = []
            warn_text(p, pname, False, problems)
            warn_text(r, rname, True, problems)
        canon = {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": r}]}
        emit(start, col.total, canon, len(p), len(r), problems or None, {pname: p, rname: r})
    return {"prompt": pname, "response": rname}


def _map_columns(header: list[str], prompt_col: str | None, response_col: str | None
                 ) -> tuple[str, str] | None:
    if not header:
        return None
    guess = guess_columns(header)
    lower = {h.strip().lower(): h for h in header}

    def find(name: str | None, fallback: int) -> str | None:
        if name is None:
            return guess[fallback] if guess else None
        return name if name in header else lower.get(name.strip().lower())

    p, r = find(prompt_col, 0), find(response_col, 1)
    return (p, r) if p and r and p != r else None


# ---------------------------------------------------------------- plain text

def _text_lines(reader: io.BufferedReader, limit: int) -> Any:
    """Yield (line, text, overlong, bad) for each physical line; overlong lines are cut."""
    readline = reader.readline
    lineno = 0
    while True:
        raw = readline(limit)
        if not raw:
            return
        lineno += 1
        overlong = len(raw) == limit and not raw.endswith(b"\n")
        if overlong:  # skip the rest of the line; the example is reported as too long
            while (more := readline(limit)) and not more.endswith(b"\n"):
                pass
            yield lineno, raw.decode("utf-8", "ignore"), True, False
            continue
        try:
            yield lineno, raw.decode("utf-8").rstrip("\r\n"), False, False
        except UnicodeDecodeError:
            yield lineno, raw.decode("utf-8", "replace").rstrip("\r\n"), False, True


def _run_txt(sn: Sniffed, col: Collector, limit: int) -> None:
    """Plain text: one example per blank-line-separated block (or per line when there are none)."""
    blocks = sniff_txt_blocks(sn.head_text)
    cap = col.max_chars + TXT_PROMPT_CHARS
    parts: list[str] = []
    start, size, bad, overlong = 0, 0, False, False
    for lineno, text, long_line, bad_line in _text_lines(sn.reader, limit):
        if not long_line and (not text or text.isspace()):
            if start:
                _txt_block(col, start, "\n".join(parts).strip(), bad, overlong)
                start, parts, size, bad, overlong = 0, [], 0, False, False
            continue
        start = start or lineno
        bad, overlong = bad or bad_line, overlong or long_line
        size += len(text)
        if size <= cap:
            parts.append(text)
        else:
            overlong = True
        if not blocks:
            _txt_block(col, start, "\n".join(parts).strip(), bad, overlong)
            start, parts, size, bad, overlong = 0, [], 0, False, False
    if start:
        _txt_block(col, start, "\n".join(parts).strip(), bad, overlong)


def _txt_block(col: Collector, line: int, text: str, bad: bool, overlong: bool) -> None:
    col.total += 1
    if bad:
        col.issue(line, col.total, None, "invalid_encoding",
                  "This text contains bytes that are not valid UTF-8; save the file as UTF-8.")
    elif overlong:
        col.issue(line, col.total, None, "too_long", (
            f"This text is longer than {col.max_chars:,} characters; split it into smaller blocks "
            "separated by blank lines."))
    elif len(text) <= TXT_PROMPT_CHARS:
        col.issue(line, col.total, None, "too_short", (
            f"This text has {len(text)} characters; the first {TXT_PROMPT_CHARS} become the prompt, "
            "so nothing is left to train on. Join it with the next block or remove it."))
    else:
        canon, plen, rlen, key = txt_record(text)
        problems: list[Any] = []
        if "{" in text or "<" in text:
            warn_text(text[:TXT_PROMPT_CHARS], None, False, problems)
            warn_text(text[TXT_PROMPT_CHARS:], None, True, problems)
        col.emit(line, col.total, canon, plen, rlen, problems or None, key=key)
