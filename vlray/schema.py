"""The one request and result schema of vlray: Python API, batch rows and the server all use it.

A request is either `prompt` (+ `images`: one user turn, images first, then the text) or `messages` in OpenAI
chat form. Sampling fields follow OpenAI's names. A result always comes back, one per request: a bad request
gets `finish_reason="error"` and an `error` that says what was wrong, never an exception that sinks its batch.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vlray.inputs.prepared_request import BOUNDED_FIELDS, GREEDY_TEMPERATURE_BELOW, MAX_LOGPROBS, bounded_value

ImageSource = Union[str, bytes, Image.Image]
"""A local path, a file:// URL, a data: base64 URL, raw encoded bytes, or a PIL image."""

FinishReason = Literal["stop", "length", "error"]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ImageURL(BaseModel):
    model_config = ConfigDict(extra="allow")
    url: str = Field(description="file:// or data: URL, or a local path (http(s) only where the server allows it)")


class ImageURLPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["image_url"]
    image_url: ImageURL

    @field_validator("image_url", mode="before")
    @classmethod
    def _accept_bare_string(cls, value: Any) -> Any:
        # Some clients send {"image_url": "data:..."} instead of {"image_url": {"url": "data:..."}}.
        return {"url": value} if isinstance(value, str) else value


ContentPart = Union[TextPart, ImageURLPart]


class ToolCallFunction(BaseModel):
    name: str = Field(min_length=1)
    arguments: str = Field(description="The call's arguments as JSON text, as OpenAI sends them.")


class ToolCall(BaseModel):
    """An assistant's earlier call of a tool, in OpenAI's shape."""

    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = Field(
        default=None, description="None only in an assistant turn that calls tools.")
    tool_calls: list[ToolCall] | None = Field(default=None, description="Assistant turns: the tools it called.")
    tool_call_id: str | None = Field(default=None, description="Tool turns: the call this is the result of.")

    @model_validator(mode="after")
    def _content_where_needed(self) -> "ChatMessage":
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs content (only an assistant turn with tool_calls may "
                             "leave it out)")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id it answers")
        return self


