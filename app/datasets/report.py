"""The validation report, and the collector that builds it while a file streams past."""

from __future__ import annotations

import dataclasses
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import repeat
from typing import Any, BinaryIO

import orjson

from app.datasets.shapes import Problem

WARNING_CAP_PER_CODE = 10  # warnings repeat on every record; keep room in the list for errors
_WS = b" \t\n\r\x0b\x0c"  # the whitespace that duplicate detection ignores
_DUMP_OPT = orjson.OPT_APPEND_NEWLINE


def fingerprint(texts: list[str]) -> int:
    """The duplicate fingerprint of a record's texts (message contents in order, or its text).

    Exact after removing whitespace: texts that differ only in ASCII whitespace (spaces, tabs,
    line breaks, CR, VT, FF; anywhere in the text, runs included) collide, any other
    difference does not (up to 64-bit hash collisions). `hash` is salted per process, so
    only fingerprints made by one process are compared. The JSONL hot path (validation.py)
    computes this for whole batches of prompt/response pairs with `normalised`; tests check
    that both agree.
    """
    return hash(tuple([t.encode("utf-8", "surrogatepass").translate(None, _WS) for t in texts]))


def normalised(texts: Iterable[str]) -> Iterator[bytes]:
    """Each text as `fingerprint` hashes it (UTF-8, ASCII whitespace removed), lazily, at C speed."""
    return map(bytes.translate, map(str.encode, texts), repeat(None), repeat(_WS))


def canonical_texts(canon: dict[str, Any]) -> list[str]:
    """The texts of a canonical record, as `fingerprint` takes them."""
    msgs = canon.get("messages")
    return [m["content"] for m in msgs] if msgs is not None else [canon["text"]]


@dataclass
class Issue:
    """One problem, located in the uploaded file (1-based `line`; `record` counts records)."""

    line: int | None
    field: str | None
    code: str
    message: str
    severity: str = "error"  # "error" (the record is left out) | "warning" (it is kept)
    record: int | None = None


