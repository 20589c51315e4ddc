"""GGUF byte-level BPE tokenizers: every pre-tokenizer name llama.cpp maps gives llama.cpp's ids.

llama.cpp's `llama-tokenize` is built from the llama-cpp-python sdist (tests/llama_cpp_tools.py,
cached outside the repository). One small byte-level BPE is trained here with `tokenizers`;
for each `tokenizer.ggml.pre` name a vocabulary-only GGUF is written with the `gguf` package,
then llama-tokenize and the engine (engine.convert.gguf -> engine.runtime.tokenizer) tokenize
the same multilingual text with digits, code and emoji, and the ids must be equal. The regex
table and the name map are also checked against the llama.cpp source that was built.
"""
import json
import os
import re
import subprocess

import pytest

from engine.convert import gguf as G
from engine.convert.source import ConvertError
from engine.runtime import pretokenize
from engine.runtime.tokenizer import Tokenizer
from llama_cpp_tools import llama_cpp_source, llama_cpp_tool

TEXT = ("Hello, World! It's 2026; we've got 1234567 numbers, 3.14159, 42nd and 1,000,000.\n"
        "I'M sure THEY'RE here; you'LL see. Don't. it'sfine, we'llgo\n"
        "\u00dcn\u00efc\u00f6d\u00e9 \u00dcBER stra\u00dfe \u2014 caf\u00e9 \u00abna\u00efve\u00bb \u00c0\u00c9\u00ce\u00d5\u00dc  "
        "Stra\u00dfenbahnHALTESTELLE\n"
        "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac. "
        "\u0627\u0644\u0639\u0631\u0628\u064a\u0629 \u0647\u0646\u0627\u06d4 \u0939\u093f\u0928\u094d\u0926\u0940 "
        "\u092e\u0947\u0902\u0964 \u0e20\u0e32\u0e29\u0e32\u0e44\u0e17\u0e22\n"
        "\u6771\u4eac\u306f\u6674\u308c\u3001\u4eca\u65e5\u306f\uff12\uff10\uff12\uff16\u5e74\u3067\u3059\u3002"
        "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8\u3002\u30ab\u30bf\u30ab\u30ca\uff01\n"
        "def f(x):\n    return x**2 + 0x1F  # comment\n\tif a != b: print(\"ok\")\r\n"
        "emoji \U0001f642\U0001f44d\U0001f3fd \U0001f468\u200d\U0001f469\u200d\U0001f467 \u2764\ufe0f "
        "\U0001f1ef\U0001f1f5  \u3000 \u00a0end   \n\n"
        "<sentinel:12> IMGIMGABZ x=y<=z|w~v^u`t <|end_of_text|>tail   \n  \n")

BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"


@pytest.fixture(scope="module")
def llama_tokenize():
    return llama_cpp_tool("llama-tokenize")


@pytest.fixture(scope="module")
def vocab():
    """(tokens, types, merges) of a byte-level BPE trained on text like TEXT, plus whole words
    of TEXT that the merges do not reach (so ignore_merges changes ids where llama.cpp sets it)."""
    from tokenizers import Tokenizer as HF, models, pre_tokenizers, trainers

    tk = HF(models.BPE())
    # No word split while training: merges then cross every boundary some pre-tokenizer draws
    # (digits, punctuation, spaces, scripts), so each split shows in the ids.
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=1200, special_tokens=[BOS, EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [TEXT, TEXT.lower(), TEXT.upper(), " ".join(TEXT.split()[::-1]), "0123456789 " * 20]
    tk.train_from_iterator(corpus, trainer)
    tj = json.loads(tk.to_str())
    by_id = {i: t for t, i in tj["model"]["vocab"].items()}
    tokens = [by_id[i] for i in range(len(by_id))]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    byte_map = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    known = set(tokens)
    for word in pretokenize.split("llama3", TEXT)[:60]:
        enc = "".join(p for p, _ in byte_map.pre_tokenize_str(word))
        if len(word) > 3 and enc not in known:
            tokens.append(enc)
            known.add(enc)
    types = [G.CONTROL if t in (BOS, EOS) else G.NORMAL for t in tokens]
    return tokens, types, merges


def _llama_writer(path, n_vocab):
    """A GGUFWriter with the hyperparameters llama.cpp's loader needs even for vocab_only."""
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(256)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    return w


def _close(w):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_vocab_gguf(path, pre, vocab, tensors=False):
    """A llama GGUF, its tokenizer keys as convert_hf_to_gguf.py _set_vocab_gpt2 writes them;
    no tensors (llama-tokenize loads vocab_only) unless `tensors`: then a random one-layer
    model that ternary-convert takes."""
    import numpy as np

    tokens, types, merges = vocab
    w = _llama_writer(path, len(tokens))
    w.add_tokenizer_model("gpt2")
    if pre is not None:
        w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index(BOS))
    w.add_eos_token_id(tokens.index(EOS))
    rng = np.random.default_rng(0)
    shapes = {"token_embd": (len(tokens), 64), "output_norm": (64,), "blk.0.attn_norm": (64,),
              "blk.0.ffn_norm": (64,), "blk.0.attn_q": (64, 64), "blk.0.attn_k": (64, 64),
              "blk.0.attn_v": (64, 64), "blk.0.attn_output": (64, 64), "blk.0.ffn_gate": (128, 64),
              "blk.0.ffn_up": (128, 64), "blk.0.ffn_down": (64, 128)}
    for name, shape in shapes.items() if tensors else ():
        w.add_tensor(f"{name}.weight", rng.standard_normal(shape).astype(np.float32) * 0.05)
    _close(w)


