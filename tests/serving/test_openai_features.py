"""What vLLM's clients send, through the official `openai` client, against the OpenAI app on the tiny model (the
continuous engine, in this process): sampling fields and penalties, tools rendered by the chat template, tool and
tool_calls history, /v1/completions, n, logprobs and json_schema, streamed and not."""

import json

import httpx
import openai
import pytest

from tests.serving.conftest import served
from vlray.engine.async_engine import AsyncEngine
from vlray.inputs.image_policy import ImagePolicy
from vlray.inputs.preprocessor import RequestPreprocessor
from vlray.llm import LLM
from vlray.serving.app import build_openai_app
from vlray.serving.chat_service import ChatService

MODEL = "tiny"

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    # An enum, so that random weights under the grammar end the string (a free one could run to max_tokens).
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
                   "required": ["city"], "additionalProperties": False}}}
USER = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def llm(tiny_loaded, tiny_config):
    return LLM(tiny_config, loaded=tiny_loaded)


@pytest.fixture(scope="module")
def service(llm):
    loaded, config = llm.loaded, llm.config
    preprocessor = RequestPreprocessor(loaded.processor, loaded.max_model_len, config.default_max_tokens,
                                       config.max_input_pixels, image_policy=ImagePolicy.for_server())
    service = ChatService(preprocessor, AsyncEngine(llm.backend, llm.stats, config.max_batch_size), MODEL)
    yield service
    service.engine.close()


@pytest.fixture(scope="module")
def base_url(service):
    with served(build_openai_app(service)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120) as client:
        yield client


def _prompt_tokens(service, **request):
    return service.preprocessor.prepare({"id": "x", **request}).num_prompt_tokens


def test_vllm_sampling_fields_are_accepted_streamed_and_not(client):
    fields = dict(temperature=0.7, top_p=0.8, presence_penalty=1.5, frequency_penalty=0.5, seed=3,
                  extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1})
    whole = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=6, **fields)
    assert whole.choices[0].finish_reason in ("stop", "length") and whole.usage.completion_tokens >= 1
    chunks = list(client.chat.completions.create(model=MODEL, messages=USER, max_tokens=6, stream=True, **fields))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content


def test_a_repetition_penalty_changes_greedy_output(client):
    plain = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=16, temperature=0)
    penalised = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=16, temperature=0,
                                               extra_body={"repetition_penalty": 1.9})
    # Random weights repeat themselves under greedy decoding: a strong penalty must change the answer.
    assert penalised.choices[0].message.content != plain.choices[0].message.content


@pytest.mark.parametrize("penalty", ["presence_penalty", "frequency_penalty"])
def test_presence_and_frequency_penalties_change_greedy_output_and_seeded_sampling_repeats(client, penalty):
    args = dict(model=MODEL, messages=USER, max_tokens=24, temperature=0)
    plain = client.chat.completions.create(**args).choices[0].message.content
    # Greedy random weights loop: a penalty on the tokens already generated must break the loop.
    assert client.chat.completions.create(**args, **{penalty: 2.0}).choices[0].message.content != plain
    sampled = dict(args, temperature=1.0, seed=11, **{penalty: 1.5})
    assert (client.chat.completions.create(**sampled).choices[0].message.content
            == client.chat.completions.create(**sampled).choices[0].message.content)


def test_tools_are_rendered_by_the_template_unless_tool_choice_is_none(client, service):
    without = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=2)
    with_tools = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=2, tools=[WEATHER])
    none = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=2, tools=[WEATHER],
                                          tool_choice="none")
    assert with_tools.usage.prompt_tokens == _prompt_tokens(service, messages=USER, tools=[WEATHER])
    assert with_tools.usage.prompt_tokens > without.usage.prompt_tokens + 30  # the tool's schema is in the prompt
    assert none.usage.prompt_tokens == without.usage.prompt_tokens


def test_a_tool_round_trip_history_is_accepted(client, service):
    history = USER + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"celsius": 21}'},
    ]
    answer = client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER], max_tokens=4)
    assert answer.usage.prompt_tokens == _prompt_tokens(service, messages=history, tools=[WEATHER])
    text = service.preprocessor.processor.apply_chat_template(history, tools=[WEATHER], tokenize=False)
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    assert '<|im_start|>user\n<tool_response>\n{"celsius": 21}\n</tool_response><|im_end|>' in text


def test_completions_tokenise_the_prompt_without_the_template(client, service, llm):
    prompt = "The cat sat on the"
    whole = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8)
    expected = llm.generate([{"id": "c", "prompt": prompt, "chat_template": False, "max_tokens": 8}])[0]
    assert whole.object == "text_completion" and whole.id.startswith("cmpl-")
    assert whole.choices[0].text == expected.text and whole.choices[0].finish_reason == expected.finish_reason
    tokenizer = service.preprocessor.processor.tokenizer
    assert whole.usage.prompt_tokens == len(tokenizer(prompt)["input_ids"]) == expected.num_prompt_tokens
    listed = client.completions.create(model=MODEL, prompt=[prompt], max_tokens=8)
    assert listed.choices[0].text == whole.choices[0].text
    chunks = list(client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


@pytest.mark.parametrize("field, value, param", [
    ("echo", True, "echo"), ("suffix", "tail", "suffix"), ("best_of", 3, "best_of"),
    ("logit_bias", {"5": 10}, "logit_bias"), ("prompt", ["a", "b"], "prompt"), ("logprobs", 21, "logprobs"),
])
def test_completions_refuse_what_they_do_not_do(base_url, field, value, param):
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 2, field: value}
    answer = httpx.post(f"{base_url}/v1/completions", json=body, timeout=60)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == param, answer.text


