"""Shared body of the two tokenizer harnesses (fuzz_sentencepiece.py, fuzz_tokenizer_json.py):
bytes -> engine.runtime.tokenizer.Tokenizer.from_bytes(kind, ...) -> encode, decode and stream-decode a
short text. Allowed outcome: a working tokenizer or TokenizerError with a one-line message."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

TEXT = "Hello world, 123 <s> caf\u00e9 <|eot_id|>\n"


def use(kind, data):
    from engine.runtime.tokenizer import Tokenizer

    tok = Tokenizer.from_bytes(kind, data, {})
    ids = tok.encode(TEXT, add_bos=True)
    tok.decode(ids)
    tok.decode(ids, skip_special_tokens=False)
    stream = tok.stream_decoder()
    for i in ids[:8] + [tok.vocab_size - 1, tok.vocab_size, -1]:
        stream.push(i)
    stream.flush()
    return tok


def check(kind, data: bytes, timed=True):
    from engine.runtime.tokenizer import TokenizerError

    return harness.run_checked(lambda: use(kind, data), (TokenizerError,), timed=timed)


def main(kind, corpus):
    def warm_up():
        from engine.runtime import tokenizer  # noqa: F401
        for name in sorted(os.listdir(os.path.join(harness.CORPUS, corpus)))[:1]:
            with open(os.path.join(harness.CORPUS, corpus, name), "rb") as f:
                check(kind, f.read(), timed=False)

    harness.fuzz_main(lambda data: check(kind, data), warm_up)
