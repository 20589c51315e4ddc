import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from tiny_models import hf_tokenizer_json, sp_model, tokenizer_section  # noqa: E402

from engine.runtime.tokenizer import Tokenizer  # noqa: E402

TEXTS = [
    "Once upon a time there was a cat.",
    "über café, naïve — 你好世界 🙂👍🏽 end",
    "  leading spaces and\nnew lines\n\n",
    "12345 \t tabs",
]


def hf():
    return Tokenizer.from_bytes("hf", hf_tokenizer_json(), tokenizer_section("hf", b""))


def sp(add_dummy_prefix=True):
    return Tokenizer.from_bytes("sentencepiece", sp_model(add_dummy_prefix=add_dummy_prefix),
                                tokenizer_section("sp", b""))


TOKENIZERS = {"hf": hf, "sp": sp, "sp-nodummy": lambda: sp(False)}


@pytest.fixture(params=list(TOKENIZERS))
def tok(request):
    return TOKENIZERS[request.param]()


def stream_all(tok, ids, context=()):
    dec = tok.stream_decoder(context_ids=context)
    pieces = [dec.push(i) for i in ids]
    pieces.append(dec.flush())
    return pieces


def test_ids_and_bos(tok):
    assert tok.stop_ids == {i for i in (tok.eos_id, tok.eot_id) if i is not None}
    ids = tok.encode("the cat")
    assert ids[0] == tok.bos_id and tok.bos_id not in ids[1:]
    assert tok.encode("the cat", add_bos=False) == ids[1:]


@pytest.mark.parametrize("text", TEXTS)
def test_roundtrip(tok, text):
    ids = tok.encode(text, add_bos=False)
    assert tok.decode(ids) == text
    assert tok.decode([tok.bos_id] + ids) == text  # bos decodes to nothing


def test_byte_fallback_sentencepiece():
    t = sp()
    ids = t.encode("你", add_bos=False)
    pieces = [t.sp.IdToPiece(i) for i in ids]
    assert "<0xE4>" in pieces and "<0xBD>" in pieces and "<0xA0>" in pieces
    assert t.decode(ids) == "你"


@pytest.mark.parametrize("text", TEXTS)
def test_stream_emits_only_whole_characters(tok, text):
    ids = tok.encode(text, add_bos=True)
    pieces = stream_all(tok, ids)
    assert "".join(pieces) == tok.decode(ids) == text
    assert not any("\ufffd" in p for p in pieces)
    # a character split across byte tokens holds back: some pushes return ""
    if any(ord(c) > 0x7FF for c in text):
        assert "" in pieces[:-1]


def test_stream_keeps_leading_space_after_context(tok):
    prompt = tok.encode("Once upon", add_bos=True)
    full = tok.encode("Once upon a time", add_bos=True)
    assert full[:len(prompt)] == prompt
    pieces = stream_all(tok, full[len(prompt):], context=prompt)
    assert "".join(pieces) == " a time"


def test_stream_long_sequence_matches_decode(tok):
    text = " ".join(TEXTS) * 5
    ids = tok.encode(text)
    assert "".join(stream_all(tok, ids)) == tok.decode(ids) == text


def test_special_tokens_in_text():
    t = hf()
    ids = t.encode("Hi<|eot_id|>", add_bos=False)
    assert ids[-1] == t.eot_id == 2
    assert t.eot_id not in t.encode("Hi<|eot_id|>", add_bos=False, parse_special=False)
    assert t.decode(ids) == "Hi"
    assert t.decode(ids, skip_special_tokens=False) == "Hi<|eot_id|>"
    s = sp()
    ids = s.encode("Hi</s>", add_bos=False)
    assert ids[-1] == s.eos_id == 2
    assert s.decode(ids, skip_special_tokens=False).endswith("</s>")
    assert s.eos_id not in s.encode("Hi</s>", add_bos=False, parse_special=False)


def test_decode_ignores_ids_beyond_the_tokenizer(tok):
    ids = tok.encode("the cat", add_bos=False)
    assert tok.decode(ids + [tok.vocab_size, tok.vocab_size + 7]) == "the cat"


def test_config_overrides_tokenizer_defaults():
    t = Tokenizer.from_bytes("hf", hf_tokenizer_json(), {"bos_id": 1, "eos_id": 0, "eot_id": None,
                                                         "add_bos": False})
    assert (t.bos_id, t.eos_id, t.eot_id, t.add_bos) == (1, 0, None, False)
    assert t.encode("cat")[0] != 1


def test_bad_input():
    with pytest.raises(ValueError, match="unknown tokenizer type"):
        Tokenizer.from_bytes("bpe", b"", {})
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        Tokenizer.from_bytes("sentencepiece", b"garbage", {})
    with pytest.raises(ValueError, match="not a tokenizer.json"):
        Tokenizer.from_bytes("hf", b"{}", {})


def test_stream_does_not_hold_invalid_bytes_forever():
    # A model can sample byte tokens that never form UTF-8 (here: 12 stray continuation bytes).
    t = sp()
    stray = t.sp.PieceToId("<0x80>")
    pieces = stream_all(t, [stray] * 12)
    assert "".join(pieces[:-1]), "invalid bytes were held back until the end"
    assert set("".join(pieces)) == {"\ufffd"}
