"""Validate a large JSONL upload on all cores: each worker reads its own byte ranges of the file.

One Python process cannot parse, check, convert, fingerprint and write records as fast as a
bare `json.loads` loop only parses them, so a large JSONL file (a regular file: the bench's,
or the temporary file an upload was spooled to) is cut into ranges of bytes (`RANGE_BYTES`)
converted by worker processes (a forkserver: safe from a threaded server). Each worker gets
the file's and the output's descriptors once, when it starts, and reads its ranges itself
with `pread`: a range owns every line that *starts* in it (the first one after the first
"\n" before its start; the last one is read to its end, past the range if need be). The
worker writes the range's output into the output file itself (`pwrite`) as soon as the
ranges before it are written — usually at once: range i - 1 was started first, and the first
ranges have staggered sizes so that the workers never finish together — and sends back only
small things: its line count, the packed fingerprints, the counts and the issues (numbered
from the range's first line and record).

The parent keeps the order: it renumbers lines and records (a range's first line is known once
the ranges before it are counted), merges the issues under the one cap and counts duplicates
with its one table. It computes no fingerprint itself: `hash` is salted per process, and only
the workers, all forked from the same forkserver, share a salt. At most `IN_FLIGHT_PER_WORKER`
ranges per worker are pending and a worker holds one range's output, so memory stays flat
whatever the file size. Output and report are those of the one-process path, byte for byte
(tested).

Start-up: the forkserver (a fresh interpreter importing this package, ~65 ms) is started once
per process, by `warm_up()` when the app starts; each run then forks its workers (~10-20 ms).
"""

from __future__ import annotations

import ctypes
import fcntl
import io
import multiprocessing
import os
import stat
import threading
import time
from array import array
from collections import Counter, deque
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import forkserver, reduction
from typing import Any, BinaryIO, cast

from app.datasets.jsonl import JsonlRecords, first_records, majority_shape, run_json
from app.datasets.report import Collector, HashLog

RANGE_BYTES = 4 << 20
RUNNING = threading.Lock()  # one parallel run per process at a time: CPUs and memory stay bounded
IN_FLIGHT_PER_WORKER = 2
# The forkserver imports what the workers need once; "__main__" too, or each worker would run the
# main script again (under uvicorn's script: 0.1 s of imports per worker).
_PRELOAD = ["__main__", "app.datasets.jsonl", "concurrent.futures.process"]
_UNKNOWN, _FAILED = -1, -2  # offsets of the ranges' output not known yet, or never (a range failed)
# In a worker: its duplicates of the upload's and the output's descriptors, and where each range's
# output starts in the output file (shared by the run's processes).
_src_fd = _out_fd = -1
_offsets: Any = None
# pid -> (peak RSS KiB, CPU seconds) of each worker process of the last run (for the benchmark)
last_run_workers: dict[int, tuple[int, float]] = {}


class _SharedFd:
    """A descriptor that each worker receives once, when it is started (through the forkserver)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Any, tuple[Any]]:
        return _detach, (reduction.DupFd(self.fd),)  # pickled while a worker is being spawned


def _detach(dup: Any) -> int:
    return int(dup.detach())


def _init_worker(src: _SharedFd | int, out: _SharedFd | int | None, offsets: Any) -> None:
    global _src_fd, _out_fd, _offsets
    assert isinstance(src, int) and not isinstance(out, _SharedFd)  # unpickled as descriptors
    _src_fd, _out_fd, _offsets = src, -1 if out is None else out, offsets
    _keep_freed_memory()


def _keep_freed_memory() -> None:
    """Have glibc reuse freed blocks instead of giving them back at once (fewer page faults)."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: blocks of up to 32 MiB come from the heap
    mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD: keep up to 64 MiB free at the top of the heap


class RangeRaw(io.RawIOBase):
    """Bytes `pos` to `stop` of the file `fd`, read with `preadv` (the descriptor's offset is shared)."""

    def __init__(self, fd: int, pos: int, stop: int) -> None:
        self.fd, self.pos, self.stop = fd, pos, stop

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = min(len(b), self.stop - self.pos)
        if n <= 0:
            return 0
        got = os.preadv(self.fd, [memoryview(b)[:n]], self.pos)
        self.pos += got
        return got