def ours(path):
    f = G._File(str(path))
    config, data = G.gguf_tokenizer(f.meta, len(f.meta("tokenizer.ggml.tokens")), str(path))
    return Tokenizer.from_bytes(config["type"], data, config), config


def theirs(binary, path, text_path):
    """llama-tokenize's ids (its own add_bos default, special tokens parsed, as ours)."""
    r = subprocess.run([binary, "-m", str(path), "-f", str(text_path), "--ids", "--log-disable"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("pre", sorted(pretokenize.GGUF_PRE))
def test_ids_equal_llama_tokenize(pre, vocab, llama_tokenize, tmp_path):
    path, text_path = tmp_path / "vocab.gguf", tmp_path / "text.txt"
    write_vocab_gguf(path, pre, vocab)
    text_path.write_bytes(TEXT.encode("utf-8"))
    tok, config = ours(path)
    assert config["pre_split"] == pretokenize.GGUF_PRE[pre]["type"]
    want = theirs(llama_tokenize, path, text_path)
    got = tok.encode(TEXT)
    assert got == want, f"{pre}: first difference at {next(i for i, (a, b) in enumerate(zip(got + [-1], want + [-1])) if a != b)}"
    body = got[1:] if tok.add_bos else got
    assert tok.decode(body, skip_special_tokens=False) == TEXT


def test_converted_model_keeps_the_split(vocab, llama_tokenize, tmp_path):
    """ternary-convert -> .tpk -> Engine: the split survives the file (tokenizer pre_split)."""
    from engine import Engine
    from engine.convert import convert

    path, text_path, out = tmp_path / "m.gguf", tmp_path / "text.txt", tmp_path / "m.tpk"
    write_vocab_gguf(path, "llama-bpe", vocab, tensors=True)
    text_path.write_bytes(TEXT.encode("utf-8"))
    convert(str(path), str(out), progress=False)
    eng = Engine(str(out))
    assert eng.tokenizer.pre_split == "llama3" and eng.tokenizer.add_bos
    assert eng.tokenizer.encode(TEXT) == theirs(llama_tokenize, path, text_path)


def test_sentencepiece_ids_equal_llama_tokenize(llama_tokenize, tmp_path):
    """tokenizer.ggml.model "llama" (SPM: no pre-tokenizer, pre "default"): a SentencePiece BPE
    with byte fallback trained here, written as convert_hf_to_gguf.py does (checkpoints.py)."""
    import io

    import sentencepiece as spm
    from checkpoints import _gguf_sentencepiece_vocab

    model = io.BytesIO()
    lines = "\n".join([TEXT, TEXT.lower(), TEXT.upper()] * 3).split("\n")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=700, model_type="bpe",
        byte_fallback=True, character_coverage=0.98, split_digits=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", minloglevel=2)
    path, text_path = tmp_path / "spm.gguf", tmp_path / "text.txt"
    w = _llama_writer(path, 700)
    _gguf_sentencepiece_vocab(w, model.getvalue(), 700)
    _close(w)
    text_path.write_bytes(TEXT.encode("utf-8"))
    tok, config = ours(path)
    assert config["type"] == "sentencepiece"
    got = tok.encode(TEXT)
    assert any(tok.token_text(i).startswith("<0x") for i in got)  # byte fallback is exercised
    assert got == theirs(llama_tokenize, path, text_path)


def test_missing_pre_is_default(vocab, llama_tokenize, tmp_path):
    """No tokenizer.ggml.pre: llama.cpp warns and uses "default"; so do we."""
    path, text_path = tmp_path / "vocab.gguf", tmp_path / "text.txt"
    write_vocab_gguf(path, None, vocab)
    text_path.write_bytes(TEXT.encode("utf-8"))
    tok, config = ours(path)
    assert config["pre_split"] == "default"
    assert tok.encode(TEXT) == theirs(llama_tokenize, path, text_path)


@pytest.mark.parametrize("pre", ["no-such-tokenizer", "gemma4", "kimi-k2"])
def test_unknown_or_unsupported_pre_is_an_error(pre, vocab, tmp_path):
    path = tmp_path / "vocab.gguf"
    write_vocab_gguf(path, pre, vocab)
    with pytest.raises(ConvertError, match=re.escape(repr(pre))):
        ours(path)


def test_tpk_config_rejects_unknown_pre_split(vocab, tmp_path):
    from engine.runtime.tokenizer import TokenizerError

    path = tmp_path / "vocab.gguf"
    write_vocab_gguf(path, "llama-bpe", vocab)
    _, config = ours(path)
    f = G._File(str(path))
    _, data = G.gguf_tokenizer(f.meta, len(vocab[0]), str(path))
    with pytest.raises(TokenizerError, match="'nope'"):
        Tokenizer.from_bytes("hf", data, {**config, "pre_split": "nope"})


# ---------------------------------------------------------------------------------------------
# the tables against the llama.cpp source that llama-tokenize was built from


def _vocab_source():
    with open(os.path.join(llama_cpp_source(), "src", "llama-vocab.cpp"), encoding="utf-8") as f:
        return f.read()


def _cpp_string(body):
    return body.encode("utf-8").decode("unicode_escape").encode("latin-1").decode("utf-8")


def test_regexes_are_llama_cpps():
    """TYPES holds, per type, exactly the regex strings of llm_tokenizer_bpe's constructor."""
    src = _vocab_source()
    start = src.index("struct llm_tokenizer_bpe : llm_tokenizer {")
    body = src[start:src.index("std::vector<std::string> regex_exprs;", start)]
    found, pending = {}, []
    for m in re.finditer(r"case LLAMA_VOCAB_PRE_TYPE_(\w+):|default:|regex_exprs = \{(.*?)\n\s*\};", body, re.S):
        if m.group(0) == "default:" or m.group(1):
            pending.append((m.group(1) or "default").lower())
            continue
        exprs = [_cpp_string(lm.group(1)) for line in m.group(2).split("\n")
                 if (lm := re.match(r'\s*"((?:[^"\\]|\\.)*)"', line))]
        found.update({t: exprs for t in pending})
        pending = []
    unsupported = set(found) - set(pretokenize.TYPES)
    assert unsupported == {"gemma4", "sarvam_moe", "whitespace", "kimi_k2"}
    for t, exprs in pretokenize.TYPES.items():
        assert found.get(t) == exprs, t


def test_names_are_llama_cpps():
    """GGUF_PRE maps every BPE name llama.cpp's loader knows, to its type and flags."""
    src = _vocab_source()
    chain = src[src.index("if (tokenizer_pre.empty())"):src.index('"unknown pre-tokenizer type')]
    found = {}
    for block in chain.split("} else if (")[1:]:
        t = re.search(r"pre_type = LLAMA_VOCAB_PRE_TYPE_(\w+);", block).group(1).lower()
        for name in re.findall(r'tokenizer_pre == "([^"]+)"', block):
            found[name] = {"type": t, "ignore_merges": "ignore_merges = true" in block,
                           "add_bos": "add_bos = true" in block}
    for name in pretokenize.UNSUPPORTED_PRE:
        assert found.pop(name)["type"] not in pretokenize.TYPES, name
    assert found == pretokenize.GGUF_PRE
