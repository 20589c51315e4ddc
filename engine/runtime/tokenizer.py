"""One tokenizer interface over SentencePiece ``.model`` bytes and HF ``tokenizer.json`` bytes.

    tok = Tokenizer.from_bytes("hf", data, config["tokenizer"])
    ids = tok.encode("Hello", add_bos=True)
    text = tok.decode(ids)
    stream = tok.stream_decoder(context_ids=ids)     # incremental, complete UTF-8 only
    piece = stream.push(next_id)                     # "" until a whole character is known

The .tpk config (docs/CONTRACTS.md, ``tokenizer``) is the source of truth for bos/eos/eot
and add_bos; the tokenizer file itself only fills in keys the config lacks. Its ``pre_split``
(GGUF byte-level BPE models) names the llama.cpp pre-tokenizer type whose regexes split text
into words before the BPE merges (engine/runtime/pretokenize.py); the tokenizer.json of such a
model then only maps bytes.
"""
from __future__ import annotations

import re

from engine.runtime import pretokenize

KINDS = ("sentencepiece", "hf")


class TokenizerError(ValueError):
    """Tokenizer bytes that do not load (or misbehave): the message says why, in one line."""


# Loading checks a tokenizer on this text: a file can parse and still fail on every encode
# (e.g. a BPE model naming an unk_token its vocabulary lacks), which must show at load time.
_PROBE = "Hello, world! 123 caf\u00e9 \u6771\u4eac \U0001f642\n"


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return (text[:300] + "...") if len(text) > 300 else text or type(e).__name__


def _foreign(e: BaseException) -> bool:
    """An error raised by the tokenizer library (tokenizers' Rust panics arrive as
    pyo3_runtime.PanicException, a BaseException), not an interrupt or exit."""
    return not isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit))

# Tokens of context kept by StreamDecoder: enough for any decoder rule that looks back
# (SentencePiece's leading-space strip, byte-fallback runs of up to 4 bytes).
_STREAM_CONTEXT = 6


class Tokenizer:
    """Common interface; build with ``Tokenizer.from_bytes``."""

    kind: str
    bos_id: int | None
    eos_id: int | None
    eot_id: int | None
    add_bos: bool
    chat_template: str | None
    vocab_size: int
    special_ids: frozenset

    @staticmethod
    def from_bytes(kind: str, data: bytes, config: dict | None = None) -> "Tokenizer":
        config = dict(config or {})
        if kind == "sentencepiece":
            return SentencePieceTokenizer(bytes(data), config)
        if kind == "hf":
            return HFTokenizer(bytes(data), config)
        raise TokenizerError(f"unknown tokenizer type {kind!r} (expected one of {KINDS})")

    def _init_common(self, config: dict, bos, eos, eot):
        def pick(key, fallback):  # a key present in the config wins, even as null
            if key not in config:
                return fallback
            return int(config[key]) if config[key] is not None else None

        self.bos_id = pick("bos_id", bos)
        self.eos_id = pick("eos_id", eos)
        self.eot_id = pick("eot_id", eot)
        self.add_bos = bool(config.get("add_bos", self.bos_id is not None))
        self.chat_template = config.get("chat_template")

    @property
    def stop_ids(self) -> frozenset:
        """Ids that end generation: eos and eot (end of turn)."""
        return frozenset(i for i in (self.eos_id, self.eot_id) if i is not None)

    def encode(self, text: str, add_bos: bool | None = None, parse_special: bool = True) -> list[int]:
        """Text -> ids. add_bos None: the model's default. parse_special: special-token
        strings in the text (e.g. "<|eot_id|>" from a chat template) become their ids."""
        ids = self._encode(text, parse_special)
        if add_bos is None:
            add_bos = self.add_bos
        if add_bos and self.bos_id is not None:
            ids.insert(0, self.bos_id)
        return ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids if 0 <= int(i) < self.vocab_size]
        return self._decode(ids, skip_special_tokens)

    def stream_decoder(self, context_ids=()) -> "StreamDecoder":
        """An incremental detokenizer. context_ids: the tokens just before the stream (the
        prompt's tail) so that a first generated token like "▁there" keeps its space."""
        return StreamDecoder(self, context_ids)

    def token_text(self, i: int) -> str:
        """The text of one token as the tokenizer spells it (special tokens included)."""
        raise NotImplementedError

    def _encode(self, text: str, parse_special: bool) -> list[int]:
        raise NotImplementedError

    def _decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        raise NotImplementedError