def line_start(fd: int, pos: int, first: int, end: int) -> int:
    """The offset of the first line that starts at or after `pos` (line 1 starts at `first`)."""
    if pos <= first:
        return first
    p = pos - 1
    while p < end:
        chunk = os.pread(fd, min(1 << 16, end - p), p)
        if not chunk:
            break
        i = chunk.find(b"\n")
        if i >= 0:
            return min(p + i + 1, end)
        p += len(chunk)
    return end


class _Parts(list[bytes]):
    """A range's output, kept until it can be written where it belongs."""

    def write(self, b: bytes) -> None:
        self.append(b)


def _self_usage() -> tuple[int, float]:
    """This process's peak RSS (KiB) and CPU seconds."""
    try:
        with open("/proc/self/status") as f:
            hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
    except (OSError, StopIteration):
        hwm = 0
    return hwm, time.process_time()


def convert_range(i: int, start: int, stop: int, first: int, end: int, shape: str, max_chars: int,
                  max_issues: int, limit: int, long_chars: int) -> tuple[Any, ...]:
    """Convert the lines that start in bytes [start, stop) of the file (range `i`, in a worker).

    The output is written at the range's place in the output file once the ranges before it
    are written (usually already the case: range i - 1 was started first).
    """
    try:
        s, e = line_start(_src_fd, start, first, end), line_start(_src_fd, stop, first, end)
        parts = _Parts() if _out_fd >= 0 else None
        col = Collector(cast(BinaryIO, parts), max_chars, max_issues, long_chars)
        col.dedup = HashLog("q")
        records = JsonlRecords(io.BufferedReader(RangeRaw(_src_fd, s, e), 1 << 20), col, limit)
        if s < e:
            run_json(records, col, shape)
            col.flush()
        if parts is not None:
            _write_at(i, parts)
    except BaseException:
        _offsets[i + 1] = _FAILED  # the ranges after this one wait for it no longer
        raise
    issues = [(i.line, i.record, i.field, i.code, i.message, i.severity) for i in col.issues]
    stats = (col.total, col.valid, col.prompt_sum, col.response_sum, col.prompt_max, col.response_max)
    return (records.lineno, col.dedup.tobytes(), stats, issues, col.issue_counts, col.errors,
            col.warnings, os.getpid(), _self_usage())


def _write_at(i: int, parts: list[bytes]) -> None:
    """Write range `i`'s output after range i - 1's, then say where range i + 1's goes."""
    while (at := _offsets[i]) < 0:
        if at == _FAILED:
            raise RuntimeError(f"range {i - 1} failed")
        time.sleep(0.0002)
    pos = at
    for part in parts:
        view = memoryview(part)
        while view:
            n = os.pwrite(_out_fd, view, pos)
            pos += n
            view = view[n:]
    _offsets[i + 1] = pos


def file_span(src: Any, start: int | None, min_bytes: int) -> tuple[int, int] | None:
    """(descriptor, size) of `src` when it is a regular file with `min_bytes` or more after `start`.

    The size is asked with seek/tell first: a small SpooledTemporaryFile (an upload still in
    memory) would be written to disk by `fileno()`.
    """
    if start is None:
        return None
    try:
        here = src.tell()
        size = src.seek(0, os.SEEK_END)
        src.seek(here)
        if size - start < min_bytes:
            return None
        if hasattr(src, "flush"):
            src.flush()  # an upload still being written: its bytes must be in the file
        fd = src.fileno()
        st = os.fstat(fd)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    return (fd, st.st_size) if stat.S_ISREG(st.st_mode) and st.st_size == size else None


def detect_shape(fd: int, first: int, end: int, limit: int) -> str | None:
    """The shape the one-process path finds in the file's first records (reading no further; no fingerprints)."""
    records = JsonlRecords(io.BufferedReader(RangeRaw(fd, first, end), 1 << 16), Collector(None, 1, 0), limit)
    return majority_shape([obj for _, _, obj in first_records(records)])


