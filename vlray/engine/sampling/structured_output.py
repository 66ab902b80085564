"""Decoding constrained to JSON (OpenAI's `response_format` json_object and json_schema), on xgrammar, the
grammar engine vLLM and SGLang use.

Each constrained request has a GrammarState (an xgrammar GrammarMatcher over its compiled grammar). Before a step's
draw, apply_grammar fills one token bitmask for the step's constrained rows and sets every token the grammar
forbids to -inf, in place and batched, on the logits' device; after the draw the engine hands each sampled token
to its state. The end of the JSON is where the grammar allows the model's end-of-sequence tokens (and only there),
so a constrained request ends the way any other does: at EOS, with finish_reason "stop", or at max_tokens with
"length" and the JSON unfinished, as OpenAI's API does.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Sequence

import torch
import xgrammar as xgr
from transformers import PreTrainedTokenizerBase

from vlray.inputs.prepared_request import StructuredOutput
from vlray.schema import RequestError

# Compiled grammars kept (xgrammar's own cache, by schema): a server sees the same few schemas again and again.
GRAMMAR_CACHE_BYTES = 64 * 2**20
ANY_OBJECT = '{"type": "object"}'


class GrammarCompiler:
    """One per engine: compiles a request's StructuredOutput for the model's vocabulary, cached by schema."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab_size: int, stop_token_ids: Iterable[int]) -> None:
        """`vocab_size`: the model's logits width, which may be larger than the tokenizer's (its padding rows
        are never allowed); `stop_token_ids`: the model's EOS tokens, allowed exactly where the JSON may end."""
        self.vocab_size = vocab_size
        self.info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size,
                                                       stop_token_ids=sorted(set(stop_token_ids)))
        self._compiler = xgr.GrammarCompiler(self.info, max_threads=1, cache_limit_bytes=GRAMMAR_CACHE_BYTES)
        self._lock = threading.Lock()  # requests are added from the engine thread, but the LLM facade may share it

    def matcher(self, spec: StructuredOutput) -> "GrammarState":
        """A fresh state for one request; RequestError naming response_format when its schema does not compile."""
        with self._lock:
            try:
                # json_object is OpenAI's "any JSON object" (xgrammar's builtin JSON grammar takes arrays and
                # scalars too). Compact separators, no free whitespace: a model cannot spin on blanks until
                # max_tokens.
                schema = ANY_OBJECT if spec.kind == "json_object" else spec.schema or "{}"
                compiled = self._compiler.compile_json_schema(schema, any_whitespace=False, strict_mode=True)
            except (RuntimeError, ValueError, TypeError, json.JSONDecodeError) as exc:
                raise RequestError(f"response_format: the JSON schema cannot be used for decoding: {exc}",
                                   kind="invalid_request") from None
        return GrammarState(xgr.GrammarMatcher(compiled))


class GrammarState:
    """Where one request stands in its grammar."""

    def __init__(self, matcher: xgr.GrammarMatcher) -> None:
        self._matcher = matcher

    @property
    def is_finished(self) -> bool:
        """The grammar has taken its stop token: nothing more may follow."""
        return self._matcher.is_terminated()

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        self._matcher.fill_next_token_bitmask(bitmask, row)

    def accept(self, token_id: int) -> None:
        """Take the sampled token; ValueError if the grammar forbids it (the mask makes that a bug, so the
        request fails alone rather than going on with output its grammar cannot describe)."""
        if not self._matcher.accept_token(int(token_id)):
            raise ValueError(f"token {token_id} is not allowed by the request's response_format grammar")


def apply_grammar(logits: torch.Tensor, states: Sequence[GrammarState | None]) -> None:
    """Set the logits [B, V] of every token each row's grammar forbids to -inf, in place (rows without a grammar,
    and rows whose grammar has ended, are left alone)."""
    rows = [row for row, state in enumerate(states) if state is not None and not state.is_finished]
    if not rows:
        return
    bitmask = xgr.allocate_token_bitmask(len(states), logits.shape[-1])  # int32 bits on the host
    for row in rows:
        states[row].fill(bitmask, row)  # type: ignore[union-attr]
    xgr.apply_token_bitmask_inplace(logits, bitmask.to(logits.device, non_blocking=True), indices=rows)
