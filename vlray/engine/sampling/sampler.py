"""Next tokens from a step's logits, on the device, for the whole batch at once.

The order is vLLM's and transformers': penalties on the raw logits (repetition over prompt + generated tokens,
then presence and frequency over the generated ones), then, for sampled rows, temperature, top_k, top_p and
min_p, each on what the one before left. Greedy rows take the argmax of the penalised logits. Each sampled row
draws with its request's own seeded generator, so a request's tokens do not depend on its neighbours; the
filters run batched, and only the draw itself is per row. A batch with no penalties and no sampled rows is one
argmax, as before.

logprobs are the log-softmax of the model's raw logits of the step (before penalties and masks), in float32.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import torch

from vlray.inputs.prepared_request import SamplingParams
from vlray.schema import TokenLogprob


PENALTIES = ("repetition_penalty", "presence_penalty", "frequency_penalty")
"""The penalty fields, in penalize's order."""


class TokenCounts:
    """One request's token counts on the device, kept step by step: one tiny update per token, no re-upload of
    the sequence. `output` counts the generated tokens; `seen` (when a repetition penalty needs it) marks every
    token of the prompt and the output."""

    def __init__(self, token_ids: Sequence[int], num_prompt_tokens: int, vocab_size: int,
                 device: torch.device | str, with_seen: bool) -> None:
        self.output = torch.zeros(vocab_size, dtype=torch.float32, device=device)  # [V]
        generated = [t for t in token_ids[num_prompt_tokens:] if t < vocab_size]
        if generated:
            self.output.index_add_(0, torch.tensor(generated, device=device), torch.ones(len(generated), device=device))
        self.seen: torch.Tensor | None = None  # [V] bool
        if with_seen:
            self.seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            ids = [t for t in token_ids if t < vocab_size]
            if ids:
                self.seen[torch.tensor(ids, device=device)] = True

    def add(self, token_id: int) -> None:
        self.output[token_id] += 1
        if self.seen is not None:
            self.seen[token_id] = True


