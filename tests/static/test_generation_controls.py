"""Per-row sampling and stopping, and how a padded row is cut back to what the request produced."""

import torch

from vlray.engine.generated_sequence import finish_sequence
from vlray.engine.sampling.sampler import sample
from vlray.inputs.prepared_request import SamplingParams
from vlray.static.generation_controls import RowSampler

EOS = {2, 0}


def _decode(ids):
    return "".join(chr(ord("a") + i) for i in ids if i not in EOS)


def test_cut_at_first_eos_keeps_it():
    seq = finish_sequence([5, 6, 2, 0, 0], SamplingParams(max_tokens=5), EOS, None, _decode)
    assert (seq.token_ids, seq.finish_reason, seq.text) == ([5, 6, 2], "stop", "fg")


def test_length_when_max_tokens_reached():
    seq = finish_sequence([5, 6, 7, 8, 9], SamplingParams(max_tokens=3), EOS, None, _decode)
    assert (seq.token_ids, seq.finish_reason) == ([5, 6, 7], "length")


def test_stop_string_cuts_text_and_tokens():
    # The row stopped after 3 tokens ("fgh" contains "gh"); generate padded it with 0, which is also an EOS id.
    seq = finish_sequence([5, 6, 7, 0, 0], SamplingParams(max_tokens=5, stop=["gh"]), EOS, 3, _decode)
    assert (seq.token_ids, seq.finish_reason, seq.text) == ([5, 6, 7], "stop", "f")


def test_eos_before_stop_string_wins():
    seq = finish_sequence([5, 2, 0], SamplingParams(max_tokens=5, stop=["zz"]), EOS, None, _decode)
    assert (seq.token_ids, seq.finish_reason) == ([5, 2], "stop")


def sample_token(logits, temperature, top_p, generator) -> int:
    return sample(logits[None], [SamplingParams(max_tokens=1, temperature=temperature, top_p=top_p)], [generator])[0]


def test_sampling_is_seeded_and_respects_top_p():
    logits = torch.tensor([2.0, 1.9, 0.5, -1.0, -3.0])
    draws = [int(sample_token(logits, 1.0, 1.0, torch.Generator().manual_seed(7))) for _ in range(3)]
    assert len(set(draws)) == 1  # same seed, same token
    generator = torch.Generator().manual_seed(0)
    # top_p 0.5 keeps only the most likely token (its probability alone is over 0.5 after temperature 0.1).
    assert {int(sample_token(logits, 0.1, 0.5, generator)) for _ in range(50)} == {0}
    many = {int(sample_token(logits, 5.0, 1.0, generator)) for _ in range(300)}
    assert len(many) >= 4  # a high temperature really samples


def test_row_sampler_leaves_greedy_rows_alone_and_forces_sampled_ones():
    params = [SamplingParams(max_tokens=4), SamplingParams(max_tokens=4, temperature=1.0, seed=3)]
    scores = torch.tensor([[0.0, 3.0, 1.0], [0.0, 3.0, 1.0]])
    out = RowSampler(params, "cpu")(torch.zeros((2, 1), dtype=torch.long), scores.clone())
    assert out[0].tolist() == [0.0, 3.0, 1.0]
    assert torch.isfinite(out[1]).sum() == 1
    again = RowSampler(params, "cpu")(torch.zeros((2, 1), dtype=torch.long), scores.clone())
    assert torch.equal(out[1], again[1])


def test_row_sampler_penalises_from_generates_ids_without_the_padding():
    # Row 0: one left pad (token 2), prompt [1], generated [3, 3]; row 1: no penalty.
    params = [SamplingParams(max_tokens=4, repetition_penalty=2.0, frequency_penalty=0.5), SamplingParams(max_tokens=4)]
    input_ids = torch.tensor([[2, 1, 3, 3], [0, 0, 3, 3]])
    scores = torch.tensor([[4.0, 4.0, 4.0, 4.0], [4.0, 4.0, 4.0, 4.0]])
    out = RowSampler(params, "cpu", prompt_len=2, num_prompt_tokens=[1, 2])(input_ids, scores.clone())
    # token 1 (prompt): 4/2; token 2 (a pad only): untouched; token 3 (generated twice): 4/2 - 0.5*2
    assert out[0].tolist() == [4.0, 2.0, 4.0, 1.0]
    assert out[1].tolist() == [4.0, 4.0, 4.0, 4.0]


def test_row_sampler_applies_top_k():
    params = [SamplingParams(max_tokens=4, temperature=3.0, top_k=2, seed=s) for s in range(30)]
    scores = torch.tensor([[0.0, 3.0, 1.0, 2.9]] * 30)
    out = RowSampler(params, "cpu")(torch.zeros((30, 1), dtype=torch.long), scores)
    assert set(out.argmax(dim=-1).tolist()) == {1, 3}
