"""A request's state inside the continuous-batching engine, in plain Python (the scheduler's unit of work)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(frozen=True, slots=True)
class ImageSpan:
    """Token positions [start, end) of one image's tokens, and the image's content hash."""

    start: int
    end: int
    content_hash: str


@dataclass(eq=False)
class Sequence:
    """Token ids so far (prompt, then generated), the KV blocks that hold them, and where it stands.

    `num_computed_tokens` tokens have their K/V in the cache; the last token of a running sequence is the one
    the next decode step computes. `payload` is the engine's (model inputs, sampler state): the scheduler never
    looks at it.
    """

    seq_id: int
    prompt_token_ids: list[int]
    max_tokens: int
    image_spans: list[ImageSpan] = field(default_factory=list)
    payload: Any = None
    output_token_ids: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    block_table: list[int] = field(default_factory=list)
    num_cached_tokens: int = 0  # of the last admission: tokens whose K/V came from the prefix cache
    num_computed_tokens: int = 0
    num_keyed_blocks: int = 0  # leading blocks of block_table registered in the prefix cache (BlockManager)
    prefix_group: str | None = None  # samples of one prompt: siblings wait for the first one's prefill (Scheduler)

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def last_token_id(self) -> int:
        return self.output_token_ids[-1] if self.output_token_ids else self.prompt_token_ids[-1]

    def __len__(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def max_total_tokens(self) -> int:
        """Tokens this sequence can ever hold: its KV cache need at the end."""
        return len(self.prompt_token_ids) + self.max_tokens

    def append_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)

    def cacheable_prefix_limit(self, block_size: int, at_most: int | None = None) -> int:
        """Most tokens whose K/V may come from the prefix cache (and at most `at_most`): whole blocks, at least
        one token left to compute (its logits give the next token), and never a cut through an image (the
        vision encoder runs on whole images)."""
        limit = ((len(self) - 1) // block_size) * block_size
        if at_most is not None:
            limit = min(limit, (at_most // block_size) * block_size)
        moved = True
        while moved and limit > 0:
            moved = False
            for span in self.image_spans:
                if span.start < limit < span.end:
                    limit = (span.start // block_size) * block_size
                    moved = True
        return limit

    def images_in_block(self, index: int, block_size: int) -> tuple[str, ...]:
        """Content hashes of the images with tokens in block `index` (part of the block's cache key)."""
        start, end = index * block_size, (index + 1) * block_size
        return tuple(s.content_hash for s in self.image_spans if s.start < end and s.end > start)
