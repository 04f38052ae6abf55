"""How a canonical training record becomes text and tokens.

Shared by train.py, serve.py, inference.py and evaluate.py so that a model is
prompted at inference exactly as it was trained. Imports nothing from app/.

Canonical records (what the platform's dataset conversion writes, one JSON object a line):
  {"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str}, ...]}
  {"text": str}                       plain language-modelling text, every token trained

Models with a chat template use it; others use the platform's plain template:
  system     -> "{content}\n\n"
  user       -> "### User:\n{content}\n\n### Assistant:\n"
  tool       -> "### Tool:\n{content}\n\n### Assistant:\n"
  assistant  -> "{content}{eos}"          (the only trained part unless train_on_inputs)
and "\n\n" between an assistant turn and the next turn.
"""

from __future__ import annotations

from typing import Any

TEMPLATE_NAME = "llmtuner-plain-v1"

_PLAIN_PREFIX = {
    "system": "{content}\n\n",
    "user": "### User:\n{content}\n\n### Assistant:\n",
    "tool": "### Tool:\n{content}\n\n### Assistant:\n",
}


def _has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def segments(record: dict[str, Any], tokenizer: Any) -> list[tuple[str, bool]]:
    """Split a record into (text, is_response) pieces, in order.

    Concatenating the texts gives the full training string; pieces marked True are
    the assistant's words (the part trained on when train_on_inputs is false).
    """
    eos = getattr(tokenizer, "eos_token", None) or ""
    if "text" in record and "messages" not in record:
        return [(str(record["text"]) + eos, True)]
    messages = record["messages"]
    if _has_chat_template(tokenizer):
        return _chat_template_segments(messages, tokenizer)
    out: list[tuple[str, bool]] = []
    after_assistant = False
    for m in messages:
        role, content = m["role"], str(m.get("content") or "")
        sep = "\n\n" if after_assistant else ""
        if role == "assistant":
            if sep:
                out.append((sep, False))
            out.append((content + eos, True))
            after_assistant = True
        else:
            out.append((sep + _PLAIN_PREFIX.get(role, _PLAIN_PREFIX["user"]).format(content=content), False))
            after_assistant = False
    return out


def _chat_template_segments(messages: list[dict[str, Any]], tokenizer: Any) -> list[tuple[str, bool]]:
    """Diff successive renderings of the chat template to find each turn's text."""
    out: list[tuple[str, bool]] = []
    rendered = ""
    for i, m in enumerate(messages):
        is_assistant = m["role"] == "assistant"
        if is_assistant:
            # The generation prompt (e.g. "<|im_start|>assistant\n") belongs to the input.
            with_prompt = tokenizer.apply_chat_template(
                messages[:i], tokenize=False, add_generation_prompt=True
            )
            if with_prompt.startswith(rendered) and len(with_prompt) > len(rendered):
                out.append((with_prompt[len(rendered):], False))
                rendered = with_prompt
        full = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not full.startswith(rendered):  # template rewrites history: fall back to whole text
            return [(full, True)]
        out.append((full[len(rendered):], is_assistant))
        rendered = full
    return [(t, r) for t, r in out if t]


def prompt_text(user_text: str, tokenizer: Any, system: str | None = None, raw: bool = False) -> str:
    """The string a model is given at inference for one user turn."""
    if raw:
        return user_text
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user_text}
    ]
    if _has_chat_template(tokenizer):
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return "".join(t for t, _ in segments({"messages": messages}, tokenizer))


def tokenize_record(
    record: dict[str, Any], tokenizer: Any, max_length: int, train_on_inputs: bool = False
) -> tuple[list[int], list[int], bool]:
    """Token ids, labels (-100 where no loss is taken) and whether the example was truncated."""
    ids: list[int] = []
    labels: list[int] = []
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and getattr(tokenizer, "add_bos_token", False) and not _has_chat_template(tokenizer):
        ids.append(bos)
        labels.append(-100)
    for text, is_response in segments(record, tokenizer):
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids.extend(piece)
        labels.extend(piece if (is_response or train_on_inputs) else [-100] * len(piece))
    truncated = len(ids) > max_length
    return ids[:max_length], labels[:max_length], truncated


def record_prompt_and_reference(record: dict[str, Any]) -> tuple[list[dict[str, Any]], str] | None:
    """For evaluation: the conversation up to the last assistant turn, and that turn's text."""
    messages = record.get("messages")
    if not messages:
        return None
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] == "assistant":
            return messages[:i], str(messages[i].get("content") or "")
    return None


def conversation_prompt(messages: list[dict[str, Any]], tokenizer: Any) -> str:
    """The inference string for a multi-turn conversation ending before the assistant's reply."""
    if _has_chat_template(tokenizer):
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    text = "".join(t for t, _ in segments({"messages": messages}, tokenizer))
    if messages and messages[-1]["role"] == "assistant":
        text += "\n\n### User:\n"
    return text
