"""Errors as an OpenAI-compatible server returns them: an HTTP status and {"error": {message, type, param,
code}}. Every client mistake becomes a 4xx here, with a message that names the problem."""

from __future__ import annotations

import re

from pydantic import ValidationError

from vlray.schema import RequestError
from vlray.serving.protocol import ErrorDetail, ErrorResponse

_NAMED = re.compile(r"^([a-z_]+(?:\.[a-z0-9_]+)*): ")

# RequestError kinds whose OpenAI code differs from the kind's own name.
_CODES = {"context_overflow": "context_length_exceeded"}


class APIError(Exception):
    """An error answer: status, OpenAI error fields and extra headers (Retry-After)."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.detail = ErrorDetail(message=message, type=type, param=param, code=code)
        self.headers = headers or {}

    def body(self) -> dict:
        return ErrorResponse(error=self.detail).model_dump()


def error_from_request(exc: RequestError, param: str = "messages") -> APIError:
    """A request the engine refused (bad image, prompt over the context, a schema that does not compile, ...):
    400, naming the field it came from."""
    return APIError(400, str(exc), param=param, code=_CODES.get(exc.kind, exc.kind))


def error_from_validation(exc: ValidationError) -> APIError:
    """A body that is not JSON, or not a valid request: 400, naming the first field at fault."""
    errors = exc.errors(include_url=False)
    if any(e["type"] == "json_invalid" for e in errors):
        return APIError(400, f"the request body is not valid JSON: {errors[0]['msg']}", code="invalid_json")
    if any(e["type"] == "model_type" and not e["loc"] for e in errors):
        return APIError(400, "the request body must be a JSON object", code="invalid_request")
    # A union (string or list of parts) fails once per branch; the deepest failures say most.
    depth = max(len(e["loc"]) for e in errors)
    deepest = [e for e in errors if len(e["loc"]) == depth]
    param = _param(deepest[0]["loc"])
    messages = list(dict.fromkeys(e["msg"].removeprefix("Value error, ") for e in deepest))
    # A check across fields (a model validator) has no location of its own: its message starts with the field.
    named = _NAMED.match(messages[0])
    if named:
        param = ".".join(filter(None, (param, named.group(1))))
        messages = [m.removeprefix(named.group(0)) for m in messages]
    return APIError(400, f"{param or 'request'}: {'; or '.join(messages)}", param=param or None,
                    code="invalid_request")


def _param(loc: tuple) -> str:
    # Drop the labels pydantic gives union branches ('str', 'list[...]'): they are types, not fields.
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and (p == "str" or "[" in p)))
