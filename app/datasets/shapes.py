"""Record shapes: recognising one parsed JSON record and converting it to the canonical form.

Canonical records (what training_scripts/prompting.py reads):
``{"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str}, ...]}`` or
``{"text": str}``.

A converter returns ``(record, prompt_chars, response_chars, problems)``: ``record`` is
None when an error was found; ``problems`` is None or a list of ``(field, code, message,
severity)``. Duplicates are found from the record's canonical bytes (report.fingerprint).
Converters are on the hot path: no objects per record beyond the canonical dict, and cheap
one-character ``in`` prechecks before any pattern search.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson

Problem = tuple[str | None, str, str, str]
Converted = tuple[dict[str, Any] | None, int, int, list[Problem] | None]

EOT_MARKERS = ("<|endoftext|>", "</s>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>")
_SLOT = re.compile(r"\{\{\s*[^{}\n]{1,80}?\s*\}\}")
TOOLS_PREFIX = "You have access to the following tools:\n"
TXT_INSTRUCTION = "Continue the following text:"
TXT_PROMPT_CHARS = 100

OPENAI_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant",
                "tool": "tool", "function": "tool"}
SHAREGPT_ROLES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
    "model": "assistant", "bard": "assistant", "bing": "assistant", "bot": "assistant",
    "system": "system", "function_call": "assistant", "tool_call": "assistant",
    "observation": "tool", "tool": "tool", "function": "tool", "tool_response": "tool",
}


def warn_text(text: str, field: str | None, trained: bool, problems: list[Problem]) -> None:
    """Warnings for one text: template slots anywhere, end-of-text markers in trained text."""
    if "{" in text and "{{" in text:
        m = _SLOT.search(text)
        if m:
            problems.append((field, "template_slot", (
                f"Contains the template slot {m.group(0)!r}: the model will learn to output it "
                "literally. Fill it in before uploading if that is not what you want."), "warning"))
    if trained and "<" in text:
        for marker in EOT_MARKERS:
            if marker in text:
                problems.append((field, "end_of_text_marker", (
                    f"Contains the end-of-text marker {marker!r}. The platform adds the model's own "
                    "end-of-sequence token; remove the marker or the model will learn to print it."),
                    "warning"))
                break


def _field_problem(obj: dict[str, Any], key: str, field: str, problems: list[Problem],
                   required: bool = True) -> None:
    v = obj.get(key)
    if v is None:
        if required:
            problems.append((field, "missing_field", f"Missing the '{field}' field; add it.", "error"))
    elif type(v) is not str:
        problems.append((field, "wrong_type", (
            f"'{field}' must be a string, got {type(v).__name__}."), "error"))
    elif required and (not v or v.isspace()):
        problems.append((field, "empty_field", f"'{field}' is empty; give it text or remove the record.",
                         "error"))


def _system(obj: dict[str, Any], problems: list[Problem]) -> str | None:
    s = obj.get("system")
    if s is None or s == "":
        return None
    if type(s) is not str:
        problems.append(("system", "wrong_type", f"'system' must be a string, got {type(s).__name__}.",
                         "error"))
        return None
    return s


def convert_pair(obj: dict[str, Any], pk: str, rk: str) -> Converted:
    p = obj.get(pk)
    r = obj.get(rk)
    if type(p) is str and type(r) is str and p and r and not p.isspace() and not r.isspace():
        problems: list[Problem] | None = None
        if "{" in p or "{" in r or "<" in r:
            problems = []
            warn_text(p, pk, False, problems)
            warn_text(r, rk, True, problems)
        if "system" not in obj:
            return ({"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": r}]},
                    len(p), len(r), problems)
        problems = problems or []
        system = _system(obj, problems)
        msgs = [{"role": "user", "content": p}, {"role": "assistant", "content": r}]
        plen = len(p)
        if system is not None:
            msgs.insert(0, {"role": "system", "content": system})
            plen += len(system) + 1  # as counted before (system, separator, prompt)
        return {"messages": msgs}, plen, len(r), problems or None
    problems = []
    _field_problem(obj, pk, pk, problems)
    _field_problem(obj, rk, rk, problems)
    return None, 0, 0, problems


def convert_prompt_response(obj: dict[str, Any]) -> Converted:
    return convert_pair(obj, "prompt", "response")


def convert_prompt_completion(obj: dict[str, Any]) -> Converted:
    return convert_pair(obj, "prompt", "completion")


def convert_alpaca(obj: dict[str, Any]) -> Converted:
    problems: list[Problem] = []
    ok = "output" in obj or "response" not in obj
    out_key = "output" if ok else "response"
    _field_problem(obj, "instruction", "instruction", problems)
    _field_problem(obj, "input", "input", problems, required=False)
    _field_problem(obj, out_key, out_key, problems)
    system = _system(obj, problems)
    history = obj.get("history") or []
    if not isinstance(history, list) or not all(
        isinstance(h, list) and len(h) == 2 and all(type(x) is str for x in h) for h in history
    ):
        problems.append(("history", "wrong_type", (
            "'history' must be a list of [instruction, response] string pairs."), "error"))
        history = []
    if problems:
        return None, 0, 0, problems
    instruction, inp, output = obj["instruction"], obj.get("input") or "", obj[out_key]
    user = instruction + "\n\n" + inp if inp else instruction
    msgs: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    for q, a in history:
        msgs.append({"role": "user", "content": q})
        msgs.append({"role": "assistant", "content": a})
    msgs.append({"role": "user", "content": user})
    msgs.append({"role": "assistant", "content": output})
    if "{" in user or "{" in output or "<" in output:
        warn_text(instruction, "instruction", False, problems)
        warn_text(inp, "input", False, problems)
        warn_text(output, out_key, True, problems)
    rlen = len(output) + sum(len(a) for _, a in history)
    plen = sum(len(m["content"]) for m in msgs) - rlen
    return {"messages": msgs}, plen, rlen, problems or None


def _tool_call_text(m: dict[str, Any]) -> str | None:
    calls = m.get("tool_calls") or ([m["function_call"]] if m.get("function_call") else None)
    if not calls:
        return None
    fns = [c.get("function", c) if isinstance(c, dict) else c for c in calls]
    return orjson.dumps(fns[0] if len(fns) == 1 else fns).decode()


def _content(m: dict[str, Any], ckey: str) -> Any:
    c = m.get(ckey)
    if type(c) is list:  # OpenAI content parts
        texts = [p.get("text") for p in c if isinstance(p, dict) and p.get("type") == "text"]
        if len(texts) == len(c) and all(type(t) is str for t in texts):
            return "".join(texts)  # type: ignore[arg-type]
    return c


def convert_chat(obj: dict[str, Any], lkey: str, rkey: str, ckey: str,
                 roles: dict[str, str]) -> Converted:
    turns = obj.get(lkey)
    if type(turns) is not list:
        code = "missing_field" if turns is None else "wrong_type"
        return None, 0, 0, [(lkey, code, f"'{lkey}' must be a list of turns.", "error")]
    problems: list[Problem] = []
    msgs: list[dict[str, str]] = []
    system = _system(obj, problems) if lkey == "conversations" else None
    tools = obj.get("tools") if lkey == "conversations" else None
    if tools and tools != "[]":
        tools_text = tools if type(tools) is str else orjson.dumps(tools).decode()
        system = (system + "\n\n" if system else "") + TOOLS_PREFIX + tools_text
    if system:
        msgs.append({"role": "system", "content": system})
    plen = rlen = 0
    for i, m in enumerate(turns):
        if type(m) is not dict:
            problems.append((f"{lkey}[{i}]", "wrong_type", "Each turn must be an object.", "error"))
            continue
        raw_role = m.get(rkey, m.get("role") if rkey == "from" else None)
        role = roles.get(raw_role) if type(raw_role) is str else None
        if role is None:
            f = f"{lkey}[{i}].{rkey}"
            if raw_role is None:
                problems.append((f, "missing_field", f"Turn {i} has no '{rkey}'; add one.", "error"))
            else:
                problems.append((f, "unknown_role", (
                    f"Unknown role {raw_role!r}; use one of: {', '.join(sorted(set(roles)))}."), "error"))
            continue
        ck = ckey if ckey in m or "content" not in m else "content"
        content = _content(m, ck)
        f = f"{lkey}[{i}].{ck}"
        if content is None and role == "assistant":
            content = _tool_call_text(m)
        if content is None:
            problems.append((f, "missing_field", f"Turn {i} has no '{ck}'; add the text.", "error"))
            continue
        if type(content) is not str:
            problems.append((f, "wrong_type", f"'{f}' must be a string, got {type(content).__name__}.",
                             "error"))
            continue
        if role != "system" and (not content or content.isspace()):
            problems.append((f, "empty_field", f"Turn {i} ({raw_role}) is empty; give it text.", "error"))
            continue
        if "{" in content or "<" in content:
            warn_text(content, f, role == "assistant", problems)
        if role == "assistant":
            rlen += len(content)
        else:
            plen += len(content)
        msgs.append({"role": role, "content": content})
    roles_seen = {m["role"] for m in msgs}
    if "user" not in roles_seen and not any(c == "error" for *_, c in problems):
        problems.append((lkey, "no_user_turn", "The conversation has no user turn; add one before "
                         "the assistant's reply.", "error"))
    if "assistant" not in roles_seen and not any(c == "error" for *_, c in problems):
        problems.append((lkey, "no_assistant_turn", "The conversation has no assistant turn, so there "
                         "is nothing to train on; add the reply.", "error"))
    if any(p[3] == "error" for p in problems):
        return None, 0, 0, problems
    if system:
        plen += len(system)
    return {"messages": msgs}, plen, rlen, problems or None


def convert_openai(obj: dict[str, Any]) -> Converted:
    return convert_chat(obj, "messages", "role", "content", OPENAI_ROLES)


def convert_sharegpt(obj: dict[str, Any]) -> Converted:
    lkey = "conversations" if "conversations" in obj else "messages"
    return convert_chat(obj, lkey, "from", "value", SHAREGPT_ROLES)


def convert_text(obj: dict[str, Any]) -> Converted:
    t = obj.get("text")
    if type(t) is str and t and not t.isspace():
        problems: list[Problem] | None = None
        if "{" in t or "<" in t:
            problems = []
            warn_text(t, "text", True, problems)
        return {"text": t}, 0, len(t), problems or None
    problems = []
    _field_problem(obj, "text", "text", problems)
    return None, 0, 0, problems


CONVERTERS: dict[str, Callable[[dict[str, Any]], Converted]] = {
    "prompt_response": convert_prompt_response,
    "prompt_completion": convert_prompt_completion,
    "alpaca": convert_alpaca,
    "openai_chat": convert_openai,
    "sharegpt": convert_sharegpt,
    "text": convert_text,
}

EXPECTED_FIELDS = {
    "prompt_response": "prompt + response",
    "prompt_completion": "prompt + completion",
    "alpaca": "instruction + input (optional) + output",
    "openai_chat": "messages: [{role, content}]",
    "sharegpt": "conversations: [{from, value}]",
    "text": "text",
}


def shape_of(obj: dict[str, Any], loose: bool = False) -> str | None:
    """The record shape `obj` has (all required keys present), or by key presence when `loose`."""
    if "messages" in obj:
        turns = obj["messages"]
        if type(turns) is list and turns and type(turns[0]) is dict and "from" in turns[0]:
            return "sharegpt"
        return "openai_chat"
    if "conversations" in obj:
        return "sharegpt"
    if "instruction" in obj and ("output" in obj or "response" in obj or loose):
        return "alpaca"
    if "prompt" in obj:
        if "completion" in obj:
            return "prompt_completion"
        if "response" in obj or loose:
            return "prompt_response"
    if "text" in obj:
        return "text"
    return None


def txt_record(block: str) -> tuple[dict[str, Any], int, int, str]:
    """A plain-text block as a training record: its first 100 characters as the input, the rest as
    the output."""
    head, rest = block[:TXT_PROMPT_CHARS], block[TXT_PROMPT_CHARS:]
    user = TXT_INSTRUCTION + "\n\n" + head
    return ({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": rest}]},
            len(user), len(rest), block)

