"""The request schema: prompt+images or OpenAI messages, sampling fields, and errors that name the field."""

import pytest
from PIL import Image

from vlray.schema import GenerationRequest, GenerationResult, RequestError, parse_request, request_id_of


def test_prompt_with_images_of_every_source_kind():
    image = Image.new("RGB", (8, 8))
    request = parse_request({"id": 7, "prompt": "hi", "images": ["a.png", b"\x89PNG", image], "stop": "END"})
    assert request.id == "7"
    assert request.images[1] == b"\x89PNG" and request.images[2] is image
    assert request.stop == ["END"]
    assert request.temperature is None and request.is_greedy  # unset: the engine's defaults decide


def test_openai_messages():
    request = parse_request({"id": "m", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                                     {"type": "text", "text": "What?"}]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": [{"type": "image_url", "image_url": "file:///tmp/x.png"}]},
    ], "max_tokens": 5, "temperature": 0.7, "top_p": 0.9, "seed": 1})
    assert request.messages[1].content[0].image_url.url.startswith("data:")
    assert request.messages[3].content[0].image_url.url == "file:///tmp/x.png"
    assert (request.max_tokens, request.temperature, request.top_p, request.seed) == (5, 0.7, 0.9, 1)


@pytest.mark.parametrize("raw, fragment, kind", [
    ({"prompt": "no id"}, "id: Field required", "missing_id"),
    ({"id": "x"}, "needs `prompt` or `messages`", "invalid_request"),
    ({"id": "x", "prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "not both", "invalid_request"),
    ({"id": "x", "prompt": "a", "temperature": -1}, "temperature", "invalid_request"),
    ({"id": "x", "prompt": "a", "max_tokens": 0}, "max_tokens", "invalid_request"),
    ({"id": "x", "prompt": "a", "top_p": 0}, "top_p", "invalid_request"),
    ({"id": "x", "messages": [{"role": "robot", "content": "b"}]}, "role", "invalid_request"),
    ({"id": "x", "messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "content", "invalid_request"),
    ({"id": "x", "prompt": "a", "stop": [""]}, "must not be empty", "invalid_request"),
    ({"id": "x", "prompt": "a", "top_k": -2}, "top_k", "invalid_request"),
    ({"id": "x", "prompt": "a", "min_p": 1.5}, "min_p", "invalid_request"),
    ({"id": "x", "prompt": "a", "presence_penalty": 2.5}, "presence_penalty", "invalid_request"),
    ({"id": "x", "prompt": "a", "frequency_penalty": -3}, "frequency_penalty", "invalid_request"),
    ({"id": "x", "prompt": "a", "repetition_penalty": 0}, "repetition_penalty", "invalid_request"),
    ({"id": "x", "prompt": "a", "logprobs": 21}, "logprobs", "invalid_request"),
    ({"id": "x", "prompt": "a", "logprobs": -1}, "logprobs", "invalid_request"),
    ({"id": "x", "prompt": "a", "presence_penalty": 10**400}, "presence_penalty", "invalid_request"),
])
def test_bad_requests_name_the_problem(raw, fragment, kind):
    with pytest.raises(RequestError) as info:
        parse_request(raw)
    assert fragment in str(info.value)
    assert info.value.kind == kind


def test_non_mapping_is_refused():
    with pytest.raises(RequestError, match="mapping"):
        parse_request(["not", "a", "request"])


def test_failed_result_and_ids():
    result = GenerationResult.failed("r1", RequestError("image file not found: x", kind="image_not_found"))
    assert (result.finish_reason, result.error_kind, result.ok) == ("error", "image_not_found", False)
    assert request_id_of({"id": 3}) == "3" and request_id_of({}) is None
    assert request_id_of(GenerationRequest(id="g", prompt="p")) == "g"


def test_sampling_fields_unset_set_and_bounded():
    request = parse_request({"id": "x", "prompt": "a"})
    assert all(getattr(request, f) is None for f in (
        "temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty",
        "logprobs", "response_format"))
    request = parse_request({"id": "x", "prompt": "a", "top_k": -1, "min_p": 0.05, "presence_penalty": 1.5,
                             "frequency_penalty": -2, "repetition_penalty": 1.05, "logprobs": 0,
                             "top_k_extra": None})
    assert (request.top_k, request.min_p, request.presence_penalty, request.frequency_penalty) == (0, 0.05, 1.5, -2.0)
    assert (request.repetition_penalty, request.logprobs) == (1.05, 0)
    assert parse_request({"id": "x", "prompt": "a", "top_k": 10**30}).top_k == 2**31 - 1  # huge: every token kept


@pytest.mark.parametrize("field", ["min_p", "presence_penalty", "frequency_penalty", "repetition_penalty"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_inf_sampling_fields_are_refused(field, value):
    with pytest.raises(RequestError, match=field):
        parse_request({"id": "x", "prompt": "a", field: value})
