"""Each token's own text and bytes, for logprobs in OpenAI's shape (`token`, `bytes`).

A byte-level BPE token (Qwen's) may hold part of a character: its text alone is then U+FFFD, and only its
bytes say what it is (OpenAI gives both for that reason). The bytes come from the token's string through
GPT-2's byte-to-character table, which byte-level BPE vocabularies are written in; added and special tokens
are their own UTF-8 text.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from transformers.convert_slow_tokenizer import bytes_to_unicode


@lru_cache(maxsize=1)
def _char_to_byte() -> dict[str, int]:
    return {char: byte for byte, char in bytes_to_unicode().items()}


def token_pieces(tokenizer, token_ids: Sequence[int]) -> list[tuple[str, bytes]]:
    """(text, bytes) of each token on its own: the text as decode gives it, the bytes the token stands for."""
    table = _char_to_byte()
    added = set(tokenizer.get_added_vocab())
    pieces = []
    for token_id, token in zip(token_ids, tokenizer.convert_ids_to_tokens(list(token_ids))):
        text = tokenizer.decode([token_id])
        if token is None:
            raw = b""
        elif token in added or not all(ch in table for ch in token):
            raw = text.encode()
        else:
            raw = bytes(table[ch] for ch in token)
        pieces.append((text, raw))
    return pieces