def param_column(params: Sequence[SamplingParams], rows: Sequence[int], name: str, device: torch.device | str,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One sampling field of the given rows, as a tensor [len(rows)] on the device."""
    return torch.tensor([getattr(params[i], name) for i in rows], dtype=dtype, device=device)


def penalize(logits: torch.Tensor, output_counts: torch.Tensor, seen: torch.Tensor | None,
             repetition: torch.Tensor, presence: torch.Tensor, frequency: torch.Tensor) -> torch.Tensor:
    """Penalised copy of logits [P, V]: transformers' repetition rule on the `seen` tokens (a positive logit is
    divided by the penalty, a negative one multiplied), then OpenAI's `logit -= presence * (count > 0) +
    frequency * count` over the generated counts [P, V]. The penalties are [P]."""
    out = logits.float()
    if seen is not None:
        rep = repetition.unsqueeze(1)  # [P, 1]
        out = torch.where(seen, torch.where(out > 0, out / rep, out * rep), out)
    return out - presence.unsqueeze(1) * (output_counts > 0) - frequency.unsqueeze(1) * output_counts


def apply_penalties(logits: torch.Tensor, params: Sequence[SamplingParams],
                    counts: Sequence[TokenCounts | None] | None) -> torch.Tensor:
    """logits [B, V] with each penalised row's penalties applied (a new tensor; logits itself when no row has
    any, so a batch without penalties costs nothing)."""
    rows = [i for i, p in enumerate(params) if p.has_penalties]
    if not rows:
        return logits
    if counts is None or any(counts[i] is None for i in rows):
        raise ValueError("a row with penalties needs its TokenCounts")
    device = logits.device
    picked = [counts[i] for i in rows]  # type: ignore[index]
    output = torch.stack([c.output for c in picked])  # [P, V]
    needs_seen = any(params[i].repetition_penalty != 1.0 for i in rows)
    seen = (torch.stack([c.seen if c.seen is not None else c.output > 0 for c in picked]) if needs_seen else None)
    index = torch.tensor(rows, device=device)
    out = logits.float().clone()
    out[index] = penalize(out[index], output, seen, *(param_column(params, rows, name, device) for name in PENALTIES))
    return out


def filtered_probs(scaled: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(probs, order) of rows [S, V] of temperature-scaled logits, sorted most likely first: top_k keeps the k
    most likely (0: all), top_p the smallest prefix whose mass reaches p (the first token always stays), min_p
    the tokens at least min_p times as likely as the most likely one. Each on what the one before kept."""
    vocab = scaled.shape[-1]
    ordered, order = torch.sort(scaled, dim=-1, descending=True)  # [S, V]
    position = torch.arange(vocab, device=scaled.device).unsqueeze(0)  # [1, V]
    k = torch.where((top_k > 0) & (top_k < vocab), top_k, vocab).unsqueeze(1)  # [S, 1]
    ordered = ordered.masked_fill(position >= k, float("-inf"))
    probs = torch.softmax(ordered, dim=-1)
    # Rows with top_p 1 are left alone: their cumulative sum can round to 1 before the tail ends.
    outside = (torch.cumsum(probs, dim=-1) - probs >= top_p.unsqueeze(1)) & (top_p < 1.0).unsqueeze(1)
    ordered = ordered.masked_fill(outside, float("-inf"))
    probs = torch.softmax(ordered, dim=-1)
    ordered = ordered.masked_fill(probs < min_p.unsqueeze(1) * probs[:, :1], float("-inf"))
    return torch.softmax(ordered, dim=-1), order


def choose(logits: torch.Tensor, params: Sequence[SamplingParams],
           generators: Sequence[torch.Generator | None]) -> torch.Tensor:
    """Next token ids [B] (on the device) from logits [B, V]: argmax for greedy rows, a seeded draw for the
    others."""
    chosen = logits.argmax(dim=-1)  # [B]
    sampled = [i for i, g in enumerate(generators) if g is not None]
    if not sampled:
        return chosen
    device = logits.device
    temperature = param_column(params, sampled, "temperature", device).unsqueeze(1)
    scaled = logits[torch.tensor(sampled, device=device)].float() / temperature  # [S, V]
    order = None
    if any(params[i].has_filters for i in sampled):
        probs, order = filtered_probs(scaled, param_column(params, sampled, "top_k", device, torch.int64),
                                      param_column(params, sampled, "top_p", device),
                                      param_column(params, sampled, "min_p", device))
    else:
        probs = torch.softmax(scaled, dim=-1)
    for row, i in enumerate(sampled):
        pick = torch.multinomial(probs[row], 1, generator=generators[i])[0]
        chosen[i] = order[row, pick] if order is not None else pick
    return chosen


class StepLogprobs:
    """The log-softmax of a step's raw logits for the rows that asked, taken before anything changes the logits;
    `resolve(chosen)` gives each row its TokenLogprob (None for rows that did not ask)."""

    def __init__(self, logits: torch.Tensor, params: Sequence[SamplingParams]) -> None:
        self.num_rows = len(params)
        self.rows = [i for i, p in enumerate(params) if p.logprobs is not None]
        self.ks = [params[i].logprobs for i in self.rows]
        self.values = (torch.log_softmax(logits[torch.tensor(self.rows, device=logits.device)].float(), dim=-1)
                       if self.rows else None)  # [L, V]

    def resolve(self, chosen: torch.Tensor) -> list[TokenLogprob | None]:
        result: list[TokenLogprob | None] = [None] * self.num_rows
        if self.values is None:
            return result
        index = torch.tensor(self.rows, device=chosen.device)
        picked = chosen[index].unsqueeze(1)  # [L, 1]
        chosen_lp = self.values.gather(1, picked).squeeze(1).tolist()
        k = max(self.ks)
        top_lp, top_ids = self.values.topk(k, dim=-1) if k else (None, None)
        top_lp = top_lp.tolist() if top_lp is not None else None
        top_ids = top_ids.tolist() if top_ids is not None else None
        for n, (i, token, k_row) in enumerate(zip(self.rows, picked.squeeze(1).tolist(), self.ks)):
            top = list(zip(top_ids[n][:k_row], top_lp[n][:k_row])) if k_row else []
            result[i] = TokenLogprob(token_id=token, logprob=chosen_lp[n], top=top)
        return result


def make_generator(params: SamplingParams, device: str | torch.device) -> torch.Generator | None:
    """The request's generator (None for greedy): seeded by its seed, or at random."""
    if params.is_greedy:
        return None
    seed = params.seed if params.seed is not None else secrets.randbits(63)
    return torch.Generator(device=device).manual_seed(seed)


def sample(logits: torch.Tensor, params: Sequence[SamplingParams], generators: Sequence[torch.Generator | None],
           counts: Sequence[TokenCounts | None] | None = None) -> list[int]:
    """One token per row of logits [B, V] (float32), penalties included; one host sync for the whole batch."""
    return choose(apply_penalties(logits, params, counts), params, generators).tolist()
