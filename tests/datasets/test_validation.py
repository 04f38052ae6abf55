"""Issues (code, line, field), the report's numbers, duplicates, the issue cap and preview."""

from __future__ import annotations

import io
import json

from app.datasets.report import DedupTable
from app.datasets.validation import preview, validate_and_convert
from tests.datasets.test_formats import jsonl, run


def issues(report) -> list[tuple]:  # type: ignore[no-untyped-def]
    return [(i.line, i.field, i.code, i.severity) for i in report.issues]


class TestIssueCodes:
    def test_invalid_json_and_not_an_object(self) -> None:
        data = jsonl({"prompt": "a", "response": "b"}) + '{"prompt": "a",\n' + "[1, 2]\n" + "\n" + \
            jsonl({"prompt": "c", "response": "d"})
        report, recs = run(data)
        assert issues(report) == [(2, None, "invalid_json", "error"), (3, None, "not_an_object", "error")]
        assert report.total_examples == 4 and report.valid_examples == 2 and not report.is_valid
        assert "not valid JSON" in report.issues[0].message

    def test_missing_empty_and_wrong_type(self) -> None:
        data = jsonl({"prompt": "ok", "response": "ok"}, {"prompt": "a"}, {"prompt": "  ", "response": "b"},
                     {"prompt": "a", "response": 5})
        report, _ = run(data)
        assert issues(report) == [(2, "response", "missing_field", "error"),
                                  (3, "prompt", "empty_field", "error"),
                                  (4, "response", "wrong_type", "error")]
        assert [i.record for i in report.issues] == [2, 3, 4]

    def test_chat_turn_problems_name_the_turn(self) -> None:
        data = jsonl(
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
            {"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]},
            {"messages": [{"role": "user", "content": "q"}]},
            {"messages": [{"role": "user", "content": "q"}, {"role": "robot", "content": "a"}]},
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ["x"]}]},
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]},
        )
        report, _ = run(data)
        assert issues(report) == [
            (2, "messages", "no_user_turn", "error"),
            (3, "messages", "no_assistant_turn", "error"),
            (4, "messages[1].role", "unknown_role", "error"),
            (5, "messages[1].content", "wrong_type", "error"),
            (6, "messages[1].content", "empty_field", "error"),
        ]

    def test_sharegpt_unknown_role(self) -> None:
        rec = {"conversations": [{"from": "human", "value": "q"}, {"from": "narrator", "value": "a"}]}
        report, _ = run(jsonl(rec))
        assert issues(report) == [(1, "conversations[1].from", "unknown_role", "error")]

    def test_too_long_in_characters(self) -> None:
        data = jsonl({"prompt": "p", "response": "r" * 50}, {"prompt": "p", "response": "r" * 10})
        report, recs = run(data, max_example_chars=40)
        assert issues(report) == [(1, "response", "too_long", "error")] and len(recs) == 1

    def test_end_of_text_marker_is_a_warning_in_trained_text_only(self) -> None:
        data = jsonl({"prompt": "</s> in prompt", "completion": "done<|endoftext|>"},
                     {"prompt": "x", "completion": "y<|eot_id|>"})
        report, recs = run(data)
        assert issues(report) == [(1, "completion", "end_of_text_marker", "warning"),
                                  (2, "completion", "end_of_text_marker", "warning")]
        assert report.is_valid and len(recs) == 2
        assert "adds the model's own end-of-sequence" in report.issues[0].message

    def test_template_slot_warning(self) -> None:
        report, recs = run(jsonl({"instruction": "Who?", "input": "", "output": "I am {{name}}."},
                                 {"instruction": "a {b} c", "input": "", "output": "no slot {x}"}))
        assert issues(report) == [(1, "output", "template_slot", "warning")]
        assert report.is_valid and "{{name}}" in report.issues[0].message

    def test_unrecognized_records(self) -> None:
        report, _ = run(jsonl({"question_id": 1, "turns": ["hi"]}))
        assert report.format == "unknown" and issues(report) == [(1, None, "unrecognized_record", "error")]
        assert "question_id, turns" in report.issues[0].message


