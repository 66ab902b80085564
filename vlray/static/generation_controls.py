"""Per-row sampling and stopping for transformers `generate`, so one batch can mix requests' settings.

`generate` takes one GenerationConfig per call. To batch requests with different temperature, top_p, seed,
max_tokens and stop strings, we run it greedily and let these hooks act per row:
- RowSampler first applies each row's repetition, presence and frequency penalties (the engine's own functions,
  vlray/engine/sampling/sampler.py, on counts built from generate's input_ids each step), then draws each sampled row's
  token (temperature, top_k, top_p, min_p) with that row's own seeded generator and leaves only that token
  standing, so greedy selection picks it; greedy rows keep their penalised logits. A row's tokens therefore do
  not depend on which other rows share its batch: same seed, same tokens.
- RowStopper ends a row at its own max_tokens or when its text contains one of its stop strings.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LogitsProcessor, PreTrainedTokenizerBase, StoppingCriteria

from vlray.engine.sampling.sampler import PENALTIES, choose, make_generator, param_column, penalize
from vlray.inputs.prepared_request import SamplingParams


class RowSampler(LogitsProcessor):
    """Penalises the rows that ask for it, and samples the rows with temperature > 0 with per-row generators."""

    def __init__(self, params: Sequence[SamplingParams], device: torch.device | str, prompt_len: int = 0,
                 num_prompt_tokens: Sequence[int] | None = None) -> None:
        """prompt_len: the batch's padded prompt width; num_prompt_tokens: each row's own (left padding is the
        difference, and no part of what a penalty counts)."""
        self.params = list(params)
        self.device = device
        self.generators = [make_generator(p, device) for p in self.params]
        self.prompt_len = prompt_len
        lengths = list(num_prompt_tokens) if num_prompt_tokens is not None else [prompt_len] * len(self.params)
        self.num_pads = [prompt_len - n for n in lengths]
        self.penalised = [i for i, p in enumerate(self.params) if p.has_penalties]
        self.sampled = [i for i, g in enumerate(self.generators) if g is not None]

    @property
    def is_needed(self) -> bool:
        return bool(self.sampled or self.penalised)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.penalised:
            self._penalise(input_ids, scores)
        if self.sampled:
            index = torch.tensor(self.sampled, device=scores.device)
            tokens = choose(scores[index], [self.params[i] for i in self.sampled],
                            [self.generators[i] for i in self.sampled])  # [S]
            scores[index] = float("-inf")
            scores[index, tokens] = 0.0
        return scores

    def _penalise(self, input_ids: torch.Tensor, scores: torch.Tensor) -> None:
        """In place on the penalised rows of scores [B, V], from the tokens so far (input_ids [B, T])."""
        rows = self.penalised
        device = scores.device
        index = torch.tensor(rows, device=device)
        ids = input_ids[index]  # [P, T]
        vocab = scores.shape[-1]
        generated = ids[:, self.prompt_len:].clamp(max=vocab - 1)
        output = torch.zeros(len(rows), vocab, device=device).scatter_add_(
            1, generated, torch.ones_like(generated, dtype=torch.float32))  # [P, V]
        seen = None
        if any(self.params[i].repetition_penalty != 1.0 for i in rows):
            pads = torch.tensor([self.num_pads[i] for i in rows], device=device).unsqueeze(1)
            valid = torch.arange(ids.shape[1], device=device).unsqueeze(0) >= pads
            # Pads (and anything past the vocabulary) go to a spare column that is dropped.
            marked = torch.where(valid & (ids < vocab), ids, vocab)
            seen = torch.zeros(len(rows), vocab + 1, dtype=torch.bool, device=device).scatter_(1, marked, True)
            seen = seen[:, :vocab]
        penalties = (param_column(self.params, rows, name, device) for name in PENALTIES)
        scores[index] = penalize(scores[index], output, seen, *penalties).to(scores.dtype)


class RowStopper(StoppingCriteria):
    """Marks a row done at its own max_tokens, or once its generated text contains one of its stop strings.

    `stopped_at[row]` records after how many tokens a stop string ended the row (None: it did not), because
    generate pads a finished row and its padding is indistinguishable from EOS for Qwen (pad is <|endoftext|>).
    """

    def __init__(self, params: Sequence[SamplingParams], prompt_len: int,
                 tokenizer: PreTrainedTokenizerBase) -> None:
        self.max_tokens = [p.max_tokens for p in params]
        self.stops = [p.stop for p in params]
        self.prompt_len = prompt_len
        self.tokenizer = tokenizer
        self.stopped_at: list[int | None] = [None] * len(self.stops)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        num_generated = input_ids.shape[1] - self.prompt_len
        done = [num_generated >= limit for limit in self.max_tokens]
        for row, stops in enumerate(self.stops):
            if self.stopped_at[row] is not None:
                done[row] = True
            elif stops and not done[row]:
                text = self.tokenizer.decode(input_ids[row, self.prompt_len:], skip_special_tokens=True)
                if any(s in text for s in stops):
                    self.stopped_at[row] = num_generated
                    done[row] = True
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
