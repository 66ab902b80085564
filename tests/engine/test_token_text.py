"""Token text and bytes for logprobs: whole characters, split characters, special tokens."""

from vlray.engine.token_text import token_pieces


def test_pieces_join_back_to_the_text(tiny_loaded):
    tokenizer = tiny_loaded.tokenizer
    ids = tokenizer.encode(" the café 東京<|im_end|>")
    pieces = token_pieces(tokenizer, ids)
    assert b"".join(raw for _, raw in pieces).decode() == " the café 東京<|im_end|>"
    assert pieces[0] == (" the", b" the")
    split = [text for text, raw in pieces if len(raw) == 1 and raw[0] >= 0x80]
    assert split and all(text == "\ufffd" for text in split)  # part of a character: only its bytes tell
    assert pieces[-1] == ("<|im_end|>", b"<|im_end|>")
