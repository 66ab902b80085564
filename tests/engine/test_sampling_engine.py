"""The engine's sampling options end to end on the tiny model: penalties give the tokens transformers (or a
hand-written reference of OpenAI's rule) gives, logprobs are the log-softmax of transformers' own logits, and
n samples of one image prompt prefill it once."""

from collections import Counter

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from vlray.engine.sampling.parallel_sampling import expand_samples
from vlray.llm import LLM

PROMPT = {"id": "p", "prompt": "Describe a busy street at night with many signs.", "max_tokens": 24}


@pytest.fixture(scope="module")
def llm(tiny_loaded, tiny_config):
    return LLM(tiny_config.with_updates(backend="engine", kv_cache_bytes=16 << 20), loaded=tiny_loaded)


class OpenAIPenalties(LogitsProcessor):
    """OpenAI's presence/frequency rule, written plainly over the generated ids (the reference)."""

    def __init__(self, prompt_len: int, presence: float, frequency: float) -> None:
        self.prompt_len, self.presence, self.frequency = prompt_len, presence, frequency

    def __call__(self, input_ids, scores):
        for row in range(scores.shape[0]):
            for token, count in Counter(input_ids[row, self.prompt_len:].tolist()).items():
                scores[row, token] -= self.presence + self.frequency * count
        return scores


def _generate(loaded, input_ids, max_new_tokens, **kwargs) -> list[int]:
    ids = torch.as_tensor(input_ids)[None]
    with torch.inference_mode():
        out = loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                    max_new_tokens=max_new_tokens, **kwargs)
    return out[0, ids.shape[1]:].tolist()


def test_greedy_repetition_penalty_gives_transformers_tokens(llm, tiny_loaded):
    request = {**PROMPT, "repetition_penalty": 1.6}
    prepared = llm.preprocessor.prepare(request)
    expected = _generate(tiny_loaded, prepared.input_ids, 24, repetition_penalty=1.6)
    plain = llm.generate([PROMPT])[0]
    result = llm.generate([request])[0]
    assert result.token_ids == expected
    assert result.token_ids != plain.token_ids  # the penalty changed the output of this prompt


@pytest.mark.parametrize("presence, frequency", [(1.5, 0.0), (0.0, 1.2), (-1.0, 0.5)])
def test_greedy_presence_and_frequency_follow_openai(llm, tiny_loaded, presence, frequency):
    request = {**PROMPT, "presence_penalty": presence, "frequency_penalty": frequency}
    prepared = llm.preprocessor.prepare(request)
    reference = OpenAIPenalties(prepared.num_prompt_tokens, presence, frequency)
    expected = _generate(tiny_loaded, prepared.input_ids, 24, logits_processor=LogitsProcessorList([reference]))
    assert llm.generate([request])[0].token_ids == expected


def test_penalised_rows_do_not_change_their_neighbours(llm):
    plain = llm.generate([PROMPT])[0]
    mixed = llm.generate([{**PROMPT, "id": "pen", "presence_penalty": 2.0, "repetition_penalty": 1.3},
                          {**PROMPT, "id": "plain"}])
    assert mixed[1].token_ids == plain.token_ids and mixed[0].token_ids != plain.token_ids


def test_logprobs_are_the_log_softmax_of_transformers_logits(llm, tiny_loaded):
    request = {**PROMPT, "temperature": 1.0, "top_k": 20, "presence_penalty": 1.0, "seed": 3, "logprobs": 5}
    prepared = llm.preprocessor.prepare(request)
    result = llm.generate([request])[0]
    assert result.ok and len(result.logprobs) == len(result.token_ids)
    ids = torch.tensor([prepared.input_ids.tolist() + result.token_ids])
    with torch.inference_mode():
        logits = tiny_loaded.model(input_ids=ids).logits[0].float()
    start = prepared.num_prompt_tokens - 1
    expected = torch.log_softmax(logits[start:start + len(result.token_ids)], dim=-1)
    for step, (token, lp) in enumerate(zip(result.token_ids, result.logprobs)):
        assert lp.token_id == token
        assert lp.logprob == pytest.approx(expected[step, token].item(), abs=1e-4)
        top = expected[step].topk(5)
        assert [t for t, _ in lp.top] == top.indices.tolist()
        assert [v for _, v in lp.top] == pytest.approx(top.values.tolist(), abs=1e-4)
    assert llm.generate([PROMPT])[0].logprobs is None  # only when asked


def test_streamed_logprobs_line_up_with_the_tokens(llm):
    request = {**PROMPT, "logprobs": 1, "stop": ["zzz"]}
    deltas = [e for e in llm.stream([request]) if not hasattr(e, "ok")]
    result = llm.generate([request])[0]
    assert all(len(d.logprobs) == len(d.token_ids) for d in deltas)
    assert [lp for d in deltas for lp in d.logprobs] == result.logprobs


def test_n_samples_prefill_the_prompt_and_its_image_once(tiny_loaded, tiny_config, sample_images):
    block = 16
    llm = LLM(tiny_config.with_updates(backend="engine", kv_cache_bytes=16 << 20, block_size=block, cache=False),
              loaded=tiny_loaded)
    request = {"id": "img", "images": [str(sample_images[1])], "max_tokens": 10,
               "prompt": "Describe every shape and colour you can see in this picture, one by one, in detail."}
    prepared = llm.preprocessor.prepare(request)
    single = llm.generate_prepared([prepared])[0]
    llm.backend.block_manager.reset_prefix_cache()  # the samples find nothing of the single run
    llm.reset_stats()
    greedy = llm.generate_prepared(expand_samples(prepared, 3))
    assert [r.id for r in greedy] == ["img/0", "img/1", "img/2"]
    assert all(r.token_ids == single.token_ids for r in greedy)
    stats = llm.stats
    assert stats.num_images_encoded == 1
    full = (prepared.num_prompt_tokens - 1) // block * block  # the prompt's full blocks (the image ends before)
    assert stats.num_prefix_cached_tokens == 2 * full
    assert stats.num_batch_prompt_slots == prepared.num_prompt_tokens + 2 * (prepared.num_prompt_tokens - full)

    sampled = llm.preprocessor.prepare({**request, "temperature": 1.0, "seed": 5})
    samples = expand_samples(sampled, 3)
    assert [s.sampling.seed for s in samples] == [5, 6, 7]
    outputs = [r.token_ids for r in llm.generate_prepared(samples)]
    assert len({tuple(t) for t in outputs}) == 3
    again = llm.generate_prepared([samples[1]])[0]  # a sample's seed stream is its own
    assert again.token_ids == outputs[1]


def test_expand_samples_seeds_and_ids(llm):
    prepared = llm.preprocessor.prepare({**PROMPT, "temperature": 1.0, "seed": 2**64 - 1})
    samples = expand_samples(prepared, 2)
    assert [s.sampling.seed for s in samples] == [2**64 - 1, 0]
    assert {s.prefix_group for s in samples} == {"p"} and samples[0].sampling is not prepared.sampling
    unseeded = expand_samples(llm.preprocessor.prepare(PROMPT), 3)
    assert all(s.sampling.seed is None for s in unseeded)
    with pytest.raises(ValueError, match="n="):
        expand_samples(prepared, 0)
