"""Regenerate the seed corpus (tests/fuzz/corpus/<target>/) with the project's own writers.

    python tests/fuzz/make_seeds.py          # needs the test extra (torch, transformers)

Seeds are real files, kept to a few KB: tiny dimensions (hidden 8-32, one or two layers) and
tokenizers trained here on a few sentences with small vocabularies. The one GGUF seed with a
TQ2_0 tensor is bigger (~20 KB): TQ2_0 rows are whole 256-weight blocks.
"""
import io
import json
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/: tiny_models, checkpoints
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402

import checkpoints as C  # noqa: E402
import fuzz_hf  # noqa: E402
import tiny_models as T  # noqa: E402
from engine.formats import tpk  # noqa: E402

CORPUS = os.path.join(HERE, "corpus")


def small_hf_tokenizer(vocab_size=64, byte_level=False):
    """A BPE tokenizer.json with Llama-3 style specials at ids 0-2 (T.HF_SPECIALS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None if byte_level else "<unk>"))
    if byte_level:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        extra = dict(initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        extra = {}
    specials = T.HF_SPECIALS + ([] if byte_level else ["<unk>"])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  **extra)
    tok.train_from_iterator(T.CORPUS, trainer)
    return tok.to_str().encode()


def small_sp_model(vocab_size=48, byte_fallback=False):
    """A SentencePiece BPE .model: <unk> 0, <s> 1, </s> 2."""
    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(T.CORPUS), model_writer=out, model_type="bpe", vocab_size=vocab_size,
        byte_fallback=byte_fallback, character_coverage=1.0, hard_vocab_limit=False,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2, num_threads=1)
    return out.getvalue()


def save(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)
    print(f"{target}/{name}: {len(data)} bytes")


def tokenizer_seeds():
    save("tokenizer_json", "bpe-whitespace.json", small_hf_tokenizer())
    save("tokenizer_json", "synthetic-bytelevel.json", _compact_json(__import__("ternary_bench.synthetic").synthetic.tiny_tokenizer_json()))
    save("sentencepiece", "bpe.model", small_sp_model())
    save("sentencepiece", "bpe-byte-fallback.model", small_sp_model(vocab_size=300, byte_fallback=True))


def _compact_json(data):
    return json.dumps(json.loads(data), separators=(",", ":"), ensure_ascii=False).encode()


def tpk_seeds(tmp):
    hf, sp = small_hf_tokenizer(), small_sp_model()
    cases = {
        "bitnet-t2-tied-hf.tpk": (dict(arch="bitnet", vocab=64, hidden=8, inter=8, layers=1, heads=1,
                                       kv_heads=1, head_dim=8), "hf", np.float16),
        "llama-t1-q4-sp.tpk": (dict(arch="llama", vocab=50, hidden=8, inter=8, layers=1, heads=2, kv_heads=1,
                                    head_dim=4, weight_format="t1", lm_head_format="q4", tie=False,
                                    proj_norm_eps=1e-6), "sentencepiece", np.float16),
        "llama-f16-int8-f32embed-hf.tpk": (dict(arch="llama", vocab=64, hidden=8, inter=12, layers=2, heads=2,
                                                kv_heads=2, head_dim=4, weight_format="f16",
                                                lm_head_format="int8", tie=True), "hf", np.float32),
    }
    for name, (kw, kind, embed_dtype) in cases.items():
        data = hf if kind == "hf" else sp
        config = T.tiny_config(tokenizer=T.tokenizer_section(kind, data), **kw)
        path = os.path.join(tmp, name)
        tpk.write(path, config, T.random_tensors(config, data, seed=1, embed_dtype=embed_dtype))
        with open(path, "rb") as f:
            save("tpk", name, f.read())


def _dir_files(path):
    out = {}
    for name in fuzz_hf.FILES:
        p = os.path.join(path, name)
        if os.path.exists(p):
            with open(p, "rb") as f:
                out[name] = f.read()
    return out


def _small_tokenizers(path, kind):
    """Swap the checkpoint's tokenizer for a small one of the same kind (seeds stay a few KB)."""
    if kind == "hf":
        with open(os.path.join(path, "tokenizer.json"), "wb") as f:
            f.write(_compact_json(small_hf_tokenizer()))
    else:
        for stale in ("tokenizer.json", "tokenizer_config.json"):
            if os.path.exists(os.path.join(path, stale)):
                os.unlink(os.path.join(path, stale))
        with open(os.path.join(path, "tokenizer.model"), "wb") as f:
            f.write(small_sp_model())


