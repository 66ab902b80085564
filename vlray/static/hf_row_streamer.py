"""The streaming interface on transformers `generate`: a streamer that splits each step's tokens by row."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers.generation.streamers import BaseStreamer

from vlray.engine.token_stream import DeltaSink, RequestStream
from vlray.inputs.prepared_request import PreparedRequest


class RowStreamer(BaseStreamer):
    """Gives each row of a batch its own RequestStream and sends their deltas to one sink."""

    def __init__(self, requests: Sequence[PreparedRequest], eos_token_ids: set[int],
                 decode: Callable[[list[int]], str], sink: DeltaSink) -> None:
        self.streams = [RequestStream(r.request_id, r.sampling, r.num_prompt_tokens, eos_token_ids, decode)
                        for r in requests]
        self.sink = sink

    def put(self, value: torch.Tensor) -> None:
        """generate calls this with the prompts first ([B, T], skipped), then each step's new tokens ([B])."""
        if value.dim() != 1:
            return
        for stream, token_id in zip(self.streams, value.tolist()):
            delta = stream.push([token_id])
            if delta is not None:
                self.sink(delta)

    def end(self) -> None:
        """Generation is over: close the rows that had not ended (none, when every row met its own limit)."""
        for stream in self.streams:
            delta = stream.close()
            if delta is not None:
                self.sink(delta)