def warm_up() -> None:
    """Start the forkserver now (in the background), so that the first large upload does not wait for it."""
    multiprocessing.get_context("forkserver").set_forkserver_preload(_PRELOAD)
    forkserver.ensure_running()


def range_bounds(first: int, end: int, workers: int) -> list[tuple[int, int]]:
    """The byte ranges, in order: `RANGE_BYTES` each, but the first `workers` ones 1/n, 2/n, ... of that,
    so that the workers finish their ranges one after the other (range i + 1's output can only be
    written after range i's), never all at once."""
    sizes = [RANGE_BYTES * k // workers for k in range(1, workers)]
    cuts = [first]
    while cuts[-1] < end:
        cuts.append(min(end, cuts[-1] + (sizes.pop(0) if sizes else RANGE_BYTES)))
    return list(zip(cuts, cuts[1:], strict=False))


def output_fd(out: Any) -> int | None:
    """`out`'s descriptor when workers can write into it at given offsets (a regular file, not appending)."""
    try:
        fd = out.fileno()
        ok = stat.S_ISREG(os.fstat(fd).st_mode) and not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    return fd if ok else None


def run_jsonl(fd: int, first: int, end: int, col: Collector, out: BinaryIO | None, out_fd: int | None,
              shape: str, limit: int, workers: int) -> None:
    """Convert the JSONL lines of bytes [first, end) of `fd` with `workers` processes, in order.

    `out_fd` is `output_fd(out)` (None when `out` is None).
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    last_run_workers.clear()
    bounds = range_bounds(first, end, workers)
    offsets = ctx.RawArray("q", len(bounds) + 1)
    if out is not None and out_fd is not None:
        out.flush()
        offsets[:] = [os.lseek(out_fd, 0, os.SEEK_CUR)] + [_UNKNOWN] * len(bounds)
    pending: deque[Future[tuple[Any, ...]]] = deque()
    lines = 0
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(
            _SharedFd(fd), None if out_fd is None else _SharedFd(out_fd), offsets)) as pool:
        try:
            for i, (a, b) in enumerate(bounds):
                pending.append(pool.submit(convert_range, i, a, b, first, end, shape,
                                           col.max_chars, col.max_issues, limit, col.long_chars))
                if len(pending) >= IN_FLIGHT_PER_WORKER * workers:
                    lines += _merge(col, lines, pending.popleft().result())
            while pending:
                lines += _merge(col, lines, pending.popleft().result())
        finally:
            for f in pending:
                f.cancel()
    if out is not None:
        out.seek(offsets[len(bounds)])  # after the output, where the workers left it


def _merge(col: Collector, line_base: int, result: tuple[Any, ...]) -> int:
    """Add one range's result to `col`; returns the range's line count."""
    n_lines, hashes, stats, issues, counts, errors, warnings, pid, (hwm, cpu) = result
    hwm0, cpu0 = last_run_workers.get(pid, (0, 0.0))
    last_run_workers[pid] = (max(hwm, hwm0), max(cpu, cpu0))
    base = col.total
    total, valid, psum, rsum, pmax, rmax = stats
    col.duplicates += col.dedup.count_seen(array("q", hashes).tolist())
    col.total += total
    col.valid += valid
    col.prompt_sum += psum
    col.response_sum += rsum
    col.prompt_max = max(col.prompt_max, pmax)
    col.response_max = max(col.response_max, rmax)
    listed: Counter[str] = Counter()
    for line, record, field, code, message, severity in issues:
        col.issue(line + line_base, record + base if record else None, field, code, message, severity)
        listed[code] += 1
        errors -= severity == "error"
        warnings -= severity != "error"
    # A worker lists what one process would have listed, from the range's start on: the parent's
    # list keeps a prefix of that. (Exact: a warning the worker listed that the parent drops for
    # its code's cap stands for one the parent listed, of that code, from an earlier range.)
    for code, n in counts.items():  # issues the worker counted but did not list
        if n > listed[code]:
            col.issue_counts[code] = col.issue_counts.get(code, 0) + n - listed[code]
            col.truncated += n - listed[code]
    col.errors += errors
    col.warnings += warnings
    return int(n_lines)
