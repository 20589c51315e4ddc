"""Fuzz the SentencePiece .model loader (engine.runtime.tokenizer, kind "sentencepiece"); see fuzz_tokenizer.py."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fuzz_tokenizer  # noqa: E402

KIND, CORPUS = "sentencepiece", "sentencepiece"


def check(data: bytes, timed=True):
    return fuzz_tokenizer.check(KIND, data, timed=timed)


if __name__ == "__main__":
    fuzz_tokenizer.main(KIND, CORPUS)
