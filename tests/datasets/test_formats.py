"""Format detection, containers and conversion to the canonical training records."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from app.datasets.formats import UnknownFormat, UnsupportedFile
from app.datasets.validation import Report, validate_and_convert


def run(data: str | bytes, filename: str | None = "data.jsonl", **kw: Any) -> tuple[Report, list[dict]]:
    raw = data.encode() if isinstance(data, str) else data
    out = io.BytesIO()
    report = validate_and_convert(io.BytesIO(raw), out, filename=filename, **kw)
    return report, [json.loads(line) for line in out.getvalue().splitlines()]


def jsonl(*records: Any) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def chat(*turns: tuple[str, str]) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


class TestJsonShapes:
    def test_prompt_response(self) -> None:
        report, recs = run(jsonl({"prompt": "Hi?", "response": "Hello."}))
        assert (report.format, report.container, report.is_valid) == ("prompt_response", "jsonl", True)
        assert recs == [chat(("user", "Hi?"), ("assistant", "Hello."))]

    def test_prompt_completion_with_system(self) -> None:
        report, recs = run(jsonl({"prompt": "P", "completion": "C", "system": "Be brief."}))
        assert report.format == "prompt_completion"
        assert recs == [chat(("system", "Be brief."), ("user", "P"), ("assistant", "C"))]

    def test_alpaca_input_joined_and_empty_input(self) -> None:
        report, recs = run(jsonl({"instruction": "Translate", "input": "chat", "output": "cat"},
                                 {"instruction": "Say hi", "input": "", "output": "hi"}))
        assert report.format == "alpaca" and report.valid_examples == 2
        assert recs[0] == chat(("user", "Translate\n\nchat"), ("assistant", "cat"))
        assert recs[1] == chat(("user", "Say hi"), ("assistant", "hi"))

    def test_openai_chat_keeps_tool_turns(self) -> None:
        rec = {"messages": [
            {"role": "system", "content": "S"}, {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None,
             "tool_calls": [{"type": "function", "function": {"name": "w", "arguments": "{}"}}]},
            {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "It is sunny."}]}
        report, recs = run(jsonl(rec))
        assert report.format == "openai_chat" and report.is_valid
        roles = [m["role"] for m in recs[0]["messages"]]
        assert roles == ["system", "user", "assistant", "tool", "assistant"]
        assert json.loads(recs[0]["messages"][2]["content"]) == {"name": "w", "arguments": "{}"}

    def test_sharegpt_with_tools_and_function_calls(self) -> None:
        rec = {"conversations": [
            {"from": "human", "value": "find"}, {"from": "function_call", "value": '{"name": "f"}'},
            {"from": "observation", "value": '{"r": 1}'}, {"from": "gpt", "value": "found"}],
            "tools": '[{"name": "f"}]', "system": "Sys"}
        report, recs = run(jsonl(rec), filename="x.json")
        assert report.format == "sharegpt"
        msgs = recs[0]["messages"]
        assert [m["role"] for m in msgs] == ["system", "user", "assistant", "tool", "assistant"]
        assert msgs[0]["content"].startswith("Sys\n\nYou have access to the following tools:\n")
        assert msgs[2]["content"] == '{"name": "f"}'

    def test_text(self) -> None:
        report, recs = run(jsonl({"text": "Some text."}))
        assert report.format == "text" and recs == [{"text": "Some text."}]
        assert report.avg_prompt_length == 0 and report.avg_response_length == 10

    def test_majority_shape_wins_and_others_are_issues(self) -> None:
        lines = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(5)]
        lines.insert(2, {"instruction": "x", "output": "y"})
        report, recs = run(jsonl(*lines))
        assert report.format == "prompt_completion" and report.valid_examples == 5
        [issue] = report.issues
        assert (issue.line, issue.code, issue.record) == (3, "format_mismatch", 3)

    def test_explicit_format_overrides_and_flags_other_records(self) -> None:
        data = jsonl({"prompt": "a", "response": "b"}, {"prompt": "c", "response": "d"},
                     {"instruction": "i", "output": "o"})
        report, recs = run(data, format="alpaca")
        assert report.format == "alpaca" and report.valid_examples == 1
        assert [(i.line, i.code) for i in report.issues] == [(1, "format_mismatch"), (2, "format_mismatch")]

    def test_unknown_format_name(self) -> None:
        with pytest.raises(UnknownFormat) as e:
            run(jsonl({"text": "x"}), format="parquet")
        assert e.value.code == "unknown_format" and e.value.status_code == 422


class TestJsonArray:
    def test_streams_elements_with_their_start_lines(self) -> None:
        data = ('[\n  {"prompt": "a",\n   "response": "b"},\n\n  {"prompt": "c", "response": "d"},\n'
                '  {"prompt": "",\n "response": "f"}\n]\n')
        report, recs = run(data, filename="d.json")
        assert (report.container, report.format, report.total_examples) == ("json_array", "prompt_response", 3)
        assert len(recs) == 2
        [issue] = report.issues
        assert (issue.line, issue.field, issue.code, issue.record) == (6, "prompt", "empty_field", 3)

    def test_large_array_across_chunks(self) -> None:
        items = [{"prompt": f"p{i}" * 50, "response": "r" * 3000} for i in range(800)]
        data = json.dumps(items, indent=1)
        report, recs = run(data, filename=None)
        assert report.valid_examples == 800 and recs[799]["messages"][0]["content"] == "p799" * 50

    def test_syntax_error_reported_at_its_line(self) -> None:
        data = '[\n{"text": "a"},\n{"text": "b" "c"}\n]'
        report, _ = run(data)
        assert report.valid_examples == 1
        assert [(i.line, i.code) for i in report.issues] == [(3, "invalid_json")]

    def test_empty_array_is_empty_file(self) -> None:
        report, _ = run("[]")
        assert not report.is_valid and report.issues[0].code == "empty_file"


class TestCsv:
    def test_crlf_and_multiline_quoted_fields_with_start_lines(self) -> None:
        data = ('id,Question,Answer\r\n1,"What is\r\nthis?","It is\r\n\r\na test."\r\n'
                '2,Second,"Two"\r\n3,Third,\r\n')
        report, recs = run(data, filename="faq.csv")
        assert (report.format, report.container, report.line_ending) == ("csv", "csv", "crlf")
        assert report.columns == {"prompt": "Question", "response": "Answer"}
        assert report.total_examples == 3 and report.valid_examples == 2
        assert recs[0] == chat(("user", "What is\r\nthis?"), ("assistant", "It is\r\n\r\na test."))
        [issue] = report.issues
        assert (issue.line, issue.field, issue.code) == (7, "Answer", "empty_field")

    def test_tsv_detected_from_content(self) -> None:
        report, recs = run("prompt\tcompletion\nhi\tthere\n", filename="upload")
        assert (report.format, report.container) == ("csv", "tsv")
        assert recs == [chat(("user", "hi"), ("assistant", "there"))]

    def test_explicit_columns(self) -> None:
        data = "a,b,c\n1,x,y\n"
        report, recs = run(data, filename="f.csv", prompt_column="b", response_column="C")
        assert recs == [chat(("user", "x"), ("assistant", "y"))]

    def test_unmapped_columns(self) -> None:
        report, _ = run("foo,bar\n1,2\n3,4\n", filename="f.csv")
        assert not report.is_valid and report.total_examples == 2
        [issue] = report.issues
        assert (issue.line, issue.code) == (1, "unmapped_columns")
        assert "foo, bar" in issue.message and "prompt_column" in issue.message

    def test_short_row(self) -> None:
        report, _ = run("question,answer\nonly\n", filename="f.csv")
        assert [(i.line, i.field, i.code) for i in report.issues] == [(2, "answer", "missing_field")]


class TestTxt:
    LONG_A = "A" * 60 + " " + "a" * 90
    LONG_B = "B" * 130

    def test_blocks_exactly_as_seed_001(self) -> None:
        data = f"{self.LONG_A}\nsecond line\n\n\n{self.LONG_B}\n"
        report, recs = run(data, filename="notes.txt")
        assert (report.format, report.container, report.total_examples) == ("txt", "txt", 2)
        block = f"{self.LONG_A}\nsecond line"
        assert recs[0] == chat(("user", "Continue the following text:\n\n" + block[:100]),
                               ("assistant", block[100:]))
        assert recs[1]["messages"][1]["content"] == "B" * 30

    def test_one_example_per_line_without_blank_lines(self) -> None:
        report, recs = run(f"{self.LONG_A}\n{self.LONG_B}\nshort line\n", filename="x.txt")
        assert report.total_examples == 3 and report.valid_examples == 2
        [issue] = report.issues
        assert (issue.line, issue.code) == (3, "too_short")

    def test_plain_text_without_extension_is_txt(self) -> None:
        report, _ = run(self.LONG_B + "\n", filename=None)
        assert report.container == "txt" and report.is_valid


class TestEncoding:
    def test_binary_file_rejected(self) -> None:
        with pytest.raises(UnsupportedFile) as e:
            run(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", filename="x.png")
        assert e.value.code == "unsupported_file_type" and e.value.status_code == 415

    def test_not_utf8_at_start_rejected(self) -> None:
        with pytest.raises(UnsupportedFile):
            run("prompt,response\ncaf\xe9,ok\n".encode("latin-1"), filename="x.csv")

    def test_invalid_utf8_later_is_a_line_issue(self) -> None:
        head = jsonl(*[{"prompt": "p" * 100, "response": "r" * 100} for _ in range(400)]).encode()
        data = head + b'{"prompt": "caf\xe9", "response": "x"}\n' + jsonl({"text": "x"}).encode()
        report, _ = run(data)
        codes = {(i.line, i.code) for i in report.issues}
        assert (401, "invalid_encoding") in codes and report.valid_examples == 400

    def test_invalid_utf8_in_csv_row(self) -> None:
        data = b"prompt,response\n" + b"a,b\n" * 20000 + b"x,caf\xe9\n"
        report, _ = run(data, filename="f.csv")
        assert [(i.line, i.code) for i in report.issues] == [(20002, "invalid_encoding")]

    def test_bom_accepted(self) -> None:
        report, recs = run("\ufeffquestion,answer\nq,a\n".encode(), filename="f.csv")
        assert report.encoding == "utf-8-sig" and recs == [chat(("user", "q"), ("assistant", "a"))]

    @pytest.mark.parametrize("data", [b"", b"  \n\n \r\n"])
    def test_empty_file(self, data: bytes) -> None:
        report, _ = run(data)
        assert not report.is_valid and [i.code for i in report.issues] == ["empty_file"]