class SentencePieceTokenizer(Tokenizer):
    kind = "sentencepiece"

    def __init__(self, data: bytes, config: dict):
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(data)
        except Exception as e:  # sentencepiece raises RuntimeError/OSError with C++ text
            raise TokenizerError(f"not a SentencePiece model: {_one_line(e)}") from None
        self.sp = sp
        self.vocab_size = sp.GetPieceSize()
        try:  # a piece that is not UTF-8 loads, then fails in IdToPiece (UnicodeDecodeError)
            for i in range(self.vocab_size):
                sp.IdToPiece(i)
        except Exception as e:
            raise TokenizerError(f"SentencePiece model: piece {i} is unreadable: {_one_line(e)}") from None
        none_if_neg = lambda i: i if i >= 0 else None  # noqa: E731
        self._init_common(config, none_if_neg(sp.bos_id()), none_if_neg(sp.eos_id()), None)
        self.special_ids = frozenset(i for i in range(self.vocab_size) if sp.IsControl(i))
        # Control pieces (<s>, </s>, ...) are never produced by sp.Encode from text; split
        # them out by hand so chat templates that spell them work (llama.cpp parse_special).
        specials = sorted((sp.IdToPiece(i) for i in self.special_ids), key=len, reverse=True)
        specials = [s for s in specials if s]
        self._special_re = re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials else None
        try:  # TokenizerError if it cannot work (see _PROBE)
            self._decode(self._encode(_PROBE, True), False)
        except Exception as e:
            raise TokenizerError(f"SentencePiece model fails on a test string: {_one_line(e)}") from None

    def token_text(self, i: int) -> str:
        return self.sp.IdToPiece(int(i))

    def _encode(self, text, parse_special):
        if not parse_special or self._special_re is None:
            return list(self.sp.EncodeAsIds(text))
        ids = []
        for part in self._special_re.split(text):
            if not part:
                continue
            i = self.sp.PieceToId(part)
            if i in self.special_ids and self.sp.IdToPiece(i) == part:
                ids.append(i)
            else:
                ids.extend(self.sp.EncodeAsIds(part))
        return ids

    def _decode(self, ids, skip_special_tokens):
        if skip_special_tokens:
            return self.sp.DecodeIds(ids)
        # Control ids decode to "" in SentencePiece; show them as their piece text.
        out, run = [], []
        for i in ids:
            if i in self.special_ids:
                out.append(self.sp.DecodeIds(run))
                out.append(self.sp.IdToPiece(i))
                run = []
            else:
                run.append(i)
        out.append(self.sp.DecodeIds(run))
        return "".join(out)


class _LlamaCppSplit:
    """A tokenizers custom pre-tokenizer: each piece -> llama.cpp's words (empty ones dropped)."""

    def __init__(self, pre_type: str):
        self.pre_type = pre_type

    def _words(self, i, piece):
        out, start = [], 0
        for word in pretokenize.split(self.pre_type, str(piece)):
            if word:
                out.append(piece[start:start + len(word)])
            start += len(word)
        return out

    def pre_tokenize(self, pretok):
        pretok.split(self._words)


