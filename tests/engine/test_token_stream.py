"""Streaming: pieces never split a character, stop strings are held back and cut, and every request's deltas
add up to exactly its non-streamed result, inside real batches."""

import random

import pytest

from vlray.engine.generated_sequence import finish_sequence
from vlray.engine.incremental_detokenizer import REPLACEMENT_CHAR, IncrementalDetokenizer
from vlray.engine.token_stream import RequestStream, StreamDelta
from vlray.inputs.prepared_request import SamplingParams
from vlray.llm import LLM

VOCAB = {1: "a", 2: "b", 3: "c", 4: "x", 5: "", 6: " y"}  # 5 is EOS, decoded to nothing (a special token)
EOS = {5}


def _decode(ids):
    return "".join(VOCAB[i] for i in ids)


def _stream(max_tokens=10, stop=()):
    return RequestStream("r", SamplingParams(max_tokens=max_tokens, stop=list(stop)), 7, EOS, _decode)


def _push_all(stream, ids):
    return [d for d in (stream.push([i]) for i in ids) if d is not None]


def test_detokenizer_pieces_join_to_the_full_decode(tiny_loaded):
    tokenizer = tiny_loaded.tokenizer
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    multibyte = tokenizer("été 日本 🙂 naïve", add_special_tokens=False)["input_ids"]
    rng = random.Random(0)
    for trial in range(60):
        ids = [rng.randrange(len(tokenizer)) for _ in range(rng.randint(1, 40))] if trial else multibyte
        detokenizer = IncrementalDetokenizer(decode)
        pieces = [detokenizer.add(i) for i in ids]
        joined, full = "".join(pieces), decode(ids)
        assert not any(p.endswith(REPLACEMENT_CHAR) for p in pieces)
        assert full.startswith(joined)
        if not full.endswith(REPLACEMENT_CHAR):
            assert joined == full
    assert len([p for p in (IncrementalDetokenizer(decode).add(i) for i in multibyte) if p]) > 1


def test_stop_string_prefix_is_held_back_then_released():
    stream = _stream(stop=["bc"])
    deltas = _push_all(stream, [1, 2])
    assert [d.text for d in deltas] == ["a"]  # "b" could start "bc"
    deltas = _push_all(stream, [4])
    assert [d.text for d in deltas] == ["bx"]  # it did not
    assert deltas[0].text_offset == 1 and deltas[0].token_ids == (2, 4)


def test_stop_string_ends_the_request_and_is_cut():
    stream = _stream(stop=["bc", "yy"])
    deltas = _push_all(stream, [1, 2, 3, 1, 1])
    assert "".join(d.text for d in deltas) == "a"
    assert deltas[-1].finish_reason == "stop" and deltas[-1].num_generated_tokens == 3
    assert stream.push([1]) is None and stream.close() is None  # tokens after the end are ignored


def test_eos_max_tokens_and_close():
    eos = _stream()
    assert [(d.text, d.finish_reason) for d in _push_all(eos, [1, 6, 5])] == [("a", None), (" y", None), ("", "stop")]
    assert eos.token_ids == [1, 6, 5]
    length = _stream(max_tokens=2)
    assert [(d.text, d.finish_reason) for d in _push_all(length, [4, 4, 4])] == [("x", None), ("x", "length")]
    held = _stream(stop=["ab"])
    assert _push_all(held, [4, 1]) == [StreamDelta("r", "x", (4,), 0, 7, 1)]
    last = held.close()  # the engine stopped early: the held-back "a" is released
    assert (last.text, last.finish_reason, last.text_offset) == ("a", "length", 1)


@pytest.mark.parametrize("stop", [["bc"], ["cab", "b"], ["x y"]])
def test_deltas_equal_the_non_streamed_cut(stop):
    rng = random.Random(len(stop))
    params = SamplingParams(max_tokens=12, stop=stop)
    for _ in range(200):
        ids = [rng.choice([1, 2, 3, 4, 6, 6, 5]) for _ in range(14)]
        stream = RequestStream("r", params, 7, EOS, _decode)
        deltas = [d for d in (stream.push([i]) for i in ids) if d is not None]
        deltas += [d for d in [stream.close()] if d is not None]
        # As RowStopper sees it: the first step whose decoded text holds a stop string.
        stopped_at = next((n for n in range(1, len(ids) + 1) if any(s in _decode(ids[:n]) for s in stop)), None)
        expected = finish_sequence(ids, params, EOS, stopped_at, _decode)
        assert "".join(d.text for d in deltas) == expected.text
        assert [t for d in deltas for t in d.token_ids] == expected.token_ids
        assert deltas[-1].finish_reason == expected.finish_reason
        assert [d.text_offset for d in deltas] == [sum(len(d.text) for d in deltas[:k]) for k in range(len(deltas))]


def test_batched_stream_adds_up_to_the_results(tiny_loaded, tiny_config):
    llm = LLM(tiny_config.with_updates(backend="hf", max_batch_size=8), loaded=tiny_loaded)
    base = [
        {"id": "long", "prompt": "Describe the scene.", "max_tokens": 20},
        {"id": "short", "prompt": "Describe the scene.", "max_tokens": 2},
        {"id": "chat", "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 15},
    ]
    full = llm.generate(base)
    stop = full[0].text[len(full[0].text) // 2: len(full[0].text) // 2 + 2]
    requests = base + [{**base[0], "id": "stopped", "stop": [stop]}]
    prepared = [llm.preprocessor.prepare(r) for r in requests]
    deltas: list[StreamDelta] = []
    results = llm.generate_prepared(prepared, sink=deltas.append)
    assert llm.stats.num_batches == 2  # one batch per call: the four rows were generated together
    for result in results:
        mine = [d for d in deltas if d.request_id == result.id]
        assert "".join(d.text for d in mine) == result.text, result.id
        assert [t for d in mine for t in d.token_ids] == result.token_ids
        assert [d.is_final for d in mine] == [False] * (len(mine) - 1) + [True]
        assert mine[-1].finish_reason == result.finish_reason
        assert mine[-1].num_generated_tokens == result.num_generated_tokens
        assert mine[-1].num_prompt_tokens == result.num_prompt_tokens
    assert results[3].finish_reason == "stop" and results[3].text == full[0].text[: full[0].text.index(stop)]
    order = [d.request_id for d in deltas]
    # A row that ends early is finished in the stream while the others still generate.
    assert order.index("short") < max(i for i, rid in enumerate(order) if rid == "long")
    assert len([d for d in deltas if d.request_id == "long"]) > 2
