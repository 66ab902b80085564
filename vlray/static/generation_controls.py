"""Per-row sampling and stopping for transformers `generate`, so one batch can mix requests' settings.

`generate` takes one GenerationConfig per call. To batch requests with different temperature, top_p, seed,
max_tokens and stop strings, we run it greedily and let these hooks act per row:
- RowSampler draws each sampled row's token with that row's own seeded generator and leaves only that token
  standing, so greedy selection picks it; greedy rows are untouched. A row's tokens therefore do not depend on
  which other rows share its batch: same seed, same tokens.
- RowStopper ends a row at its own max_tokens or when its text contains one of its stop strings.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import torch
from transformers import LogitsProcessor, PreTrainedTokenizerBase, StoppingCriteria

from vlray.engine.sampler import sample_token
from vlray.inputs.prepared_request import SamplingParams


class RowSampler(LogitsProcessor):
    """Samples the rows with temperature > 0 with per-row generators; greedy rows pass through."""

    def __init__(self, params: Sequence[SamplingParams], device: torch.device | str) -> None:
        self.params = list(params)
        self.generators: list[torch.Generator | None] = []
        for p in self.params:
            if p.is_greedy:
                self.generators.append(None)
                continue
            seed = p.seed if p.seed is not None else secrets.randbits(63)
            self.generators.append(torch.Generator(device=device).manual_seed(seed))

    @property
    def is_needed(self) -> bool:
        return any(g is not None for g in self.generators)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row, (p, generator) in enumerate(zip(self.params, self.generators)):
            if generator is None:
                continue
            token = sample_token(scores[row], p.temperature, p.top_p, generator)
            scores[row] = float("-inf")
            scores[row, token] = 0.0
        return scores


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