def hf_seeds(tmp):
    d = C.Dims(hidden=16, inter=16, layers=1, heads=2, kv_heads=1, head_dim=8, vocab=64, tied=True)
    for name, make, kind in (("bitnet-offline", C.bitnet_offline, "hf"),
                             ("llama-bitlinear", C.llama_bitlinear, "hf"),
                             ("shadow-sp", lambda t, dd: C.shadow(t, dd, tokenizer="sentencepiece"), "sentencepiece"),
                             ("llama-plain-untied", None, "hf")):
        sub = os.path.join(tmp, name)
        os.makedirs(sub)
        if make is None:
            ck = C.llama_plain(sub, C.Dims(**{**vars(d), "tied": False}))
        else:
            ck = make(sub, d)
        _small_tokenizers(ck.path, kind)
        save("hf", name + ".ckpt", fuzz_hf.pack(_dir_files(ck.path)))


def gguf_seeds(tmp):
    import gguf

    # llama, F16 matrices and a Q8_0 one (32-weight blocks), BPE vocab as 'gpt2', untied head
    d = C.Dims(hidden=32, inter=32, layers=1, heads=2, kv_heads=1, head_dim=16, vocab=64, tied=False)
    sub = os.path.join(tmp, "gguf-llama")
    os.makedirs(sub)
    ck = C.llama_plain(sub, d)
    _small_tokenizers(ck.path, "hf")
    out = os.path.join(tmp, "llama-f16-q8_0.gguf")
    C.write_gguf_llama(ck, out, q8_0=("self_attn.q_proj",))
    with open(out, "rb") as f:
        save("gguf", "llama-f16-q8_0-bpe.gguf", f.read())

    # bitnet: the one matrix with 256-weight rows (ffn_down) as TQ2_0, the rest F16; SPM vocab
    d = C.Dims(hidden=16, inter=256, layers=1, heads=2, kv_heads=2, head_dim=8, vocab=48, tied=True)
    sub = os.path.join(tmp, "gguf-bitnet")
    os.makedirs(sub)
    ck = C.shadow(sub, d, tokenizer="sentencepiece")
    _small_tokenizers(ck.path, "sentencepiece")
    sd = C._hf_tensors(ck.path)
    out = os.path.join(tmp, "bitnet.gguf")
    w = gguf.GGUFWriter(out, "bitnet")
    C._gguf_header(w, "bitnet", d)
    with open(os.path.join(ck.path, "tokenizer.model"), "rb") as f:
        C._gguf_sentencepiece_vocab(w, f.read(), d.vocab)
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"].astype(np.float16))
    w.add_tensor("output_norm.weight", sd["model.norm.weight"].astype(np.float32))
    for i in range(d.layers):
        for hf_name, gg in C.GGUF_NAMES.items():
            v = sd[f"model.layers.{i}.{hf_name}.weight"].astype(np.float32)
            if hf_name in C._linear_shapes(d):
                q, s = C.absmean_quant(v)
                wq = (q.astype(np.float32) * s).astype(np.float16).astype(np.float32)
                if v.shape[1] % 256 == 0:
                    qt = gguf.GGMLQuantizationType.TQ2_0
                    w.add_tensor(f"blk.{i}.{gg}.weight", gguf.quants.quantize(wq, qt), raw_dtype=qt)
                else:
                    w.add_tensor(f"blk.{i}.{gg}.weight", wq.astype(np.float16))
            else:
                w.add_tensor(f"blk.{i}.{gg}.weight", v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with open(out, "rb") as f:
        save("gguf", "bitnet-tq2_0-spm.gguf", f.read())


def main():
    tmp = tempfile.mkdtemp()
    try:
        tokenizer_seeds()
        tpk_seeds(tmp)
        hf_seeds(tmp)
        gguf_seeds(tmp)
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
