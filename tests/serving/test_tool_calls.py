"""Tool calls the model writes, as clients get them: an engine scripted to answer with Qwen's <tool_call>
blocks (random tiny weights never write one) behind the real preprocessor and OpenAI app, driven by the
official `openai` client and by LangChain's ChatOpenAI with bind_tools."""

import json

import openai
import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from tests.serving.conftest import served
from vlray.engine.token_stream import StreamDelta
from vlray.inputs.image_policy import ImagePolicy
from vlray.inputs.preprocessor import RequestPreprocessor
from vlray.schema import GenerationResult
from vlray.serving.app import build_openai_app
from vlray.serving.chat_service import ChatService

MODEL = "tiny-tools"
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
USER = [{"role": "user", "content": "Weather in Paris?"}]


class ScriptedEngine:
    """AsyncEngine's interface, answering each request with the next scripted text (in 3-character deltas when
    streamed); it records the prepared requests it was given."""

    is_alive, num_running, num_queued = True, 0, 0

    def __init__(self) -> None:
        self.script: list[str] = []
        self.prepared = []

    def _next(self, prepared):
        self.prepared.append(prepared)
        return self.script.pop(0)

    async def generate(self, prepared):
        text = self._next(prepared)
        return GenerationResult(id=prepared.request_id, text=text, finish_reason="stop",
                                num_prompt_tokens=prepared.num_prompt_tokens, num_generated_tokens=len(text))

    async def stream(self, prepared):
        text = self._next(prepared)
        pieces = [text[i:i + 3] for i in range(0, len(text), 3)] or [""]
        for i, piece in enumerate(pieces):
            final = i == len(pieces) - 1
            yield StreamDelta(prepared.request_id, piece, (), 3 * i, prepared.num_prompt_tokens, 3 * i + len(piece),
                              "stop" if final else None)

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def engine():
    return ScriptedEngine()


@pytest.fixture(scope="module")
def base_url(tiny_loaded, tiny_config, engine):
    preprocessor = RequestPreprocessor(tiny_loaded.processor, tiny_loaded.max_model_len, 8,
                                       tiny_config.max_input_pixels, image_policy=ImagePolicy.for_server())
    with served(build_openai_app(ChatService(preprocessor, engine, MODEL))) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60) as client:
        yield client


def test_a_call_is_parsed_into_tool_calls(client, engine):
    engine.script = ["Checking.\n" + CALL]
    answer = client.chat.completions.create(model=MODEL, messages=USER, tools=[WEATHER])
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Checking.\n"
    [call] = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}


def test_without_tools_the_tags_are_plain_text(client, engine):
    engine.script = [CALL, CALL]
    plain = client.chat.completions.create(model=MODEL, messages=USER)
    none = client.chat.completions.create(model=MODEL, messages=USER, tools=[WEATHER], tool_choice="none")
    for answer in (plain, none):
        assert answer.choices[0].message.content == CALL and answer.choices[0].finish_reason == "stop"
    assert engine.prepared[-1].num_prompt_tokens == engine.prepared[-2].num_prompt_tokens  # none: not rendered


def test_bad_json_in_a_call_is_content_never_a_500(client, engine):
    bad = '<tool_call>\n{"name": "get_weather", "arguments": {city: Paris}\n</tool_call>'
    engine.script = [bad, bad]
    answer = client.chat.completions.create(model=MODEL, messages=USER, tools=[WEATHER])
    assert answer.choices[0].message.content == bad and answer.choices[0].message.tool_calls is None
    chunks = list(client.chat.completions.create(model=MODEL, messages=USER, tools=[WEATHER], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == bad
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_streamed_calls_are_one_delta_each_with_id_name_and_arguments(client, engine):
    engine.script = ["Sure <tool_" + " " + CALL + "\n" + CALL.replace("Paris", "Rome")]
    chunks = list(client.chat.completions.create(model=MODEL, messages=USER, tools=[WEATHER], stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    calls = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
    assert content == "Sure <tool_ "
    assert [d.index for d in calls] == [0, 1] and all(d.id.startswith("call_") and d.type == "function"
                                                      for d in calls)
    assert [json.loads(d.function.arguments)["city"] for d in calls] == ["Paris", "Rome"]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_forced_tool_choice_sends_a_call_schema_and_reads_bare_json(client, engine):
    engine.script = ['{"name": "get_weather", "arguments": {"city": "Oslo"}}',
                     '[{"name": "get_weather", "arguments": {"city": "Rome"}}]']
    named = client.chat.completions.create(model=MODEL, messages=USER, tools=[WEATHER],
                                           tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert named.choices[0].finish_reason == "tool_calls" and named.choices[0].message.content is None
    assert json.loads(named.choices[0].message.tool_calls[0].function.arguments) == {"city": "Oslo"}
    chunks = list(client.chat.completions.create(model=MODEL, messages=USER, tools=[WEATHER], tool_choice="required",
                                                 stream=True))
    [delta] = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
    assert json.loads(delta.function.arguments) == {"city": "Rome"}


def test_langchain_bind_tools_round_trip(base_url, engine, tiny_loaded):
    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return json.dumps({"city": city, "celsius": 21})

    model = ChatOpenAI(model=MODEL, base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60)
    engine.script = [CALL, "It is 21 degrees in Paris."]
    bound = model.bind_tools([get_weather], tool_choice="auto")
    messages = [HumanMessage("Weather in Paris?")]
    reply = bound.invoke(messages)
    [call] = reply.tool_calls
    assert call["name"] == "get_weather" and call["args"] == {"city": "Paris"}
    messages += [reply, ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])]
    final = bound.invoke(messages)
    assert final.content == "It is 21 degrees in Paris." and not final.tool_calls
    # The history went through the template: the call as Qwen writes it, the result as a tool_response.
    rendered = tiny_loaded.processor.tokenizer.decode(engine.prepared[-1].input_ids.tolist())
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in rendered
    assert "<tool_response>\n" in rendered and '"celsius": 21' in rendered


def test_langchain_streams_a_call_from_the_deltas(base_url, engine):
    model = ChatOpenAI(model=MODEL, base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60)
    engine.script = ["One moment. " + CALL]
    bound = model.bind_tools([WEATHER], tool_choice="auto")
    message = None
    for piece in bound.stream([HumanMessage("Weather in Paris?")]):
        message = piece if message is None else message + piece
    assert message.content == "One moment. "
    [call] = message.tool_calls
    assert call["name"] == "get_weather" and call["args"] == {"city": "Paris"} and call["id"].startswith("call_")
