"""SamplingParams bounded at the boundary (every field a client sends), response_format turned into a
StructuredOutput, and the model folder's generation_config.json as the defaults of unset fields."""

import dataclasses
import json
import math

import numpy as np
import pytest

from vlray.config import EngineConfig
from vlray.inputs.prepared_request import MAX_TOP_K, SamplingParams, StructuredOutput
from vlray.inputs.preprocessor import structured_output_of
from vlray.model.generation_defaults import sampling_defaults
from vlray.model.loader import load_preprocessor
from vlray.schema import RequestError


@pytest.mark.parametrize("field, value", [
    ("top_k", -2), ("min_p", -0.1), ("min_p", 1.01), ("presence_penalty", 2.01), ("frequency_penalty", -2.01),
    ("repetition_penalty", 0.0), ("repetition_penalty", -1.0), ("repetition_penalty", 2.5), ("logprobs", 21),
    ("logprobs", -1), ("min_p", math.nan), ("presence_penalty", math.inf), ("repetition_penalty", -math.inf),
    ("frequency_penalty", 10**400), ("top_k", 1.5), ("logprobs", True), ("min_p", "0.1"),
])
def test_bad_values_are_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(max_tokens=1, **{field: value})


def test_edge_values_are_kept_or_made_computable():
    params = SamplingParams(max_tokens=1, top_k=10**100, min_p=1.0, presence_penalty=-2, frequency_penalty=2,
                            repetition_penalty=2, logprobs=20, seed=-1)
    assert params.top_k == MAX_TOP_K and params.min_p == 1.0 and params.logprobs == 20
    assert (params.presence_penalty, params.frequency_penalty, params.repetition_penalty) == (-2.0, 2.0, 2.0)
    assert params.seed == 2**64 - 1 and params.has_penalties and params.has_filters
    numpy_values = SamplingParams(max_tokens=1, temperature=np.float32(0.5), seed=np.int64(-1), top_k=np.int32(3))
    assert (numpy_values.temperature, numpy_values.seed, numpy_values.top_k) == (0.5, 2**64 - 1, 3)
    assert type(numpy_values.seed) is int and type(numpy_values.temperature) is float
    assert SamplingParams(max_tokens=1, repetition_penalty=5e-324).repetition_penalty == 1e-2  # floored, not inf
    plain = SamplingParams(max_tokens=1, top_k=-1)
    assert plain.top_k == 0 and not plain.has_penalties and not plain.has_filters


def test_a_batch_rows_json_round_trips():
    params = SamplingParams(max_tokens=3, top_k=5, structured=StructuredOutput("json_schema", '{"type": "object"}'))
    again = SamplingParams(**json.loads(json.dumps(dataclasses.asdict(params))))
    assert again == params and isinstance(again.structured, StructuredOutput)


@pytest.mark.parametrize("response_format, expected", [
    (None, None), ({"type": "text"}, None), ({"type": "json_object"}, StructuredOutput("json_object")),
    ({"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "object"}, "strict": True}},
     StructuredOutput("json_schema", '{"type": "object"}')),
])
def test_response_format_becomes_structured_output(response_format, expected):
    assert structured_output_of(response_format) == expected


@pytest.mark.parametrize("response_format", [
    {"type": "xml"}, {}, {"type": "json_schema"}, {"type": "json_schema", "json_schema": {"name": "p"}},
    {"type": "json_schema", "json_schema": {"schema": [1, 2]}}, {"type": "json_schema", "json_schema": "x"},
    {"type": "json_schema", "json_schema": {"schema": {"maximum": math.nan}}},
])
def test_bad_response_format_is_a_request_error_naming_it(response_format):
    with pytest.raises(RequestError, match="response_format"):
        structured_output_of(response_format)


def _model_folder(tmp_path, tiny_model_dir, generation_config):
    folder = tmp_path / "model"
    folder.mkdir()
    for item in tiny_model_dir.iterdir():
        if item.name != "generation_config.json":
            (folder / item.name).symlink_to(item)
    if generation_config is not None:
        (folder / "generation_config.json").write_text(json.dumps(generation_config))
    return folder


def test_model_defaults_apply_to_unset_fields_only(tmp_path, tiny_model_dir):
    folder = _model_folder(tmp_path, tiny_model_dir, {"do_sample": True, "temperature": 0.7, "top_k": 20,
                                                      "top_p": 0.8, "repetition_penalty": 1.0, "max_length": 9})
    preprocessor = load_preprocessor(EngineConfig(model=str(folder), device_profile="cpu"))
    unset = preprocessor.prepare({"id": "a", "prompt": "Hello"}).sampling
    assert (unset.temperature, unset.top_k, unset.top_p, unset.min_p) == (0.7, 20, 0.8, 0.0)
    chosen = preprocessor.prepare({"id": "b", "prompt": "Hello", "temperature": 0, "top_k": 0, "min_p": 0.1}).sampling
    assert (chosen.temperature, chosen.top_k, chosen.top_p, chosen.min_p) == (0.0, 0, 0.8, 0.1)
    vlray_defaults = load_preprocessor(EngineConfig(model=str(folder), device_profile="cpu",
                                                    sampling_defaults="vlray"))
    plain = vlray_defaults.prepare({"id": "c", "prompt": "Hello"}).sampling
    assert (plain.temperature, plain.top_k, plain.top_p, plain.repetition_penalty) == (0.0, 0, 1.0, 1.0)


@pytest.mark.parametrize("generation_config, expected", [
    (None, {}),
    ({"do_sample": False, "temperature": 0.7, "top_k": 20}, {"temperature": 0.0, "top_k": 20}),
    ({"do_sample": True}, {"temperature": 1.0}),
    ({"temperature": 0.6, "top_p": 0.95, "min_p": 0.0, "eos_token_id": 2}, {"temperature": 0.6, "top_p": 0.95,
                                                                           "min_p": 0.0}),
    ({"temperature": math.inf, "top_p": 3.0, "top_k": 5}, {"top_k": 5}),  # unusable values are ignored, not fatal
])
def test_generation_config_fields(tmp_path, tiny_model_dir, generation_config, expected):
    folder = _model_folder(tmp_path, tiny_model_dir, generation_config)
    assert sampling_defaults(folder) == expected
    assert sampling_defaults(folder, "vlray") == {}


def test_the_tiny_model_is_greedy_by_default(tiny_model_dir):
    assert sampling_defaults(tiny_model_dir) == {"temperature": 0.0}


def test_the_preprocessor_refuses_a_bad_response_format_and_keeps_a_good_one(tiny_config):
    preprocessor = load_preprocessor(tiny_config)
    with pytest.raises(RequestError, match="response_format"):
        preprocessor.prepare({"id": "a", "prompt": "Hi", "response_format": {"type": "json_schema",
                                                                            "json_schema": {"schema": "x"}}})
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    prepared = preprocessor.prepare({"id": "b", "prompt": "Hi", "logprobs": 2, "response_format": {
        "type": "json_schema", "json_schema": {"name": "s", "schema": schema}}})
    assert prepared.sampling.structured == StructuredOutput("json_schema", json.dumps(schema))
    assert prepared.sampling.logprobs == 2
