"""The multi-process JSONL path (parallel.py): the same report and output as one process, byte for byte."""

from __future__ import annotations

import codecs
import io
import json
from pathlib import Path
from typing import Any

import pytest

from app.datasets import parallel
from app.datasets.validation import validate_and_convert
from tests.datasets.test_hot_path import _mixed_lines


def both(tmp_path: Path, data: bytes, **kw: Any) -> dict[str, Any]:
    """Validate `data` with one process and with two workers; both must agree. The report."""
    src = tmp_path / "upload.jsonl"
    src.write_bytes(data)
    results = []
    for workers in (1, 2):
        parallel.last_run_workers.clear()
        dest = tmp_path / f"out-{workers}.jsonl"
        with open(src, "rb") as f, open(dest, "wb") as out:
            out.write(b"kept\n")  # output goes after what `out` already holds
            report = validate_and_convert(f, out, filename="x.jsonl", workers=workers, parallel_min_bytes=0, **kw)
            out.write(b"after\n")  # and `out` is left at its end
        assert bool(parallel.last_run_workers) == (workers == 2)  # the parallel path did run
        results.append((report.to_dict(), dest.read_bytes()))
    assert results[0][0] == results[1][0]
    assert results[0][1] == results[1][1]
    assert results[0][1].startswith(b"kept\n") and results[0][1].endswith(b"}]}\nafter\n")
    return results[0][0]


def cuts(size: int) -> list[int]:
    """Where the ranges of a `size`-byte file start, with two workers."""
    return [a for a, _ in parallel.range_bounds(0, size, 2)]


def rec(i: int, pad: int = 0) -> bytes:
    return json.dumps({"prompt": f"question {i}", "response": f"answer {i}" + "." * pad}).encode() + b"\n"


def test_mixed_records_in_many_ranges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _mixed_lines().encode()
    for range_bytes, max_issues in ((16_384, 5), (100_003, 100)):
        monkeypatch.setattr(parallel, "RANGE_BYTES", range_bytes)
        assert len(cuts(len(data))) > 20
        report = both(tmp_path, data, max_example_chars=50_000, max_issues=max_issues)
        assert report["duplicates"] > 0 and sum(report["issue_counts"].values()) > 5
        assert len(report["issues"]) == 5 if max_issues == 5 else report["issues_truncated"] == 0


def test_line_numbers_across_range_boundaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A record starting exactly at a range start, one ending exactly at one, a bad line across one,
    blank lines, and a duplicate of the first record in the last range."""
    monkeypatch.setattr(parallel, "RANGE_BYTES", 512)
    c = cuts(10_000)
    lines: list[bytes] = []

    def fill_to(offset: int) -> None:  # records up to `offset` exactly (the last one padded)
        while (left := offset - sum(map(len, lines))) > 0:
            lines.append(rec(len(lines), max(0, left - len(rec(len(lines))))) if left < 2 * len(rec(0)) + 10
                         else rec(len(lines)))

    fill_to(c[2])
    at_boundary = len(lines) + 1  # line number of the record that starts at c[2]
    lines.append(b'{"prompt": "at the boundary"}\n')  # missing its response
    fill_to(c[4] - 10)
    across = len(lines) + 1
    lines.append(b"not json, and 29 bytes long\n")  # starts in range 3, ends in range 4
    lines += [b"\n", b"  \n"]
    fill_to(c[7])
    lines.append(rec(0))  # the first record again: a duplicate across ranges
    data = b"".join(lines)
    assert data.index(b"at the boundary") == c[2] + 12 and data.index(b"not json") == c[4] - 10 < c[4] - 9 + 30
    assert data.index(b"question 0", c[7]) == c[7] + 12 and len(data) < c[-1]
    report = both(tmp_path, data)
    assert [(i["line"], i["code"]) for i in report["issues"]] == [
        (at_boundary, "missing_field"), (across, "invalid_json")]
    assert report["duplicates"] == 1 and report["total_examples"] == len(lines) - 2
    assert report["issues"][1]["record"] == across and report["issues"][0]["record"] == at_boundary


def test_crlf_and_bom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel, "RANGE_BYTES", 300)
    lines = [rec(i).replace(b"\n", b"\r\n") for i in range(60)]
    lines[37] = b'{"prompt": "p", "response": ""}\r\n'
    report = both(tmp_path, codecs.BOM_UTF8 + b"".join(lines))
    assert (report["encoding"], report["line_ending"]) == ("utf-8-sig", "crlf")
    assert [(i["line"], i["code"]) for i in report["issues"]] == [(38, "empty_field")]


def test_issue_cap_and_counts_across_ranges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Warnings of one code in several ranges (their per-code cap is reached in a later range than
    the first), then errors in several ranges, under a small cap of the list."""
    monkeypatch.setattr(parallel, "RANGE_BYTES", 400)
    lines = [rec(i) for i in range(200)]
    for i in range(5, 200, 9):
        lines[i] = json.dumps({"prompt": f"Hi {{{{name}}}} {i}", "response": "r"}).encode() + b"\n"
    for i in range(100, 200, 7):
        lines[i] = b'{"prompt": 1, "response": "r"}\n'
    slots, wrong = len(set(range(5, 200, 9)) - set(range(100, 200, 7))), len(range(100, 200, 7))
    report = both(tmp_path, b"".join(lines), max_issues=12)
    assert len(report["issues"]) == 12 and report["issue_counts"] == {"template_slot": slots, "wrong_type": wrong}
    assert report["issues_truncated"] == slots + wrong - 12 and slots > 10 and len(cuts(len(lines) * 40)) > 10
    assert [i["code"] for i in report["issues"]] == ["template_slot"] * 10 + ["wrong_type"] * 2