class GenerationRequest(BaseModel):
    """One generation: `prompt` (+ `images`) or `messages`, and sampling settings."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="allow")

    id: str = Field(min_length=1, description="Caller's id, echoed in the result.")
    prompt: str | None = Field(default=None, description="User text; with `images`, one user turn.")
    images: list[ImageSource] = Field(default_factory=list, description="Images shown before the prompt.")
    messages: list[ChatMessage] | None = Field(default=None, description="OpenAI-style chat instead of prompt.")
    max_tokens: int | None = Field(default=None, ge=1, description="New tokens at most; None: engine default.")
    # Sampling: None leaves a field unset, and it takes the engine's default (the model's generation_config.json
    # by default, EngineConfig.sampling_defaults), as vLLM does.
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, allow_inf_nan=False,
                                      description=f"0 is greedy decoding (so is anything under "
                                                  f"{GREEDY_TEMPERATURE_BELOW:g}).")
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, allow_inf_nan=False,
                                description="Nucleus mass; tiny values keep the most likely token.")
    top_k: int | None = Field(default=None, ge=-1, description="Keep the k most likely tokens; 0 or -1: off.")
    min_p: float | None = Field(default=None, ge=0.0, le=1.0, allow_inf_nan=False,
                                description="Drop tokens less likely than min_p times the most likely one.")
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0, allow_inf_nan=False,
                                           description="Subtracted from the logit of every token generated so far.")
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0, allow_inf_nan=False,
                                            description="Times its count, subtracted from each generated token's "
                                                        "logit.")
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=2.0, allow_inf_nan=False,
                                             description="Divides (positive) or multiplies (negative) the logits "
                                                         "of the prompt's and the generated tokens; 1: off.")
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS,
                                 description="Return each token's logprob and the k most likely (0..20).")
    response_format: dict[str, Any] | None = Field(
        default=None, description='OpenAI\'s: {"type": "text"}, {"type": "json_object"} or {"type": "json_schema", '
                                  '"json_schema": {"name": ..., "schema": {...}}}.')
    seed: int | None = Field(default=None, description="Same seed, same sampled tokens; any integer (reduced "
                                                       "modulo 2**64, the generator's range).")
    stop: list[str] = Field(default_factory=list, description="Strings that end generation (not included).")
    tools: list[dict[str, Any]] | None = Field(
        default=None, description="OpenAI function tools, rendered through the model's chat template (`tools=`).")
    chat_template: bool = Field(
        default=True, description="False: `prompt` is tokenised as it is, with no chat template and no images "
                                  "(/v1/completions).")

    @field_validator("id", mode="before")
    @classmethod
    def _id_as_string(cls, value: Any) -> Any:
        # Tables often carry integer ids; they are still ids.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_list(cls, value: Any) -> Any:
        if value is None:
            return []
        return [value] if isinstance(value, str) else value

    @field_validator("images", mode="before")
    @classmethod
    def _images_as_list(cls, value: Any) -> Any:
        if value is None:
            return []
        return [value] if isinstance(value, (str, bytes, Image.Image)) else value

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> "GenerationRequest":
        if self.messages is not None and (self.prompt is not None or self.images):
            raise ValueError("give either `prompt` (with `images`) or `messages`, not both")
        if self.messages is None and self.prompt is None:
            raise ValueError("a request needs `prompt` or `messages`")
        if not self.chat_template and (self.messages is not None or self.images):
            raise ValueError("chat_template=False takes a `prompt` alone: no `messages`, no `images`")
        if any(s == "" for s in self.stop):
            raise ValueError("`stop` strings must not be empty")
        for name in BOUNDED_FIELDS:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, bounded_value(name, value))
        return self

    @property
    def is_greedy(self) -> bool:
        """Unset temperature counts as greedy here (the engine's defaults may say otherwise)."""
        return not self.temperature


class TokenLogprob(BaseModel):
    """One generated token's log-probability under the model's raw logits of its step, and the most likely."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = Field(default_factory=list,
                                         description="The k most likely tokens of that step, most likely first.")


class GenerationResult(BaseModel):
    """What came of one request."""

    id: str | None
    text: str = ""
    finish_reason: FinishReason
    num_prompt_tokens: int = 0
    num_generated_tokens: int = 0
    error: str | None = None
    error_kind: str | None = Field(default=None, description="A short class of the error, for summaries.")
    token_ids: list[int] = Field(default_factory=list, description="Generated token ids, EOS included.")
    logprobs: list[TokenLogprob] | None = Field(default=None, description="One per generated token, aligned with "
                                                                          "token_ids (when the request asked).")

    @classmethod
    def failed(cls, request_id: str | None, error: "RequestError | str", num_prompt_tokens: int = 0
               ) -> "GenerationResult":
        kind = error.kind if isinstance(error, RequestError) else "internal"
        return cls(id=request_id, finish_reason="error", error=str(error), error_kind=kind,
                   num_prompt_tokens=num_prompt_tokens)

    @property
    def ok(self) -> bool:
        return self.finish_reason != "error"


class RequestError(ValueError):
    """A problem with one request's input; `kind` classes it (invalid_request, image_not_found, ...)."""

    def __init__(self, message: str, kind: str = "invalid_request") -> None:
        super().__init__(message)
        self.kind = kind


def parse_request(raw: GenerationRequest | dict[str, Any]) -> GenerationRequest:
    """Validate one request, turning pydantic's report into a RequestError that names the fields."""
    if isinstance(raw, GenerationRequest):
        return raw
    if not isinstance(raw, dict):
        raise RequestError(f"a request must be a mapping or GenerationRequest, got {type(raw).__name__}")
    try:
        return GenerationRequest.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "request"
            problems.append(f"{where}: {err['msg']}")
        kind = "missing_id" if any(e["loc"] == ("id",) for e in exc.errors()) else "invalid_request"
        raise RequestError("invalid request: " + "; ".join(problems), kind=kind) from None


def request_id_of(raw: Any) -> str | None:
    """Best-effort id of a request that may not validate (so its error result still carries it)."""
    if isinstance(raw, GenerationRequest):
        return raw.id
    if isinstance(raw, dict) and raw.get("id") not in (None, ""):
        return str(raw["id"])
    return None
