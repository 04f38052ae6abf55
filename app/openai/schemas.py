"""The OpenAI request fields this API accepts; any other field is refused by name (400).

Supported: model, messages | prompt, max_tokens, max_completion_tokens, temperature, top_p, stop,
seed, n (1 only), stream, stream_options.include_usage, user (ignored); presence_penalty and
frequency_penalty only as 0, logprobs only as false. `temperature` left out means greedy decoding.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_TOKENS = 4096  # the model server's own limit
DEFAULT_MAX_TOKENS = 256


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def plain(self) -> dict[str, str]:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(min_length=1, max_length=255)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    temperature: float | None = Field(None, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    stop: str | list[str] | None = Field(None, max_length=8)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    n: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: bool | None = None

    @field_validator("n")
    @classmethod
    def _one(cls, v: int | None) -> int | None:
        if v not in (None, 1):
            raise ValueError("only n=1 is supported")
        return v

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _zero(cls, v: float | None) -> float | None:
        if v not in (None, 0, 0.0):
            raise ValueError("only 0 is supported")
        return v

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, v: bool | None) -> bool | None:
        if v:
            raise ValueError("logprobs are not supported")
        return v

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        for s in [v] if isinstance(v, str) else (v or []):
            if not 1 <= len(s) <= 64:
                raise ValueError("each stop sequence must be 1 to 64 characters")
        return v

    def limit(self) -> int:
        return self.max_tokens or DEFAULT_MAX_TOKENS

    def parameters(self) -> dict[str, Any]:
        """The model server's generation parameters."""
        p: dict[str, Any] = {"max_new_tokens": self.limit(), "return_full_text": False}
        for k in ("temperature", "top_p", "stop", "seed"):
            if getattr(self, k) is not None:
                p[k] = getattr(self, k)
        return p

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Common):
    messages: list[Message] = Field(min_length=1, max_length=512)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)

    @model_validator(mode="after")
    def _completion_tokens(self) -> ChatCompletionRequest:
        if self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self

    def payload(self) -> dict[str, Any]:
        return {"messages": [m.plain() for m in self.messages], "parameters": self.parameters()}


class CompletionRequest(_Common):
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and len(v) != 1:
            raise ValueError("give one prompt (a string)")
        if not (v if isinstance(v, str) else v[0]):
            raise ValueError("must not be empty")
        return v

    def payload(self) -> dict[str, Any]:
        text = self.prompt if isinstance(self.prompt, str) else self.prompt[0]
        return {"inputs": text, "parameters": {**self.parameters(), "raw": True}}


# The answers, as documented in /openapi.json (the routes build them as dicts; tests/api checks they conform).
class OpenAIModel(BaseModel):
    id: str = Field(description="the name to pass as `model`: an endpoint's model_name or an attached adapter's")
    object: Literal["model"]
    created: int
    owned_by: str
    endpoint: str = Field(description="the endpoint that serves it")
    parent: str | None = Field(description="an adapter's base-model endpoint's model")
    base_model: str | None


class OpenAIModelList(BaseModel):
    object: Literal["list"]
    data: list[OpenAIModel]


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str
    refusal: None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: CompletionUsage
    system_fingerprint: None


class TextChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"]
    logprobs: None


class TextCompletion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[TextChoice]
    usage: CompletionUsage
    system_fingerprint: None
