"""Text of a growing token sequence, a piece at a time, that never ends in half a character.

Byte-level BPE tokens can split one UTF-8 character over several tokens; decoding a sequence that stops inside
one gives U+FFFD. Each new token is decoded together with a short window of the tokens before it (the way
vLLM's incremental detokenizer does), so decoders that drop or add a leading space at a sequence start still
give the same text as decoding the whole sequence, and a piece is only released once it ends on a whole
character. The pieces joined equal `decode(all ids)`, except that a sequence cut inside a character keeps its
partial bytes unreleased (they are the caller's to flush by a full decode).
"""

from __future__ import annotations

from collections.abc import Callable

REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    """Feeds token ids one at a time, returns the text each completes ("" while a character is unfinished)."""

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self.decode = decode
        self.token_ids: list[int] = []
        self._prefix_offset = 0  # window start: decoded only for context
        self._read_offset = 0  # tokens up to here are already released as text
        self.pending_text = ""  # what the unreleased tokens decode to now (an unfinished character: U+FFFD)

    def add(self, token_id: int) -> str:
        """Append one token; the new text it completes."""
        self.token_ids.append(token_id)
        prefix_text = self.decode(self.token_ids[self._prefix_offset:self._read_offset])
        new_text = self.decode(self.token_ids[self._prefix_offset:])
        if len(new_text) <= len(prefix_text) or new_text.endswith(REPLACEMENT_CHAR):
            self.pending_text = new_text[len(prefix_text):]
            return ""  # a special token (decodes to nothing) or an unfinished character
        self._prefix_offset, self._read_offset = self._read_offset, len(self.token_ids)
        self.pending_text = ""
        return new_text[len(prefix_text):]
