"""The engine's streaming interface: each request's output as text deltas, made while it is generated.

A backend (the continuous engine at every step, or the static path's streamer while generate runs) feeds each
request's new token ids to that request's RequestStream and hands every delta it returns to a DeltaSink.
RequestStream owns what makes streaming correct, whatever the engine:
- it releases text only up to a whole character (IncrementalDetokenizer);
- it holds back text that could be the start of one of the request's stop strings, and ends the request when
  one appears;
- it ends the request at EOS or max_tokens, and its last delta completes the text to exactly the text the
  non-streamed result has (both come from finish_sequence).
Nothing here knows Ray or transformers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vlray.engine.generated_sequence import GeneratedSequence, finish_sequence
from vlray.engine.incremental_detokenizer import IncrementalDetokenizer
from vlray.inputs.prepared_request import SamplingParams
from vlray.schema import TokenLogprob

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StreamDelta:
    """What one request produced since its previous delta; the last one has a finish_reason."""

    request_id: str
    text: str
    token_ids: tuple[int, ...]
    text_offset: int  # characters of this request's text released before this delta
    num_prompt_tokens: int
    num_generated_tokens: int  # so far, this delta's tokens included
    finish_reason: str | None = None  # stop or length, on the last delta only
    logprobs: tuple[TokenLogprob, ...] | None = None  # aligned with token_ids, when the request asked for them

    @property
    def is_final(self) -> bool:
        return self.finish_reason is not None


DeltaSink = Callable[[StreamDelta], None]
"""Where an engine hands deltas, on its generation thread: it must return quickly and must not raise.

When a failed batch is retried, a request's deltas start again from text_offset 0; a consumer keeps what it
already has and skips the repeated text by its offset."""


class RequestStream:
    """One request's new token ids in, StreamDeltas out."""

    def __init__(self, request_id: str, sampling: SamplingParams, num_prompt_tokens: int,
                 eos_token_ids: set[int], decode: Callable[[list[int]], str]) -> None:
        self.request_id = request_id
        self.sampling = sampling
        self.num_prompt_tokens = num_prompt_tokens
        self.eos_token_ids = eos_token_ids
        self.decode = decode
        self.finish_reason: str | None = None
        self.result: GeneratedSequence | None = None  # the request's whole output, once it has ended
        self._detokenizer = IncrementalDetokenizer(decode)
        self._text = ""  # whole characters decoded so far
        self._num_sent = 0  # characters of _text already released
        self._unsent_ids: list[int] = []
        self._wants_logprobs = sampling.logprobs is not None
        self._logprobs: list[TokenLogprob] = []
        self._num_logprobs_sent = 0
        self._stopped_at: int | None = None
        self._longest_stop = max((len(s) for s in sampling.stop), default=0)

    @property
    def token_ids(self) -> list[int]:
        return self._detokenizer.token_ids

    @property
    def is_finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def logprobs(self) -> list[TokenLogprob] | None:
        """One per token of the result (None when the request did not ask for logprobs)."""
        if not self._wants_logprobs:
            return None
        return self._logprobs[: len(self.result.token_ids)] if self.result is not None else list(self._logprobs)

    def push(self, token_ids: Sequence[int], logprobs: Sequence[TokenLogprob] | None = None) -> StreamDelta | None:
        """Add newly generated tokens (and their logprobs, one each, when the request asked): a delta when there
        is text to release or the request ended.

        Tokens after the request's end are ignored (engines pad the rows of finished requests)."""
        if self.is_finished:
            return None
        for n, token_id in enumerate(token_ids):
            self._unsent_ids.append(token_id)
            if self._wants_logprobs and logprobs is not None:
                self._logprobs.append(logprobs[n])
            if self._add(token_id):
                return self._final_delta()
        releasable = len(self._text) - self._stop_prefix_length()
        if releasable <= self._num_sent:
            return None
        return self._delta(self._text[self._num_sent:releasable])

    def close(self) -> StreamDelta | None:
        """The engine stopped generating for this request: its last delta (None if it had already ended)."""
        return None if self.is_finished else self._final_delta()

    def _add(self, token_id: int) -> bool:
        """Take one token; True when the request ends with it."""
        piece = self._detokenizer.add(token_id)
        if token_id in self.eos_token_ids:
            return True
        searched_from = max(0, len(self._text) - self._longest_stop + 1)
        self._text += piece
        if self.sampling.stop:
            # Searched with the unfinished character too, as the non-streamed path sees the text.
            text = self._text + self._detokenizer.pending_text
            if any(text.find(stop, searched_from) >= 0 for stop in self.sampling.stop):
                self._stopped_at = len(self.token_ids)
                return True
        return len(self.token_ids) >= self.sampling.max_tokens

    def _unsent_logprobs(self) -> tuple[TokenLogprob, ...] | None:
        if not self._wants_logprobs:
            return None
        unsent = tuple(self._logprobs[self._num_logprobs_sent:])  # pushed with _unsent_ids, so aligned with them
        self._num_logprobs_sent = len(self._logprobs)
        return unsent

    def _stop_prefix_length(self) -> int:
        """Length of the longest end of the text that could begin a stop string (held back until it can't)."""
        for length in range(min(self._longest_stop - 1, len(self._text) - self._num_sent), 0, -1):
            tail = self._text[-length:]
            if any(stop.startswith(tail) for stop in self.sampling.stop):
                return length
        return 0

    def _final_delta(self) -> StreamDelta:
        final = finish_sequence(self.token_ids, self.sampling, self.eos_token_ids, self._stopped_at, self.decode)
        sent = self._text[: self._num_sent]
        if not final.text.startswith(sent):
            # Cannot happen with byte-level BPE; a decoder that rewrites earlier text would break the promise.
            log.warning("request %s: streamed text is not a prefix of its final text", self.request_id)
        self.finish_reason = final.finish_reason
        self.result = final
        return self._delta(final.text[len(sent):] if final.text.startswith(sent) else "")

    def _delta(self, text: str) -> StreamDelta:
        delta = StreamDelta(
            request_id=self.request_id, text=text, token_ids=tuple(self._unsent_ids), text_offset=self._num_sent,
            num_prompt_tokens=self.num_prompt_tokens, num_generated_tokens=len(self.token_ids),
            finish_reason=self.finish_reason, logprobs=self._unsent_logprobs())
        self._num_sent += len(text)
        self._unsent_ids = []
        return delta