def test_a_line_longer_than_the_limit_across_many_ranges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel, "RANGE_BYTES", 1 << 16)
    long = json.dumps({"prompt": "p", "response": "x" * (1 << 20)}).encode() + b"\n"  # over the 1 MiB line limit
    data = rec(1) + rec(2) + long + rec(3) + rec(4)[:-1]  # and no "\n" at the end
    report = both(tmp_path, data, max_example_chars=1 << 16)
    assert [(i["line"], i["code"]) for i in report["issues"]] == [(3, "too_long")]
    assert (report["total_examples"], report["valid_examples"]) == (5, 4)


def test_validation_only_and_fallbacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel, "RANGE_BYTES", 256)
    data = b"".join(rec(i % 7) for i in range(50))
    src = tmp_path / "in.jsonl"
    src.write_bytes(data)
    reports = []
    for workers, out in ((1, None), (2, None), (2, io.BytesIO())):  # no output; output not a file
        parallel.last_run_workers.clear()
        with open(src, "rb") as f:
            reports.append(validate_and_convert(f, out, filename=None, workers=workers, parallel_min_bytes=0))
        assert bool(parallel.last_run_workers) == (workers == 2 and out is None)
    assert reports[0] == reports[1] == reports[2] and reports[0].duplicates == 43
    parallel.last_run_workers.clear()
    with open(src, "rb") as f:  # under the size threshold
        validate_and_convert(f, None, filename=None, workers=2, parallel_min_bytes=len(data) + 1)
    assert not parallel.last_run_workers


def test_a_failed_range_stops_the_ranges_waiting_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel, "_offsets", [0, parallel._FAILED, parallel._UNKNOWN])
    with pytest.raises(RuntimeError, match="range 0 failed"):
        parallel._write_at(1, [b"x"])


def test_range_bounds_cover_the_file_in_order() -> None:
    for first, end, workers in ((0, 10 * parallel.RANGE_BYTES + 5, 3), (3, 100, 2), (0, 1, 4)):
        b = parallel.range_bounds(first, end, workers)
        assert b[0][0] == first and b[-1][1] == end and all(x[1] == y[0] for x, y in zip(b, b[1:], strict=False))
        sizes = [y - x for x, y in b]
        assert sizes[: workers - 1] == [min(parallel.RANGE_BYTES * k // workers, end - first) for k in
                                        range(1, workers)][: len(sizes)] or end - first < parallel.RANGE_BYTES


def test_upload_through_the_api_uses_the_workers(client, register, settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The upload (Starlette's spooled temporary file) is read by the workers; same report as one process."""
    monkeypatch.setattr(parallel, "RANGE_BYTES", 1 << 16)
    lines = [rec(i % 3000, i % 50) for i in range(20_000)]  # ~1.5 MB: spooled to disk
    lines[12_345] = b"{broken\n"
    data = b"".join(lines)
    h = register()
    reports = []
    for workers in (1, 2):
        settings.dataset_workers, settings.dataset_parallel_min_bytes = workers, 0
        parallel.last_run_workers.clear()
        r = client.post("/api/datasets", headers=h, files={"file": ("d.jsonl", data)})
        assert r.status_code == 201, r.text
        assert bool(parallel.last_run_workers) == (workers == 2)
        reports.append(r.json()["report"])
        preview = client.get(f"/api/datasets/{r.json()['id']}/preview?limit=100", headers=h).json()["data"]
        assert len(preview) == 100
    assert reports[0] == reports[1]
    assert [(i["line"], i["code"]) for i in reports[0]["issues"]] == [(12_346, "invalid_json")]


def test_workers_that_fail_fall_back_to_one_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A worker killed or a fork refused (not the data's fault): the upload is validated in one
    process instead, and nothing the workers had written stays in the output."""
    from concurrent.futures.process import BrokenProcessPool

    data = b"".join(rec(i) for i in range(300)) + b"not json\n" + rec(5)
    src = tmp_path / "upload.jsonl"
    src.write_bytes(data)

    def broken(fd: int, first: int, end: int, col: Any, out: Any, *args: Any) -> None:
        out.write(b"half-written by a worker\n" * 50_000)  # longer than the real output
        col.total += 7
        raise BrokenProcessPool("a child process terminated abruptly")

    results = []
    for workers in (1, 2):
        monkeypatch.setattr(parallel, "run_jsonl", broken)
        with open(src, "rb") as f, open(tmp_path / f"out{workers}", "wb") as out:
            out.write(b"kept\n")
            report = validate_and_convert(f, out, filename="x.jsonl", workers=workers, parallel_min_bytes=0)
        results.append((report.to_dict(), (tmp_path / f"out{workers}").read_bytes()))
    assert results[0] == results[1]
    assert results[1][0]["total_examples"] == 302 and results[1][0]["duplicates"] == 1
    assert results[1][1].startswith(b"kept\n") and b"half-written" not in results[1][1]
    assert "dataset workers failed (BrokenProcessPool" in caplog.text