class TestReport:
    def test_numbers(self) -> None:
        data = jsonl({"prompt": "abcd", "response": "xy"},
                     {"messages": [{"role": "user", "content": "ab"}, {"role": "assistant", "content": "x"},
                                   {"role": "user", "content": "abcd"}, {"role": "assistant", "content": "xyz"}]})
        report, _ = run(data, format="openai_chat")
        assert report.valid_examples == 1
        report, _ = run(jsonl({"prompt": "abcd", "response": "xy"}, {"prompt": "ab", "response": "xyzw"}))
        d = report.to_dict()
        assert d["avg_prompt_length"] == 3.0 and d["avg_response_length"] == 3.0
        assert d["max_prompt_length"] == 4 and d["max_response_length"] == 4
        assert d["is_valid"] and d["errors_count"] == 0 and d["line_ending"] == "lf"
        assert set(d) >= {"is_valid", "format", "container", "total_examples", "valid_examples",
                          "avg_prompt_length", "avg_response_length", "duplicates", "issues",
                          "issues_truncated", "warnings_count", "errors_count", "encoding", "token_stats"}

    def test_multi_turn_lengths_split_trained_and_context(self) -> None:
        rec = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "ab"},
                            {"role": "assistant", "content": "x"}, {"role": "user", "content": "abcd"},
                            {"role": "assistant", "content": "xyz"}]}
        report, _ = run(jsonl(rec))
        assert (report.avg_prompt_length, report.avg_response_length) == (7.0, 4.0)

    def test_duplicates_after_whitespace_normalisation(self) -> None:
        data = jsonl({"prompt": "Hello  world", "response": "Hi there"},
                     {"prompt": " Hello world\n", "response": "Hi\tthere "},
                     {"prompt": "Hello world", "response": "Hi there!"},
                     {"prompt": "Hello world", "response": "Hi there"})
        report, recs = run(data)
        assert report.duplicates == 2 and len(recs) == 4

    def test_issue_cap_keeps_count_of_the_rest(self) -> None:
        data = "not json\n" * 150 + jsonl({"prompt": "a", "response": "b"})
        report, _ = run(data, max_issues=100)
        assert len(report.issues) == 100 and report.issues_truncated == 50
        assert report.errors_count == 150 and report.issue_counts == {"invalid_json": 150}
        assert [i.line for i in report.issues[:3]] == [1, 2, 3]

    def test_repeated_warnings_leave_room_for_errors(self) -> None:
        data = jsonl(*[{"prompt": "p", "completion": f"c{i}</s>"} for i in range(200)]) + "oops\n"
        report, _ = run(data, max_issues=20)
        assert report.issue_counts == {"end_of_text_marker": 200, "invalid_json": 1}
        assert report.issues[-1].code == "invalid_json" and report.issues[-1].line == 201
        assert report.warnings_count == 200 and report.issues_truncated == 190


def test_preview_reads_the_canonical_file() -> None:
    out = io.BytesIO()
    validate_and_convert(io.BytesIO(jsonl(*[{"text": f"t{i}"} for i in range(10)]).encode()), out,
                         filename="x.jsonl")
    out.seek(0)
    assert preview(out, 3) == [{"text": "t0"}, {"text": "t1"}, {"text": "t2"}]
    out.seek(0)
    assert len(preview(out, 100)) == 10


def test_output_is_one_json_object_per_line() -> None:
    out = io.BytesIO()
    validate_and_convert(io.BytesIO(jsonl({"prompt": "a\nb", "response": "é😀"}).encode()), out, filename=None)
    lines = out.getvalue().split(b"\n")
    assert lines[-1] == b"" and json.loads(lines[0])["messages"][1]["content"] == "é😀"


def test_dedup_table_grows_and_caps() -> None:
    t = DedupTable(slots=8, max_slots=64)
    assert [t.seen(h) for h in (5, 13, 5, 0, 0)] == [False, False, True, False, True]
    assert sum(t.seen(h) for h in range(100, 200)) == 0 and t.mask + 1 == 64
    assert t.seen(100)


def test_pair_fast_path_writes_what_orjson_writes() -> None:
    import orjson

    rec = {"prompt": 'a "quoted"\nline é', "response": "b\\c 😀\t"}
    _, recs = run(jsonl(rec))
    out = io.BytesIO()
    validate_and_convert(io.BytesIO(jsonl(rec).encode()), out, filename=None)
    want = orjson.dumps({"messages": [{"role": "user", "content": rec["prompt"]},
                                      {"role": "assistant", "content": rec["response"]}]}) + b"\n"
    assert out.getvalue() == want