@dataclass
class Report:
    """What `validate_and_convert` found. `is_valid`: at least one valid example and no errors."""

    is_valid: bool
    format: str
    container: str
    total_examples: int
    valid_examples: int
    avg_prompt_length: float
    avg_response_length: float
    max_prompt_length: int
    max_response_length: int
    duplicates: int
    issues: list[Issue]
    issues_truncated: int
    errors_count: int
    warnings_count: int
    issue_counts: dict[str, int]
    encoding: str
    line_ending: str
    columns: dict[str, str] | None = None
    token_stats: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class DedupTable:
    """The fingerprints seen so far, to count duplicates in bounded memory.

    A set while it holds at most `set_max` fingerprints (~60 bytes each; a batch is checked
    at C speed), then an open-addressing array of 64-bit slots (~16-32 bytes each) that grows
    to `max_slots` (32 MiB at the default); past that, new fingerprints are no longer stored,
    so `duplicates` becomes a lower bound (only after ~2 million distinct examples).
    """

    __slots__ = ("small", "set_max", "table", "mask", "used", "max_slots")

    def __init__(self, slots: int = 1 << 16, max_slots: int = 1 << 22, set_max: int = 1 << 18) -> None:
        self.small: set[int] | None = set() if set_max > 0 else None
        self.set_max = min(set_max, max_slots // 4)
        self.table = array("q", bytes(8 * slots)) if self.small is None else array("q")
        self.mask = slots - 1
        self.used = 0
        self.max_slots = max_slots

    def count_seen(self, hashes: list[int]) -> int:
        """How many of `hashes` were added before (or earlier in the list); adds the others."""
        small = self.small
        if small is None:
            return sum(map(self.seen, hashes))
        size = len(small)
        small.update(hashes)
        new = len(small) - size
        if len(small) > self.set_max:
            self._to_table()
        return len(hashes) - new

    def seen(self, h: int) -> bool:
        """True when `h` was added before; adds it otherwise."""
        small = self.small
        if small is not None:
            if h in small:
                return True
            small.add(h)
            if len(small) > self.set_max:
                self._to_table()
            return False
        h = h or 1
        table, mask = self.table, self.mask
        i = h & mask
        while True:
            v = table[i]
            if v == h:
                return True
            if v == 0:
                break
            i = (i + 1) & mask
        if 2 * self.used < mask:
            table[i] = h
            self.used += 1
        elif mask + 1 < self.max_slots:
            self._grow()
            self.seen(h)
        return False

    def _to_table(self) -> None:
        small, self.small = self.small or set(), None
        slots = min(self.max_slots, max(self.mask + 1, 1 << (4 * len(small)).bit_length()))
        self.table, self.mask, self.used = array("q", bytes(8 * slots)), slots - 1, 0
        for h in small:
            self.seen(h)

    def _grow(self) -> None:
        old = self.table
        self.table = array("q", bytes(16 * len(old)))
        self.mask = 2 * len(old) - 1
        self.used = 0
        for v in old:
            if v:
                self.seen(v)


class HashLog(array):  # type: ignore[type-arg]
    """Stands in for DedupTable in a worker process: records fingerprints for the parent to check."""

    def seen(self, h: int) -> bool:
        self.append(h)
        return False

    def count_seen(self, hashes: list[int]) -> int:
        self.extend(hashes)
        return 0


class Collector:
    """Accumulates counts, issues and duplicates; writes valid canonical records to `out`."""

    def __init__(self, out: BinaryIO | None, max_example_chars: int, max_issues: int,
                 long_example_chars: int | None = None) -> None:
        self.write = out.write if out is not None else None
        # Above this an example is kept with a `long_example` warning (training truncates it).
        self.long_chars = min(long_example_chars or max_example_chars, max_example_chars)
        self.out_buf: list[bytes] = []
        self.out_size = 0
        self.max_chars = max_example_chars
        self.max_issues = max_issues
        self.issues: list[Issue] = []
        self.issue_counts: dict[str, int] = {}
        self.truncated = self.errors = self.warnings = 0
        self.total = self.valid = self.duplicates = 0
        self.prompt_sum = self.response_sum = self.prompt_max = self.response_max = 0
        self.dedup: DedupTable | HashLog = DedupTable()

    def issue(self, line: int | None, record: int | None, field: str | None, code: str, message: str,
              severity: str = "error") -> None:
        n = self.issue_counts.get(code, 0) + 1
        self.issue_counts[code] = n
        if severity == "error":
            self.errors += 1
        else:
            self.warnings += 1
        if len(self.issues) >= self.max_issues or (severity != "error" and n > WARNING_CAP_PER_CODE):
            self.truncated += 1
        else:
            self.issues.append(Issue(line, field, code, message, severity, record))

    def emit(self, line: int, record: int, canon: dict[str, Any] | None, plen: int, rlen: int,
             problems: list[Problem] | None, source: Any = None, key: str | None = None) -> None:
        """Count one record; write it when it has no error.

        Duplicates are found by the `fingerprint` of the record's texts, or of `key` when given
        (a plain-text block, whose prompt/response split depends on its whitespace).
        """
        if problems is not None:
            bad = canon is None
            for field_, code, message, severity in problems:
                self.issue(line, record, field_, code, message, severity)
                bad = bad or severity == "error"
            if bad:
                return
        if plen + rlen > self.max_chars:
            self.issue(line, record, longest_field(source), "too_long", (
                f"The example has {plen + rlen:,} characters (prompt {plen:,}, response {rlen:,}); "
                f"the limit is {self.max_chars:,}. Shorten or split it."))
            return
        if plen + rlen > self.long_chars:
            self.issue(line, record, longest_field(source), "long_example", (
                f"The example has {plen + rlen:,} characters (about {(plen + rlen) // 4:,} tokens); training "
                "truncates examples to max_length tokens (counted, never dropped). Shorten or split it if "
                "its end matters."), "warning")
        try:
            data = orjson.dumps(canon, option=_DUMP_OPT)
        except orjson.JSONEncodeError:
            self.issue(line, record, None, "invalid_encoding",
                       "The record contains text that is not valid Unicode (a lone surrogate escape).")
            return
        if self.dedup.seen(fingerprint([key or ""] if key is not None or canon is None else canonical_texts(canon))):
            self.duplicates += 1
        self.keep(data, plen, rlen)

    def keep(self, data: bytes, plen: int, rlen: int) -> None:
        """Count one valid example (its duplicate check done) and queue its canonical bytes."""
        self.valid += 1
        self.prompt_sum += plen
        self.response_sum += rlen
        if plen > self.prompt_max:
            self.prompt_max = plen
        if rlen > self.response_max:
            self.response_max = rlen
        self.output(data)

    def output(self, data: bytes) -> None:
        """Queue canonical bytes for `out`: one write per MiB, fewer system calls than per record."""
        if self.write is not None:
            self.out_buf.append(data)
            self.out_size += len(data)
            if self.out_size >= 1 << 20:
                self.flush()

    def flush(self) -> None:
        if self.write is not None and self.out_buf:
            self.write(b"".join(self.out_buf))
        self.out_buf.clear()
        self.out_size = 0

    def report(self, fmt: str, container: str, encoding: str, line_ending: str,
               columns: dict[str, str] | None = None) -> Report:
        if self.total == 0 and self.errors == 0:
            self.issue(None, None, None, "empty_file",
                       "The file has no examples. Upload a file with at least one record.")
        self.flush()
        v = self.valid
        return Report(
            is_valid=v > 0 and self.errors == 0, format=fmt, container=container,
            total_examples=self.total, valid_examples=v,
            avg_prompt_length=round(self.prompt_sum / v, 1) if v else 0.0,
            avg_response_length=round(self.response_sum / v, 1) if v else 0.0,
            max_prompt_length=self.prompt_max, max_response_length=self.response_max,
            duplicates=self.duplicates,
            issues=sorted(self.issues, key=lambda i: (i.line or 0, i.record or 0)),
            issues_truncated=self.truncated, errors_count=self.errors, warnings_count=self.warnings,
            issue_counts=self.issue_counts, encoding=encoding, line_ending=line_ending, columns=columns,
        )


def longest_field(obj: Any, path: str = "", depth: int = 0) -> str | None:
    """The path (e.g. ``messages[2].content``) of the longest string in a parsed record."""
    best: tuple[int, str | None] = (-1, None)
    items: Any = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        p = f"{path}[{k}]" if isinstance(k, int) else (f"{path}.{k}" if path else str(k))
        if isinstance(v, str):
            cand: tuple[int, str | None] = (len(v), p)
        elif depth < 3 and isinstance(v, dict | list):
            sub = longest_field(v, p, depth + 1)
            cand = (_len_at(v, p, sub), sub)
        else:
            continue
        if cand[0] > best[0]:
            best = cand
    return best[1]


def _len_at(obj: Any, base: str, path: str | None) -> int:
    if path is None:
        return -1
    cur = obj
    for part in path[len(base):].replace("]", "").replace("[", ".").split("."):
        if part:
            cur = cur[int(part)] if isinstance(cur, list) else cur[part]
    return len(cur) if isinstance(cur, str) else -1
