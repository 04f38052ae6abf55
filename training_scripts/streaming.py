"""Token-by-token text for a streamed request (serve.py).

`TextSink` is a row's sink in modeling's batched generation: it is called on the generate thread
with each new token id of its row and hands text deltas to `emit`. It applies the same rules as the
final result (end of sequence, the row's max_new_tokens, stop sequences): text that may still turn
out to be the start of a stop sequence, or an incomplete UTF-8 character, is held back until the
next token decides it. `rest()` gives what the final result adds to what was streamed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class TextSink:
    def __init__(self, tokenizer: Any, eos_ids: set[int], max_new_tokens: int, stop: tuple[str, ...],
                 emit: Callable[[str], None]) -> None:
        self.tokenizer, self.eos_ids, self.limit, self.stop, self.emit = tokenizer, eos_ids, max_new_tokens, stop, emit
        self.tokens: list[int] = []
        self.sent = ""
        self.done = False

    def __call__(self, token: int) -> None:
        if self.done:
            return  # padding after the row finished
        if token in self.eos_ids:
            self.done = True
            return
        self.tokens.append(token)
        self.done = len(self.tokens) >= self.limit
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        cuts = [text.find(s) for s in self.stop if s in text]
        if cuts:
            text, self.done = text[: min(cuts)], True
        else:
            text = text[: len(text) - self._held_back(text)]
        if text.startswith(self.sent) and len(text) > len(self.sent):
            delta, self.sent = text[len(self.sent):], text
            self.emit(delta)

    def _held_back(self, text: str) -> int:
        """Characters at the end of `text` not safe to send yet."""
        n = len(text) - len(text.rstrip("\ufffd"))  # a multi-byte character not complete yet
        body = text[: len(text) - n]
        for s in self.stop:
            for k in range(min(len(s) - 1, len(body)), 0, -1):
                if body.endswith(s[:k]):
                    n = max(n, len(text) - len(body) + k)
                    break
        return n

    def rest(self, final_text: str) -> str:
        """What the finished result holds beyond the text already streamed."""
        return final_text[len(self.sent):] if final_text.startswith(self.sent) else ""
