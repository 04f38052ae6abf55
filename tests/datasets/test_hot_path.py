"""The JSONL hot path (records after the first 50): batched lines, plain pairs in bulk, fingerprints, dedup."""

from __future__ import annotations

import io
import json
import random

import orjson
import pytest

from app.datasets import jsonl as jsonl_mod
from app.datasets import report as report_mod
from app.datasets import validation
from app.datasets.jsonl import DETECT_RECORDS, line_batches
from app.datasets.report import DedupTable, fingerprint, normalised
from tests.datasets.test_formats import jsonl, run

FILLER = [{"prompt": f"filler {i}", "response": f"answer {i}"} for i in range(DETECT_RECORDS + 5)]


def test_fingerprint_ignores_whitespace_only() -> None:
    assert fingerprint(["Hello  world", "Hi\tthere "]) == fingerprint([" Hello world\n", "Hi there"])
    assert fingerprint(["ab", "c"]) == fingerprint(["a b", "c\x0b\x0c\r"])
    assert fingerprint(["ab", "c"]) != fingerprint(["a", "bc"])  # the split between texts counts
    assert fingerprint(["Hello world", "Hi there"]) != fingerprint(["Hello world", "Hi there!"])


def test_normalised_is_what_fingerprint_hashes() -> None:
    rng = random.Random(3)
    alphabet = "ab é日😀\"\\{<\t\n\r\x0b\x0c\x00\u00a0\u2028"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(400)]
    for p, r in zip(texts[::2], texts[1::2], strict=True):
        assert hash(tuple(normalised([p, r]))) == fingerprint([p, r])


# (first text, second text, duplicates?) under the rule: ASCII whitespace removed, nothing else.
WHITESPACE_CASES = [
    ("Hello world", "Hello\tworld", True),  # a tab for a space
    ("Hello world", "Hello    world", True),  # a run of spaces
    ("line one\nline two", "line one\r\nline two", True),  # CRLF for LF
    ("line one\nline two", "line one\n\n\nline two", True),  # blank lines
    ("Hello world", "  Hello world \n", True),  # leading and trailing whitespace
    ("Hello world", "Helloworld", True),  # whitespace removed entirely
    ("Hello world", "Hello\x0b\x0cworld", True),  # vertical tab, form feed
    ("Hello world", "Hello\u00a0world", False),  # a no-break space is not ASCII whitespace
    ("Hello world", "Hello world.", False),  # anything else counts
    ("Hello world", "hello world", False),  # case counts
]


@pytest.mark.parametrize("a, b, same", WHITESPACE_CASES)
@pytest.mark.parametrize("where", ["first records", "hot path", "line by line"])
def test_whitespace_duplicate_rule(monkeypatch, a: str, b: str, same: bool, where: str) -> None:  # type: ignore[no-untyped-def]
    if where == "line by line":
        monkeypatch.setattr(jsonl_mod, "_parse_pairs", lambda *args: None)
    recs = [{"prompt": "Q: " + a, "response": a}, {"prompt": "Q: " + b, "response": b}]
    rows = jsonl(*recs) if where == "first records" else jsonl(*FILLER) + jsonl(*recs)
    report, out = run(rows)
    assert report.duplicates == int(same) and report.valid_examples == len(out)


def test_whitespace_between_json_tokens_is_not_in_the_text() -> None:
    spaced = '{ "prompt" :  "Hello world" ,\t"response":"Hi" }\r\n'
    report, out = run(jsonl(*FILLER) + '{"prompt":"Hello world","response":"Hi"}\n' + spaced)
    assert report.duplicates == 1 and out[-1] == out[-2]


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


@pytest.mark.parametrize("set_max", [0, 100, 1 << 18])  # array table only; set, then table; set only
def test_duplicates_when_the_table_grows_during_the_hot_loop(monkeypatch, set_max: int) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(report_mod.DedupTable.__init__, "__defaults__", (8, 1 << 22, set_max))
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
                       for batch in line_batches(io.BufferedReader(io.BytesIO(data)), limit, size)
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


