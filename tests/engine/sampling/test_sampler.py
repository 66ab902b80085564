"""The sampler's transforms on tiny logits, against values computed by hand: each penalty, each filter, and the
order they run in; greedy rows penalised before the argmax; rows that do not disturb each other; logprobs."""

import math

import pytest
import torch

from vlray.engine.sampling.sampler import (
    StepLogprobs,
    TokenCounts,
    apply_penalties,
    choose,
    filtered_probs,
    make_generator,
    penalize,
    sample,
)
from vlray.inputs.prepared_request import SamplingParams


def _params(**fields) -> SamplingParams:
    return SamplingParams(max_tokens=4, **fields)


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    seen = torch.tensor([[True, True, False, False]])
    out = penalize(logits, torch.zeros(1, 4), seen, torch.tensor([2.0]), torch.zeros(1), torch.zeros(1))
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0]]


def test_presence_and_frequency_penalties_follow_openai():
    logits = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    counts = torch.tensor([[2.0, 0.0, 1.0, 0.0]])
    out = penalize(logits, counts, None, torch.ones(1), torch.tensor([0.5]), torch.tensor([0.25]))
    assert out.tolist() == [[1.0 - 0.5 - 0.5, 1.0, 1.0 - 0.5 - 0.25, 1.0]]
    negative = penalize(logits, counts, None, torch.ones(1), torch.tensor([-1.0]), torch.tensor([0.0]))
    assert negative.tolist() == [[2.0, 1.0, 2.0, 1.0]]  # a negative penalty favours repeats


def test_repetition_runs_before_presence():
    # logit 2, seen and generated once: /2 then -1 is 0 (the other order would give 0.5).
    params = [_params(repetition_penalty=2.0, presence_penalty=1.0)]
    counts = TokenCounts([5, 0], num_prompt_tokens=1, vocab_size=3, device="cpu", with_seen=True)
    out = apply_penalties(torch.tensor([[2.0, 1.0, 1.0]]), params, [counts])
    # token 0 generated (count 1, seen): 2/2 - 1 = 0; token 1, 2 never seen (5 is out of this tiny vocabulary)
    assert out.tolist() == [[0.0, 1.0, 1.0]]


def test_token_counts_follow_the_tokens():
    counts = TokenCounts([1, 2, 2, 3], num_prompt_tokens=2, vocab_size=5, device="cpu", with_seen=True)
    assert counts.output.tolist() == [0, 0, 1, 1, 0] and counts.seen.tolist() == [False, True, True, True, False]
    counts.add(3)
    counts.add(4)
    assert counts.output.tolist() == [0, 0, 1, 2, 1] and counts.seen.tolist() == [False, True, True, True, True]
    assert TokenCounts([1], 1, 5, "cpu", with_seen=False).seen is None


def test_greedy_rows_take_the_argmax_of_penalised_logits():
    logits = torch.tensor([[3.0, 2.0, 0.0], [3.0, 2.0, 0.0]])
    params = [_params(frequency_penalty=1.5), _params()]
    counts = [TokenCounts([9, 0], 1, 3, "cpu", with_seen=False), None]  # row 0 has generated token 0 once
    assert sample(logits, params, [None, None], counts) == [1, 0]


def test_no_penalties_leaves_the_logits_untouched():
    logits = torch.randn(3, 8)
    assert apply_penalties(logits, [_params(temperature=1.0, top_k=2)] * 3, None) is logits


def _probs(logits, top_k=0, top_p=1.0, min_p=0.0):
    probs, order = filtered_probs(torch.tensor([logits]), torch.tensor([top_k]), torch.tensor([top_p]),
                                  torch.tensor([min_p]))
    unsorted = torch.zeros_like(probs).scatter(1, order, probs)
    return unsorted[0].tolist()


def test_top_k_keeps_the_k_most_likely():
    got = _probs([1.0, 2.0, 3.0, 4.0], top_k=2)
    e = math.exp(1.0)
    assert got == pytest.approx([0.0, 0.0, 1 / (1 + e), e / (1 + e)])
    assert _probs([1.0, 2.0], top_k=10**9) == pytest.approx(_probs([1.0, 2.0]))  # k past the vocabulary: all


def test_top_p_after_top_k_sees_the_renormalised_mass():
    logits = [math.log(p) for p in (0.4, 0.3, 0.2, 0.1)]
    assert _probs(logits, top_p=0.5) == pytest.approx([4 / 7, 3 / 7, 0.0, 0.0])  # 0.4 < 0.5: the second stays
    assert _probs(logits, top_k=2, top_p=0.5) == pytest.approx([1.0, 0.0, 0.0, 0.0])  # 4/7 >= 0.5: it goes


def test_min_p_drops_tokens_under_its_share_of_the_most_likely():
    logits = [math.log(p) for p in (0.5, 0.3, 0.15, 0.05)]
    assert _probs(logits, min_p=0.2) == pytest.approx([0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0])


def test_temperature_runs_before_top_p():
    # At temperature 1 top_p 0.6 keeps two tokens; at 0.5 the first alone holds 0.66 of the mass.
    logits = torch.tensor([[math.log(p) for p in (0.5, 0.3, 0.2)]])
    hot = [_params(temperature=1.0, top_p=0.6, seed=s) for s in range(40)]
    cold = [_params(temperature=0.5, top_p=0.6, seed=s) for s in range(40)]
    draw = lambda ps: {t for p in ps for t in sample(logits, [p], [make_generator(p, "cpu")])}  # noqa: E731
    assert draw(hot) == {0, 1} and draw(cold) == {0}


def test_a_sampled_rows_token_does_not_depend_on_its_neighbours():
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    mine = _params(temperature=0.8, top_k=10, top_p=0.9, min_p=0.05, seed=11)
    alone = sample(logits[1:2], [mine], [make_generator(mine, "cpu")])
    neighbours = [_params(), mine, _params(temperature=1.3, seed=2), _params(temperature=0.5, top_k=3, seed=4)]
    together = sample(logits, neighbours, [make_generator(p, "cpu") for p in neighbours])
    assert together[1] == alone[0]
    assert together[0] == int(logits[0].argmax())


def test_filters_never_draw_a_removed_token():
    torch.manual_seed(1)
    logits = torch.randn(1, 30)
    top3 = set(logits[0].topk(3).indices.tolist())
    for seed in range(30):
        p = _params(temperature=2.0, top_k=3, seed=seed)
        assert choose(logits, [p], [make_generator(p, "cpu")])[0].item() in top3


def test_logprobs_are_the_log_softmax_of_the_raw_logits():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [0.0, 0.0, 0.0, 5.0], [1.0, 1.0, 1.0, 1.0]])
    params = [_params(logprobs=2), _params(), _params(logprobs=0)]
    step = StepLogprobs(logits, params)
    logits.fill_(0.0)  # masks applied in place after it was taken do not change it
    got = step.resolve(torch.tensor([2, 3, 0]))
    expected = torch.log_softmax(torch.tensor([1.0, 3.0, 2.0, 0.0]), dim=-1)
    assert got[1] is None
    assert got[0].token_id == 2 and got[0].logprob == pytest.approx(expected[2].item())
    assert [t for t, _ in got[0].top] == [1, 2] and got[0].top[0][1] == pytest.approx(expected[1].item())
    assert got[2].top == [] and got[2].logprob == pytest.approx(math.log(0.25))
