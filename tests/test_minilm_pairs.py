"""Sentence pairs for a tokenizer whose tokenizer.json pads and truncates (the pretrained MiniLM's, to 128):
the pair encoding (data.encode_pairs) cuts to max_len and never pads, as for any other tokenizer."""

from __future__ import annotations

from stilts_tui.train import data, transfer


def test_pairs_of_a_padding_tokenizer_are_cut_to_max_len_and_not_padded():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(transfer.model_location({"name": "sentence-transformers/all-MiniLM-L6-v2"}))
    assert tok.backend_tokenizer.padding is not None  # the case: the file itself asks for padding to 128
    long = " ".join(["banana"] * 40)
    out = data.encode_pairs(tok, ["a short one", long], ["and another", long], 24)
    assert tok.backend_tokenizer.padding is not None  # the tokenizer itself is left as it was
    plain = tok("a short one", "and another")["input_ids"]  # (a call of the tokenizer resets its padding)
    assert out["input_ids"][0] == plain  # no padding added
    assert len(out["input_ids"][1]) == 24 and out["input_ids"][1][-1] == tok.sep_token_id