def _mixed_lines() -> str:
    """Plain pairs with every kind of exception sprinkled in, across many 64 KiB batches: some
    only need a record looked at on its own (`soft`), some send their whole batch line by line."""
    rng = random.Random(7)
    soft = ['{"prompt": "p", "response": "a <b>tag</b>"}', '{"prompt": "{{name}}", "response": "r"}',
            '{"prompt": "p", "response": "{x}"}', '{"prompt": "p", "response": "r", "system": "Be brief."}',
            '{"prompt": "p", "response": "r", "system": ""}', '{"prompt": "  ", "response": "r"}',
            '{"prompt": "", "response": "r"}', '{"prompt": "p", "response": "' + "x" * 20_000 + '"}',
            '{"prompt": "p", "response": "done</s>"}']
    hard = ["", "   ", "not json", "[1, 2]", '{"prompt": "p"}', '{"prompt": 1, "response": "r"}',
            '{"prompt": "p", "response": null}', '"a string"']
    lines = [json.dumps({"prompt": f"q{i % 300} " + "w " * rng.randint(0, 60),
                         "response": f"a{i % 250}\n\n" + "x y " * rng.randint(0, 400)}) for i in range(3000)]
    for k, i in enumerate(range(60, 3000, 37)):
        lines[i] = soft[k % len(soft)]
    for k, i in enumerate(range(90, 3000, 301)):
        lines[i] = hard[k % len(hard)]
    lines[2000:2000] = [json.dumps({"prompt": 'quote " back \\ tab \t é😀', "response": "ctrl \x01 \u2028 ok"})]
    return "\n".join(lines) + "\n"


def test_bulk_pairs_give_what_line_by_line_gives(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Plain pairs converted in bulk, odd records among them one by one: the same report and
    output, byte for byte, as converting every line on its own."""
    data = _mixed_lines()
    bulk_report, _ = run(data, max_example_chars=50_000)
    bulk = io.BytesIO()
    validation.validate_and_convert(io.BytesIO(data.encode()), bulk, filename="x.jsonl", max_example_chars=50_000)
    monkeypatch.setattr(jsonl_mod, "_parse_pairs", lambda *args: None)
    one_by_one = io.BytesIO()
    report = validation.validate_and_convert(io.BytesIO(data.encode()), one_by_one, filename="x.jsonl",
                                             max_example_chars=50_000)
    assert bulk_report.to_dict() == report.to_dict() and bulk.getvalue() == one_by_one.getvalue()
    assert report.duplicates > 0 and report.issue_counts.keys() == {
        "invalid_json", "not_an_object", "missing_field", "wrong_type", "empty_field", "long_example",
        "end_of_text_marker", "template_slot"}


def test_bulk_pairs_write_what_orjson_writes() -> None:
    recs = [{"prompt": 'a "quoted"\nline é', "response": "b\\c 😀\t\u2028\x7f\x1f"}] * 3
    _, out_recs = run(jsonl(*FILLER, *recs))
    out = io.BytesIO()
    validation.validate_and_convert(io.BytesIO(jsonl(*FILLER, *recs).encode()), out, filename=None)
    want = orjson.dumps({"messages": [{"role": "user", "content": recs[0]["prompt"]},
                                      {"role": "assistant", "content": recs[0]["response"]}]}) + b"\n"
    assert out.getvalue().splitlines(keepends=True)[-3:] == [want] * 3


@pytest.mark.parametrize("set_max", [0, 1, 50, 1 << 18])
def test_dedup_counts_in_batches_as_one_by_one(set_max: int) -> None:
    rng = random.Random(set_max)
    # negative ones included; not 0, which the array table stores as 1 (a 2**-64 chance for a real hash)
    batches = [[rng.choice((-1, 1)) * rng.randrange(1, 300) for _ in range(rng.randrange(60))] for _ in range(40)]
    table, seen = DedupTable(slots=8, set_max=set_max), set()
    for batch in batches:
        want = 0
        for h in batch:
            want += h in seen
            seen.add(h)
        assert table.count_seen(batch) == want
    assert (table.small is None) == (set_max < len(seen))
