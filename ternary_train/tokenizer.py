"""Train the SentencePiece tokenizer on the corpus, and tokenize the corpus once.

    python -m ternary_train.tokenizer --corpus ~/.cache/ternary-engine/corpus --vocab 4096

Writes ``tok{vocab}.model`` next to the corpus, plus ``tok{vocab}.train.npy`` and
``tok{vocab}.val.npy`` (uint16 token streams, loaded with mmap by the trainer).

Settings, and why:
- BPE, byte_fallback=True: any UTF-8 byte sequence encodes; no <unk> in practice.
- normalization "identity", remove_extra_whitespaces=False, add_dummy_prefix=False:
  decode(encode(text)) == text exactly, and the token stream of a whole file equals
  the concatenation of its lines' streams with the "\\n" piece between them.
- "\\n" is a user-defined piece: paragraphs are separated by one newline token.
- split_digits=True: numbers are digit by digit (verse numbers, years).
- max_sentence_length=1 << 17 bytes: the longest corpus paragraph is ~17 kB; the
  default (4192) would silently drop every longer paragraph from training.
- ids: 0 <unk>, 1 <s> (bos), 2 </s> (eos), no pad (Llama convention).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .corpus import DEFAULT_OUT

NEWLINE = "\n"


def train_tokenizer(train_txt: Path, model_prefix: Path, vocab_size: int = 4096,
                    threads: int = 1, input_sentence_size: int = 0) -> Path:
    import sentencepiece as spm
    spm.SentencePieceTrainer.train(
        input=str(train_txt),
        model_prefix=str(model_prefix),
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=0.9999,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        user_defined_symbols=[NEWLINE],
        max_sentence_length=1 << 17,
        input_sentence_size=input_sentence_size,
        shuffle_input_sentence=True,
        seed_sentencepiece_size=1_000_000,
        num_threads=threads,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        minloglevel=1,
    )
    return Path(str(model_prefix) + ".model")


def load(model_path):
    import sentencepiece as spm
    return spm.SentencePieceProcessor(model_file=str(model_path))


def encode_file(sp, path: Path) -> np.ndarray:
    """Token stream of a whole text file (== sp.encode(file text), done per line)."""
    nl = sp.piece_to_id(NEWLINE)
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    out: list[int] = []
    for i, line in enumerate(lines):
        if i:
            out.append(nl)
        if line:
            out.extend(sp.encode(line))
    if sp.get_piece_size() > 65535:
        raise ValueError("vocab does not fit uint16")
    return np.asarray(out, dtype=np.uint16)


def tokenize_corpus(corpus: Path, model_path: Path) -> dict[str, Path]:
    sp = load(model_path)
    outs = {}
    stem = model_path.with_suffix("")
    for split in ("train", "val"):
        ids = encode_file(sp, corpus / f"{split}.txt")
        p = Path(f"{stem}.{split}.npy")
        tmp = Path(f"{stem}.{split}.tmp.npy")
        np.save(tmp, ids)
        tmp.replace(p)
        outs[split] = p
    return outs


def main(argv=None):
    ap = argparse.ArgumentParser(description="train the SentencePiece tokenizer")
    ap.add_argument("--corpus", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    corpus = args.corpus.expanduser()
    model = train_tokenizer(corpus / "train.txt", corpus / f"tok{args.vocab}", args.vocab,
                            threads=args.threads)
    outs = tokenize_corpus(corpus, model)
    for split, p in outs.items():
        ids = np.load(p, mmap_mode="r", allow_pickle=False)
        nbytes = (corpus / f"{split}.txt").stat().st_size
        print(f"{split}: {len(ids)} tokens, {nbytes / len(ids):.2f} bytes/token -> {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
