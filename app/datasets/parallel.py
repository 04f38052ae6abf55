"""Validate a large JSONL upload on all cores.

One Python process cannot parse, check, convert, fingerprint and write records as fast as
a bare `json.loads` loop only parses them, so large JSONL files are cut into ~1 MiB blobs
of whole lines and converted by worker processes (a forkserver: safe from a threaded server).
The parent keeps the order: it writes each blob's output, checks the workers' fingerprints
against its one duplicate table, renumbers records and merges the issues. At most
2 blobs per worker are in flight, so memory stays flat whatever the file size.
"""

from __future__ import annotations

import io
import multiprocessing
from array import array
from collections import Counter, deque
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import orjson

from app.datasets.formats import _ChainedRaw
from app.datasets.report import Collector, HashLog

BLOB_BYTES = 1 << 20
DETECT_RECORDS = 50
worker_peak_rss_kib = 0  # the largest worker peak RSS seen (for the benchmark)


def _peak_rss_kib() -> int:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
    except (OSError, StopIteration):
        return 0


def worker_batch(blob: bytes, line0: int, shape: str, max_chars: int, max_issues: int,
                 limit: int, long_chars: int | None = None) -> tuple[Any, ...]:
    """Convert one blob of whole JSONL lines (in a worker process)."""
    from app.datasets.validation import _JsonlRecords, _run_json

    out = io.BytesIO()
    col = Collector(out, max_chars, max_issues, long_chars)
    col.dedup = HashLog("q")
    records = _JsonlRecords(io.BufferedReader(io.BytesIO(blob)), col, limit)
    records.lineno = line0
    _run_json(records, col, shape)
    col.flush()
    issues = [(i.line, i.record, i.field, i.code, i.message, i.severity) for i in col.issues]
    stats = (col.total, col.valid, col.prompt_sum, col.response_sum, col.prompt_max, col.response_max)
    return (out.getvalue(), col.dedup.tobytes(), stats, issues, col.issue_counts, col.errors,
            col.warnings, _peak_rss_kib())


def detect_shape(reader: io.BufferedReader, limit: int) -> tuple[str | None, bytes]:
    """The majority shape of the first records, and the raw bytes read to find it."""
    from app.datasets.validation import majority_shape

    lines: list[bytes] = []
    objs: list[dict[str, Any]] = []
    size = 0
    while len(objs) < DETECT_RECORDS and size < 8 << 20:
        line = reader.readline(limit)
        if not line:
            break
        lines.append(line)
        size += len(line)
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if type(obj) is dict:
            objs.append(obj)
    return majority_shape(objs), b"".join(lines)


def run_jsonl(reader: io.BufferedReader, col: Collector, shape: str, limit: int, workers: int) -> None:
    """Convert the rest of `reader` (whole lines from line 1) with `workers` processes."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["app.datasets.validation"])
    in_flight: deque[Future[tuple[Any, ...]] | tuple[int, int]] = deque()
    line0 = 0
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        while blob := reader.read(BLOB_BYTES):
            overlong = 0
            if not blob.endswith(b"\n"):
                tail = reader.readline(limit)
                if len(tail) == limit and not tail.endswith(b"\n"):  # a line too long to read whole
                    while tail and not tail.endswith(b"\n"):
                        tail = reader.readline(limit)
                    blob = blob[: blob.rfind(b"\n") + 1]
                    overlong = line0 + blob.count(b"\n") + 1
                else:
                    blob += tail
            if blob:
                in_flight.append(pool.submit(worker_batch, blob, line0, shape, col.max_chars,
                                             col.max_issues, limit, col.long_chars))
                line0 += blob.count(b"\n")
            if overlong:
                in_flight.append((overlong, limit))
                line0 += 1
            while len(in_flight) >= 2 * workers:
                _merge(col, in_flight.popleft())
        while in_flight:
            _merge(col, in_flight.popleft())


def _merge(col: Collector, item: Future[tuple[Any, ...]] | tuple[int, int]) -> None:
    global worker_peak_rss_kib
    if isinstance(item, tuple):
        line, limit = item
        col.total += 1
        col.issue(line, col.total, None, "too_long",
                  f"The line is longer than {limit:,} bytes; shorten or split the record.")
        return
    out, hashes, stats, issues, counts, errors, warnings, rss = item.result()
    worker_peak_rss_kib = max(worker_peak_rss_kib, rss)
    base = col.total
    total, valid, psum, rsum, pmax, rmax = stats
    col.duplicates += col.dedup.count_seen(array("q", hashes).tolist())
    if out:
        col.output(out)
    col.total += total
    col.valid += valid
    col.prompt_sum += psum
    col.response_sum += rsum
    col.prompt_max = max(col.prompt_max, pmax)
    col.response_max = max(col.response_max, rmax)
    listed: Counter[str] = Counter()
    for line, record, field, code, message, severity in issues:
        col.issue(line, record + base if record else None, field, code, message, severity)
        listed[code] += 1
        errors -= severity == "error"
        warnings -= severity != "error"
    for code, n in counts.items():  # issues the worker counted but did not list
        if n > listed[code]:
            col.issue_counts[code] = col.issue_counts.get(code, 0) + n - listed[code]
            col.truncated += n - listed[code]
    col.errors += errors
    col.warnings += warnings


def chained(head: bytes, reader: io.BufferedReader) -> io.BufferedReader:
    return io.BufferedReader(_ChainedRaw(head, reader), buffer_size=1 << 20)  # type: ignore[arg-type]
