"""Public sample datasets (Alpaca and identity demos, ShareGPT and tool-call conversations, an OpenAI
chat file, T0 prompt/completion sets, two CSV FAQs, C4 and wiki text) are recognised with the right
format and record count.

They are not part of the repository: the tests skip, naming the folder they looked in, where it is
absent (e.g. in a fresh clone).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from app.datasets.validation import Report, validate_and_convert

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"real datasets not found at {DATA}")

EVALUATION_ONLY = {"fastchat_mt_bench_question.jsonl", "selfinstruct_user_oriented_instructions.jsonl"}
# file -> (format, container) our detector must report
EXPECTED = {
    "lf_alpaca_en_demo.json": ("alpaca", "json_array"),
    "lf_identity.json": ("alpaca", "json_array"),
    "fastchat_dummy_conversation.json": ("sharegpt", "json_array"),
    "lf_glaive_toolcall_en_demo.json": ("sharegpt", "json_array"),
    "openai_toy_chat_fine_tuning.jsonl": ("openai_chat", "jsonl"),
    "t0_commonsense_qa_prompt_completion.jsonl": ("prompt_completion", "jsonl"),
    "t0_common_gen_prompt_completion.jsonl": ("prompt_completion", "jsonl"),
    "t0_quartz_prompt_completion.jsonl": ("prompt_completion", "jsonl"),
    "bitext_customer_support.csv": ("csv", "csv"),
    "covid_faq_covidbert.csv": ("csv", "csv"),
    "lf_c4_demo.jsonl": ("text", "jsonl"),
    "lf_wiki_demo.txt": ("txt", "txt"),
}


def manifest() -> dict[str, dict]:
    return {m["file"]: m for m in json.loads((DATA / "MANIFEST.json").read_text())}


def validate(name: str, **kw: object) -> tuple[Report, bytes]:
    out = io.BytesIO()
    with (DATA / name).open("rb") as f:
        report = validate_and_convert(f, out, filename=name, **kw)  # type: ignore[arg-type]
    return report, out.getvalue()


def test_every_training_file_is_listed() -> None:
    assert set(manifest()) - EVALUATION_ONLY == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_detected_with_format_and_record_count(name: str) -> None:
    report, out = validate(name, max_example_chars=1_000_000)
    assert (report.format, report.container) == EXPECTED[name]
    assert report.total_examples == manifest()[name]["records"]
    assert report.encoding == "utf-8"
    assert report.line_ending == ("crlf" if manifest()[name]["crlf"] else "lf")
    assert out.count(b"\n") == report.valid_examples > 0
    for line in out.splitlines()[:50]:
        rec = json.loads(line)
        assert set(rec) in ({"messages"}, {"text"})


def test_flawed_openai_sample_reports_broken_records_by_line() -> None:
    report, _ = validate("openai_toy_chat_fine_tuning.jsonl", max_example_chars=20_000)
    got = [(i.line, i.record, i.field, i.code) for i in report.issues]
    assert got == [(4, 4, "messages", "no_user_turn"), (5, 5, "messages[2].content", "too_long")]
    assert "26,000" in report.issues[1].message
    assert report.valid_examples == 3 and not report.is_valid


def test_flawed_openai_sample_with_the_upload_defaults() -> None:
    """As an upload sees it: the record without a user turn is an error, the 26,000-character reply
    a warning (kept; training truncates it to max_length and counts it)."""
    report, _ = validate("openai_toy_chat_fine_tuning.jsonl")
    got = [(i.line, i.field, i.code, i.severity) for i in report.issues]
    assert got == [(4, "messages", "no_user_turn", "error"), (5, "messages[2].content", "long_example", "warning")]
    assert report.valid_examples == 4 and not report.is_valid


def test_t0_files_warn_about_end_of_text_markers() -> None:
    for name in [n for n in EXPECTED if n.startswith("t0_")]:
        report, _ = validate(name)
        assert report.issue_counts == {"end_of_text_marker": 200}
        assert report.is_valid and report.valid_examples == 200
        assert report.issues[0].line == 1 and report.issues[0].field == "completion"


def test_identity_warns_about_template_slots() -> None:
    report, _ = validate("lf_identity.json")
    assert report.is_valid and report.issue_counts.get("template_slot", 0) > 80
    first = report.issues[0]
    assert (first.line, first.field, first.code) == (2, "output", "template_slot")


def test_bitext_csv_with_crlf_inside_quoted_fields() -> None:
    report, out = validate("bitext_customer_support.csv")
    assert report.valid_examples == 4514 and report.line_ending == "crlf"
    assert report.columns == {"prompt": "instruction", "response": "response"}
    first = json.loads(out.split(b"\n", 1)[0])
    assert "\r\n" in first["messages"][1]["content"]


def test_glaive_tool_turns_are_kept() -> None:
    _, out = validate("lf_glaive_toolcall_en_demo.json")
    first = json.loads(out.split(b"\n", 1)[0])
    roles = [m["role"] for m in first["messages"]]
    assert roles[0] == "system" and "tool" in roles
    assert first["messages"][0]["content"].startswith("You have access to the following tools:")


def test_long_wiki_articles_are_kept_with_warnings() -> None:
    report, _ = validate("lf_wiki_demo.txt")
    assert report.total_examples == report.valid_examples == 30 and report.is_valid
    assert set(report.issue_counts) == {"long_example"} and report.issue_counts["long_example"] >= 17
    assert all(i.severity == "warning" for i in report.issues)


def test_an_article_over_the_hard_limit_is_an_error() -> None:
    report, _ = validate("lf_wiki_demo.txt", max_example_chars=100_000)
    assert report.issue_counts["too_long"] == 1 and not report.is_valid


def test_evaluation_only_files_get_a_clear_report() -> None:
    report, _ = validate("fastchat_mt_bench_question.jsonl")
    assert (report.format, report.total_examples, report.valid_examples) == ("unknown", 80, 0)
    assert report.issue_counts == {"unrecognized_record": 80} and "turns" in report.issues[0].message
    report, _ = validate("selfinstruct_user_oriented_instructions.jsonl")
    assert (report.format, report.total_examples, report.valid_examples) == ("alpaca", 252, 0)
    assert report.issue_counts == {"missing_field": 252} and report.issues[0].field == "output"