class HFTokenizer(Tokenizer):
    kind = "hf"
    pre_split: str | None = None

    def __init__(self, data: bytes, config: dict):
        from tokenizers import Tokenizer as _HF

        try:
            tok = _HF.from_str(data.decode("utf-8"))
        except BaseException as e:  # tokenizers' own Exception subclass, or a Rust panic
            if not _foreign(e):
                raise
            raise TokenizerError(f"not a tokenizer.json: {_one_line(e)}") from None
        self.tok = tok
        added = tok.get_added_tokens_decoder()  # {id: AddedToken}
        self.vocab_size = max(tok.get_vocab_size(with_added_tokens=True), max(added, default=-1) + 1)
        self.special_ids = frozenset(i for i, t in added.items() if t.special)
        # tokenizer.json does not name bos/eos; the config normally does. Guess from the
        # usual spellings only when it does not.
        def find(*names):
            for n in names:
                i = tok.token_to_id(n)
                if i is not None:
                    return i
            return None

        self._init_common(config, find("<|begin_of_text|>", "<s>", "<bos>"),
                          find("<|end_of_text|>", "</s>", "<eos>", "<|endoftext|>"),
                          find("<|eot_id|>", "<|im_end|>", "<end_of_turn>"))
        if config.get("pre_split") is not None:
            self._install_pre_split(config["pre_split"])
        self._decode(self._encode(_PROBE, True), False)  # TokenizerError if it cannot work

    def _install_pre_split(self, pre_type):
        """llama.cpp's word split (pretokenize.split) in front of the byte mapping; the
        tokenizers library hands it the text between special tokens, as llama.cpp does."""
        from tokenizers import pre_tokenizers
        from tokenizers.pre_tokenizers import PreTokenizer

        if not isinstance(pre_type, str) or pre_type not in pretokenize.TYPES:
            raise TokenizerError(f"tokenizer pre_split {pre_type!r} is not a llama.cpp pre-tokenizer type "
                                 f"this engine implements")
        self.pre_split = pre_type
        self.tok.pre_tokenizer = pre_tokenizers.Sequence([
            PreTokenizer.custom(_LlamaCppSplit(pre_type)),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])

    def token_text(self, i: int) -> str:
        return self.tok.id_to_token(int(i)) or ""

    def _encode(self, text, parse_special):
        # add_special_tokens=False: bos is ours to add (config add_bos), not the post-processor's.
        self.tok.encode_special_tokens = not parse_special
        try:
            return self.tok.encode(text, add_special_tokens=False).ids
        except BaseException as e:
            if not _foreign(e):
                raise
            raise TokenizerError(f"tokenizer.json cannot encode: {_one_line(e)}") from None
        finally:
            self.tok.encode_special_tokens = False

    def _decode(self, ids, skip_special_tokens):
        try:
            return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)
        except BaseException as e:
            if not _foreign(e):
                raise
            raise TokenizerError(f"tokenizer.json cannot decode: {_one_line(e)}") from None


_MAX_HELD = 8  # tokens held back at most while the text ends in an unfinished character


class StreamDecoder:
    """Incremental detokenizer: ``push(id)`` returns the newly completed text.

    Decodes a short window of recent tokens twice (without and with the new token) and
    emits the difference once it does not end in U+FFFD, i.e. once the new bytes form whole
    UTF-8 characters. Works the same for SentencePiece (leading-space marker, <0xNN>
    byte-fallback tokens) and byte-level BPE, because only the tokenizer's own decode is
    used. Cost per token: two decodes of a few tokens.
    """

    def __init__(self, tokenizer: Tokenizer, context_ids=()):
        self.tok = tokenizer
        self.ids = [int(i) for i in list(context_ids)[-_STREAM_CONTEXT:]]
        self.prefix = 0              # window start: context for the decoder's rules
        self.read = len(self.ids)    # everything before this has been emitted
        # decode([id]) of single ids, shared by the tokenizer's decoders: in steady state the
        # window before the new token is one token, so one decode per token instead of two
        self.single = tokenizer.__dict__.setdefault("_stream_single_decode", {})

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        return self._emit(final=False)

    def flush(self) -> str:
        """Whatever is pending (an incomplete character becomes U+FFFD)."""
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        if self.read == len(self.ids):
            return ""
        if self.read - self.prefix == 1:
            t = self.ids[self.prefix]
            prefix_text = self.single.get(t)
            if prefix_text is None:
                prefix_text = self.single[t] = self.tok.decode([t])
        else:
            prefix_text = self.tok.decode(self.ids[self.prefix:self.read])
        new_text = self.tok.decode(self.ids[self.prefix:])
        if len(new_text) <= len(prefix_text) and not final:
            return ""
        # An unfinished character spans at most 3 pending bytes, so at most 3 tokens; text that
        # still ends in U+FFFD after _MAX_HELD tokens holds invalid bytes (a random or badly
        # sampled model): emit it as U+FFFD rather than hold the stream back forever.
        if new_text.endswith("\ufffd") and not final and len(self.ids) - self.read < _MAX_HELD:
            return ""
        out = new_text[len(prefix_text):]
        self.prefix, self.read = max(self.read, len(self.ids) - _STREAM_CONTEXT), len(self.ids)
        if self.prefix > 4 * _STREAM_CONTEXT:  # keep the list short
            del self.ids[:self.prefix]
            self.read -= self.prefix
            self.prefix = 0
        return out
