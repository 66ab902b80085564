"""Where one request's generated tokens really end, and its text: shared by every generation path (batched
generate, streaming), so that they all cut a sequence the same way."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vlray.inputs.prepared_request import SamplingParams


@dataclass(slots=True)
class GeneratedSequence:
    """One row's output."""

    token_ids: list[int]
    text: str
    finish_reason: str  # stop or length


def finish_sequence(row_ids: Sequence[int], params: SamplingParams, eos_token_ids: set[int],
                    stopped_at: int | None, decode: Callable[[list[int]], str]) -> GeneratedSequence:
    """Cut a row of generate's output (which pads finished rows) to what the request produced.

    The row ended at the earliest of: its max_tokens, the step a stop string appeared (`stopped_at` tokens),
    its first EOS (kept in token_ids, as generate keeps it). Stop strings are cut from the text, OpenAI style.
    """
    ids = list(row_ids[: params.max_tokens])
    end, reason = len(ids), "length"
    if stopped_at is not None and stopped_at <= end:
        end, reason = stopped_at, "stop"
    first_eos = next((i for i, t in enumerate(ids[:end]) if t in eos_token_ids), None)
    if first_eos is not None:
        end, reason = first_eos + 1, "stop"
    ids = ids[:end]
    text = decode(ids)
    hits = [pos for pos in (text.find(s) for s in params.stop) if pos >= 0]
    if hits:
        text, reason = text[: min(hits)], "stop"
    return GeneratedSequence(ids, text, reason)