def test_n_3_gives_three_choices_and_counts_the_prompt_once(client):
    one = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=5, temperature=1.0, seed=1)
    three = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=5, temperature=1.0, seed=1, n=3)
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert three.choices[0].message.content == one.choices[0].message.content  # sample 0 keeps the seed
    assert three.usage.prompt_tokens == one.usage.prompt_tokens
    assert 3 <= three.usage.completion_tokens <= 15 and len({c.message.content for c in three.choices}) > 1
    chunks = list(client.chat.completions.create(model=MODEL, messages=USER, max_tokens=5, temperature=1.0, seed=1,
                                                 n=3, stream=True, stream_options={"include_usage": True}))
    texts = {i: "" for i in range(3)}
    for c in chunks:
        for choice in c.choices:
            texts[choice.index] += choice.delta.content or ""
    assert [texts[i] for i in range(3)] == [c.message.content for c in three.choices]
    assert chunks[-1].usage == three.usage
    completions = client.completions.create(model=MODEL, prompt="One two", max_tokens=4, n=3, temperature=1.0)
    assert [c.index for c in completions.choices] == [0, 1, 2]


def test_logprobs_in_openais_shape_streamed_and_not(client, service):
    whole = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=6, logprobs=True, top_logprobs=3)
    content = whole.choices[0].logprobs.content
    assert len(content) == whole.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert bytes(entry.bytes).decode(errors="replace") == entry.token or "\ufffd" in entry.token
        # Greedy: the chosen token is the most likely one.
        assert entry.top_logprobs[0].token == entry.token and entry.top_logprobs[0].logprob == pytest.approx(
            entry.logprob)
    text = "".join(e.token for e in content)
    assert whole.choices[0].message.content in text  # the text less what EOS or a stop took away
    chunks = list(client.chat.completions.create(model=MODEL, messages=USER, max_tokens=6, logprobs=True,
                                                 top_logprobs=3, stream=True))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content]
    legacy = client.completions.create(model=MODEL, prompt="The cat", max_tokens=4, logprobs=2)
    assert len(legacy.choices[0].logprobs.tokens) == legacy.usage.completion_tokens
    assert all(len(top) == 2 for top in legacy.choices[0].logprobs.top_logprobs)


def test_json_schema_output_validates_streamed_and_not(client):
    import jsonschema

    # Closed values only: random weights under the grammar must reach the end of the JSON within max_tokens.
    schema = {"type": "object", "properties": {"colour": {"type": "string", "enum": ["red", "blue"]},
                                               "ok": {"type": "boolean"}},
              "required": ["colour", "ok"], "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
    whole = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=128, response_format=fmt)
    jsonschema.validate(json.loads(whole.choices[0].message.content), schema)
    chunks = list(client.chat.completions.create(model=MODEL, messages=USER, max_tokens=128, response_format=fmt,
                                                 stream=True))
    jsonschema.validate(json.loads("".join(c.choices[0].delta.content or "" for c in chunks if c.choices)), schema)
    obj = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=128,
                                         response_format={"type": "json_object"}).choices[0]
    # Any object: random weights may not close it within max_tokens; when they do, it parses.
    assert obj.message.content.lstrip().startswith("{")
    if obj.finish_reason == "stop":
        assert isinstance(json.loads(obj.message.content), dict)


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_a_forced_tool_call_is_parsed_streamed_and_not(client, tool_choice):
    args = dict(model=MODEL, messages=USER, tools=[WEATHER], tool_choice=tool_choice, max_tokens=128)
    whole = client.chat.completions.create(**args)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls[:1]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"] in ("Paris", "Rome")
    chunks = list(client.chat.completions.create(**args, stream=True))
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert deltas[0].function.name == "get_weather" and deltas[0].id.startswith("call_")
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    # The tool's result sent back: the conversation goes on.
    history = USER + [choice.message.model_dump(exclude_none=True),
                      {"role": "tool", "tool_call_id": call.id, "content": '{"celsius": 21}'}]
    assert client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER],
                                          max_tokens=4).choices[0].finish_reason in ("stop", "length")


def test_langchain_agent_loop_on_the_real_engine(base_url):
    # LangChain's ChatOpenAI with bind_tools, on the tiny model itself (no script): the forced call is decoded
    # under its grammar, parsed by LangChain from tool_calls, and the tool's answer goes back in the history.
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return json.dumps({"city": city, "celsius": 21})

    model = ChatOpenAI(model=MODEL, base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120,
                       max_tokens=128, temperature=0)
    forced = model.bind_tools([WEATHER], tool_choice="get_weather")
    messages = [HumanMessage("What is the weather in Paris?")]
    reply = forced.invoke(messages)
    [call] = reply.tool_calls
    assert call["name"] == "get_weather" and call["args"]["city"] in ("Paris", "Rome")
    messages += [reply, ToolMessage(get_weather.invoke({"city": call["args"]["city"]}), tool_call_id=call["id"])]
    final = model.bind_tools([WEATHER]).invoke(messages)
    assert final.response_metadata["finish_reason"] in ("stop", "length", "tool_calls")
