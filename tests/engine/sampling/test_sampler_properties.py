"""Property tests of the sampler over every value the request schema accepts: whatever a client sends, the step
draws a valid token, and what counts as greedy gives the argmax (hypothesis, small logits, fp32 and fp16)."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vlray.engine.sampling.sampler import StepLogprobs, TokenCounts, make_generator, sample
from vlray.inputs.prepared_request import GREEDY_TEMPERATURE_BELOW, SamplingParams
from vlray.schema import RequestError, parse_request

VOCAB = 16
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}

# Every float the schema takes for temperature and top_p, the extremes first: hypothesis tries them early.
temperatures = st.one_of(st.sampled_from([0.0, 5e-324, 1e-300, 1e-45, 1e-38, 1e-6, 1e-5, 2.0]),
                         st.floats(min_value=0.0, max_value=2.0, allow_nan=False))
top_ps = st.one_of(st.sampled_from([5e-324, 1e-300, 1e-45, 1e-8, 1.0]),
                   st.floats(min_value=0.0, max_value=1.0, exclude_min=True, allow_nan=False))
seeds = st.one_of(st.none(), st.sampled_from([2**64, 2**70, -2**63 - 1, -2**200, 2**64 - 1]), st.integers())


def _logits(dtype: str):
    # Up to fp16's largest magnitude in both dtypes: what a model's logits can hold, divided by any temperature.
    big = float(torch.finfo(torch.float16).max)
    values = st.one_of(st.sampled_from([0.0, big, -big, 1e-3]), st.floats(-big, big, width=16 if dtype == "fp16" else 32))
    return st.lists(values, min_size=VOCAB, max_size=VOCAB)


def _params(temperature: float, top_p: float, seed: int | None) -> SamplingParams:
    # Through the schema, as every request comes in: what it accepts must be computable.
    request = parse_request({"id": "x", "prompt": "hi", "temperature": temperature, "top_p": top_p, "seed": seed})
    return SamplingParams(max_tokens=4, temperature=request.temperature, top_p=request.top_p, seed=request.seed)


@pytest.mark.parametrize("dtype", list(DTYPES))
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), temperature=temperatures, top_p=top_ps, seed=seeds)
def test_every_accepted_value_draws_a_valid_token(dtype, data, temperature, top_p, seed):
    row = data.draw(_logits(dtype))
    logits = torch.tensor([row, list(reversed(row))], dtype=DTYPES[dtype]).float()  # the engine samples in fp32
    params = [_params(temperature, top_p, seed), SamplingParams(max_tokens=4)]
    generators = [make_generator(p, "cpu") for p in params]
    tokens = sample(logits, params, generators)
    assert all(0 <= t < VOCAB for t in tokens)
    assert tokens[1] == int(logits[1].argmax())  # a greedy neighbour is never disturbed
    if temperature < GREEDY_TEMPERATURE_BELOW:
        assert params[0].is_greedy and tokens[0] == int(logits[0].argmax())
    elif top_p < 1e-6 and logits[0].max() > logits[0].min():
        top = logits[0] == logits[0].max()
        assert bool(top[tokens[0]])  # the floor keeps the most likely token (and only ties with it)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers())
def test_any_integer_seed_seeds_a_generator_and_repeats(seed):
    params = SamplingParams(max_tokens=4, temperature=1.0, seed=seed)
    assert 0 <= params.seed < 2**64
    logits = torch.linspace(-1, 1, VOCAB).repeat(2, 1)
    first = sample(logits, [params, params], [make_generator(params, "cpu"), make_generator(params, "cpu")])
    assert first[0] == first[1]


def test_seeds_already_in_range_keep_their_tokens():
    # Reducing modulo 2**64 is what torch does with a negative seed itself: old seeds give the same draws.
    for seed in (0, 7, 2**63, -5, 2**64 - 1):
        expected = torch.Generator().manual_seed(seed).initial_seed()
        assert SamplingParams(max_tokens=1, temperature=1.0, seed=seed).seed == expected


@pytest.mark.parametrize("field", ["temperature", "top_p"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_inf_are_refused(field, value):
    with pytest.raises(RequestError, match=field):
        parse_request({"id": "x", "prompt": "hi", field: value})
    with pytest.raises(ValueError, match=field):
        SamplingParams(max_tokens=1, **{field: value})


def test_tiny_values_are_clamped_not_refused():
    request = parse_request({"id": "x", "prompt": "hi", "temperature": 1e-300, "top_p": 1e-300, "seed": 2**70})
    params = SamplingParams(max_tokens=1, temperature=request.temperature, top_p=request.top_p, seed=request.seed)
    assert request.is_greedy and params.is_greedy and params.temperature == 0.0
    assert params.top_p > 0 and params.seed == 2**70 % 2**64


top_ks = st.one_of(st.sampled_from([-1, 0, 1, VOCAB - 1, VOCAB, 2**31, 10**30]), st.integers(min_value=-1))
min_ps = st.one_of(st.sampled_from([0.0, 5e-324, 1e-300, 0.5, 1.0]), st.floats(0.0, 1.0))
penalties = st.one_of(st.sampled_from([-2.0, 0.0, 2.0, 5e-324]), st.floats(-2.0, 2.0))
repetitions = st.one_of(st.sampled_from([5e-324, 1e-300, 1e-3, 1.0, 2.0]),
                        st.floats(0.0, 2.0, exclude_min=True))


@settings(max_examples=100, deadline=None)
@given(data=st.data(), temperature=temperatures, top_p=top_ps, top_k=top_ks, min_p=min_ps, presence=penalties,
       frequency=penalties, repetition=repetitions, seed=seeds)
def test_every_accepted_filter_and_penalty_draws_a_valid_token(data, temperature, top_p, top_k, min_p, presence,
                                                               frequency, repetition, seed):
    row = data.draw(_logits("fp16"))
    request = parse_request({"id": "x", "prompt": "hi", "temperature": temperature, "top_p": top_p, "top_k": top_k,
                             "min_p": min_p, "presence_penalty": presence, "frequency_penalty": frequency,
                             "repetition_penalty": repetition, "seed": seed, "logprobs": 3})
    fields = {name: getattr(request, name) for name in ("temperature", "top_p", "top_k", "min_p", "presence_penalty",
                                                         "frequency_penalty", "repetition_penalty", "seed")}
    params = [SamplingParams(max_tokens=4, logprobs=request.logprobs, **fields), SamplingParams(max_tokens=4)]
    history = data.draw(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=8))
    counts = [TokenCounts(history, 1, VOCAB, "cpu", with_seen=True), None]
    logits = torch.tensor([row, row], dtype=torch.float16).float()
    tokens = sample(logits, params, [make_generator(p, "cpu") for p in params], counts)
    assert all(0 <= t < VOCAB for t in tokens)
    assert tokens[1] == int(logits[1].argmax())  # the neighbour without penalties is never disturbed
    logprob = StepLogprobs(logits, [params[0], params[1]]).resolve(torch.tensor(tokens))[0]
    assert logprob.logprob <= 0.0 and len(logprob.top) == 3
