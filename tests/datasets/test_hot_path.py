"""The JSONL hot loop (records after the first 50): batched lines, inline fingerprints and dedup probes."""

from __future__ import annotations

import io

from app.datasets import report as report_mod
from app.datasets.report import fingerprint
from app.datasets.validation import DETECT_RECORDS, _line_batches
from tests.datasets.test_formats import jsonl, run

FILLER = [{"prompt": f"filler {i}", "response": f"answer {i}"} for i in range(DETECT_RECORDS + 5)]


def test_fingerprint_ignores_whitespace_only() -> None:
    assert fingerprint(["Hello  world", "Hi\tthere "]) == fingerprint([" Hello world\n", "Hi there"])
    assert fingerprint(["ab", "c"]) == fingerprint(["a b", "c\x0b\x0c\r"])
    assert fingerprint(["ab", "c"]) != fingerprint(["a", "bc"])  # the split between texts counts
    assert fingerprint(["Hello world", "Hi there"]) != fingerprint(["Hello world", "Hi there!"])


def test_whitespace_duplicates_between_detection_fast_and_slow_paths() -> None:
    first = [{"prompt": "Hello world", "response": "Line one\nLine two"},
             {"prompt": "Warn me", "response": "x <b> y"}]
    later = [
        {"prompt": "Hello  world ", "response": "Line one Line two"},  # fast path: duplicate
        {"prompt": "Helloworld", "response": "Line\tone\r\nLinetwo"},  # fast path: duplicate
        {"prompt": "Hello world", "response": "Line one\nLine two!"},  # not a duplicate
        {"prompt": "Hello world", "response": "Line one\nLine two", "system": ""},  # slow path: duplicate
        {"prompt": "Warn  me", "response": "x\n<b>y"},  # slow path ("<"): duplicate
        {"prompt": "Hello world", "response": "Line one\nLine two", "system": "s"},  # three texts: new
        {"prompt": "Hello", "response": "worldLine one\nLine two"},  # texts split elsewhere: new
    ]
    report, recs = run(jsonl(*first, *FILLER, *later))
    assert report.duplicates == 4 and len(recs) == len(first) + len(FILLER) + len(later)
    assert report.errors_count == 0


def test_duplicates_when_the_table_grows_during_the_hot_loop(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(report_mod.DedupTable.__init__, "__defaults__", (8, 1 << 22))
    recs = [{"prompt": f"p{i % 700}", "response": f"r {i % 700}"} for i in range(2000)]
    report, out = run(jsonl(*recs))
    assert report.duplicates == 2000 - 700 and len(out) == 2000


def _readline_reference(data: bytes, limit: int) -> list[bytes | None]:
    """What `readline(limit)` reading gives: each line, or None for one `limit` bytes or longer."""
    f, lines = io.BufferedReader(io.BytesIO(data)), []  # type: ignore[var-annotated]
    while line := f.readline(limit):
        if len(line) == limit and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):
                line = f.readline(limit)
            lines.append(None)
        else:
            lines.append(line)
    return lines


def test_line_batches_cut_lines_as_readline_does() -> None:
    limit = 10
    for tail in (b"", b"\n"):
        for lengths in ([3, 8, 9, 10, 11, 30, 0, 9], [9, 10], [10], [25, 2, 9], [1] * 12):
            data = b"\n".join(b"x" * n for n in lengths) + tail
            for size in (1, 3, 7, 64):
                got = [ln if len(ln) <= limit else None
                       for batch in _line_batches(io.BufferedReader(io.BytesIO(data)), limit, size)
                       for ln in batch]
                assert got == _readline_reference(data, limit), (lengths, tail, size)


def test_too_long_lines_in_the_hot_loop_keep_their_line_numbers() -> None:
    limit = 1 << 20  # the line limit for max_example_chars=65536
    head = '{"prompt": "p", "response": "'
    ok = head + "r" * (limit - 1 - len(head) - 2) + '"}'  # limit - 1 bytes, then "\n"
    long = head + "r" * (limit - len(head) - 2) + '"}'  # limit bytes, then "\n"
    data = jsonl(*FILLER) + ok + "\n" + long + "\n" + jsonl({"prompt": "a", "response": "b"}) + "[1]"
    report, recs = run(data, max_example_chars=1 << 16)
    n = len(FILLER)
    assert [(i.line, i.code, i.message[:12]) for i in report.issues] == [
        (n + 1, "too_long", "The example "), (n + 2, "too_long", "The line is "),
        (n + 4, "not_an_object", "Each line mu")]
    assert report.valid_examples == n + 1 and len(recs) == n + 1 and report.total_examples == n + 4
