"""Structured output on the tiny random model, whose weights never write JSON by themselves: with a
response_format the engine's output parses (json_object) and validates against the schema (json_schema), greedy
and sampled; a schema that cannot be used fails its own request only; unconstrained neighbours keep their tokens."""

import json

import jsonschema
import pytest

from vlray.llm import LLM

SCHEMA = {
    "type": "object",
    # A pattern, not maxLength: xgrammar 0.2.9 lets control characters (invalid in JSON) into strings bounded by
    # maxLength; a bounded string is needed here because random weights would never close a free one.
    "properties": {"name": {"type": "string", "pattern": "^[A-Za-z ]{1,12}$"},
                   "age": {"type": "integer", "minimum": 0, "maximum": 150}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}
PROMPT = {"id": "p", "prompt": "Give the name and age of a person as JSON.", "max_tokens": 160}


@pytest.fixture(scope="module")
def llm(tiny_loaded, tiny_config):
    return LLM(tiny_config.with_updates(backend="engine", kv_cache_bytes=16 << 20), loaded=tiny_loaded)


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def test_without_a_grammar_the_tiny_model_writes_no_json(llm):
    # What makes the tests below able to fail: the same prompts, unconstrained, are not JSON.
    results = llm.generate([PROMPT, {**PROMPT, "id": "s", "temperature": 1.0, "seed": 1}])
    assert not any(_parses(r.text) for r in results)


def test_json_schema_output_validates(llm):
    result = llm.generate([{**PROMPT, "response_format": JSON_SCHEMA}])[0]
    assert result.finish_reason == "stop", result.text
    jsonschema.validate(json.loads(result.text), SCHEMA)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampled_json_schema_output_validates(llm, seed):
    request = {**PROMPT, "response_format": JSON_SCHEMA, "temperature": 1.0, "top_p": 0.95, "seed": seed}
    result = llm.generate([request])[0]
    assert result.finish_reason == "stop", result.text
    jsonschema.validate(json.loads(result.text), SCHEMA)


def test_json_object_outputs_are_objects_or_objects_begun(llm):
    # Random weights write long keys, so some samples reach max_tokens: what they wrote is still the start of an
    # object, and every sample that ends is a whole one (the seeds are fixed: the same outputs every run).
    prompts = ["Give the name and age of a person as JSON.", "Describe the image.", "List three colors.",
               "What is the price?"]
    requests = [{"id": f"{i}-{seed}", "prompt": prompt, "max_tokens": 120, "response_format": {"type": "json_object"},
                 "temperature": 1.0, "seed": seed} for i, prompt in enumerate(prompts) for seed in range(4)]
    results = llm.generate(requests)
    ended = [r for r in results if r.finish_reason == "stop"]
    assert ended, [r.text for r in results]
    for result in ended:
        assert isinstance(json.loads(result.text), dict), result.text
    for result in results:
        assert result.text.startswith("{"), result.text


def test_too_few_tokens_end_with_length_and_no_crash(llm):
    result = llm.generate([{**PROMPT, "response_format": JSON_SCHEMA, "max_tokens": 3}])[0]
    assert result.finish_reason == "length" and result.num_generated_tokens == 3
    assert result.text.startswith("{")


def test_a_bad_schema_fails_alone_and_neighbours_keep_their_tokens(llm):
    alone = llm.generate([PROMPT])[0]
    bad = {**PROMPT, "id": "bad",
           "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}}
    constrained = {**PROMPT, "id": "json", "response_format": JSON_SCHEMA}
    results = llm.generate([bad, PROMPT, constrained])
    assert results[0].finish_reason == "error" and "response_format" in results[0].error
    assert results[1].token_ids == alone.token_ids
    jsonschema.validate(json.loads(results[2].text), SCHEMA)


def test_greedy_constrained_output_is_the_same_alone_and_in_a_batch(llm):
    constrained = {**PROMPT, "id": "json", "response_format": JSON_SCHEMA}
    alone = llm.generate([constrained])[0]
    batched = llm.generate([{**PROMPT, "id": "other", "prompt": "Say something else."}, constrained])[1]
    assert batched.token_ids == alone.token_ids
