"""GGUF files (llama.cpp) of the llama and bitnet architectures as a ternary-convert source.

Read with the `gguf` package (no torch). What the file means, from llama.cpp:
  llama   plain Llama graph; convert_hf_to_gguf.py LlamaModel.permute reorders the rows of
          attn_q / attn_k per head from NeoX halves to adjacent pairs (llama.cpp ropes
          pairs, LLAMA_ROPE_TYPE_NORM); we undo it, our RoPE is NeoX.
  bitnet  (src/models/bitnet.cpp, 1bitLLM BitnetForCausalLM) sub-norms attn_sub_norm /
          ffn_sub_norm, silu, lm_head = token_embd (tied), NeoX RoPE (llama_model_rope_type
          lists LLM_ARCH_BITNET with the NeoX archs), so no permutation; optional per-tensor
          `<proj>.scale` multiplies the output.
  bitnet-b1.58  bitnet.cpp's name for BitNet b1.58 2B-4T (build_bitnet_158): as bitnet but
          squared ReLU, and a separate output.weight when the file has one. bitnet.cpp's files
          hold I2_S weights, a type of its own ggml fork: gguf_bitnet.py reads them.
Weights: TQ1_0/TQ2_0 hold ternary values times one fp16 scale per 256-weight block; for a
per-tensor ternary model every non-empty block has the same scale, which becomes ours. Any
other type the package can dequantize becomes float (an fp16 model unless --weights).
The tokenizer: "llama" (SentencePiece-style pieces + scores) -> a SentencePiece model proto
written here; "gpt2" (byte-level BPE) -> a tokenizer.json built with `tokenizers`.
"""
import json
import math
import os
import struct

import numpy as np

from engine.convert import gguf_bitnet
from engine.formats import tpk
from engine.runtime import pretokenize
from engine.convert.source import EOT_TOKENS, MALFORMED, ConvertError, Linear, SrcTensor, TensorSet

GGUF_PROJ = {"attn.q": "attn_q", "attn.k": "attn_k", "attn.v": "attn_v", "attn.o": "attn_output",
             "mlp.gate": "ffn_gate", "mlp.up": "ffn_up", "mlp.down": "ffn_down"}
TERNARY_TYPES = {"TQ1_0": "t1", "TQ2_0": "t2"}
ARCHS = ("llama", "bitnet", "bitnet-b1.58")  # the last two: bitnet.cpp's (gguf_bitnet.py)

# llama.cpp token types = SentencePiece piece types
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# GGUF value types (gguf GGUFValueType) -> bytes per value; string and array are variable.
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
_MIN_SIZE = {**_FIXED, _STRING: 8, _ARRAY: 12}  # the least bytes one value of a type can take
_MAX_DIMS = 8  # llama.cpp GGML_MAX_DIMS is 4


def _precheck(path):
    """Walk the GGUF header (key/values, tensor infos) checking every count and length against
    the bytes left in the file, before the gguf package reads it: that reader trusts the counts
    and loops over them in Python, so a 3 KB file claiming 2**64 tensors hangs it and grows
    its memory without bound. Raises ConvertError; returns nothing for a sound header."""
    import mmap

    def bad(what):
        return ConvertError(f"{path}: not a readable GGUF file ({what})")

    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 24:
            raise bad(f"{size} bytes, too short for a header")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        if buf[:4] != b"GGUF":
            raise bad("GGUF magic invalid")
        end = "<" if struct.unpack_from("<I", buf, 4)[0] & 0xFFFF else ">"  # byte-swapped file
        pos = 8

        def take(fmt):
            nonlocal pos
            n = struct.calcsize(fmt)
            if pos + n > size:
                raise bad(f"truncated header at byte {pos}")
            v = struct.unpack_from(end + fmt, buf, pos)
            pos += n
            return v[0] if len(v) == 1 else v

        def count(n, each, what):
            if n * each > size - pos:
                raise bad(f"{what}: {n} entries cannot fit in the {size - pos} bytes left")
            return n

        def string(what):
            nonlocal pos
            n = count(take("Q"), 1, what)
            pos += n

        def value(vtype, what, depth=0):
            nonlocal pos
            if vtype in _FIXED:
                count(1, _FIXED[vtype], what)
                pos += _FIXED[vtype]
            elif vtype == _STRING:
                string(what)
            elif vtype == _ARRAY and depth < 2:
                etype, n = take("I"), take("Q")
                if etype not in _MIN_SIZE:
                    raise bad(f"{what}: unknown array element type {etype}")
                count(n, _MIN_SIZE[etype], what)
                if etype in _FIXED:
                    pos += n * _FIXED[etype]
                else:
                    for _ in range(n):
                        value(etype, what, depth + 1)
            else:
                raise bad(f"{what}: unknown or too deeply nested value type {vtype}")

        n_tensors, n_kv = take("Q"), take("Q")
        count(n_kv, 8 + 4 + 1, "key/value count")
        for i in range(n_kv):
            string(f"key {i}")
            value(take("I"), f"key {i}")
        count(n_tensors, 8 + 4 + 4 + 8, "tensor count")
        for i in range(n_tensors):
            string(f"tensor {i} name")
            dims = take("I")
            if dims > _MAX_DIMS:
                raise bad(f"tensor {i}: {dims} dimensions")
            count(dims, 8, f"tensor {i} shape")
            pos += 8 * dims + 4 + 8
            if pos > size:
                raise bad(f"truncated tensor info {i}")
    finally:
        buf.close()


def _open(path):
    _precheck(path)
    try:
        return gguf_bitnet.reader(path)  # gguf.GGUFReader + bitnet.cpp's tensor types
    except (ValueError, OSError, IndexError, KeyError, struct.error) as e:
        raise ConvertError(f"{path}: not a readable GGUF file ({e})") from None


class _File(TensorSet):
    """One open GGUF file: metadata lookups, and tensors handed out as SrcTensors while the
    names used are recorded (an unused tensor is an error)."""

    def __init__(self, path):
        self.path, self.reader = path, _open(path)
        super().__init__(path, {t.name: t for t in self.reader.tensors})
        self.arch = self.meta("general.architecture")
        if self.arch not in ARCHS:
            raise ConvertError(f"{path}: GGUF architecture {self.arch!r} is not supported ({', '.join(ARCHS)})")

    def meta(self, key, default=None):
        field = self.reader.get_field(key)
        return default if field is None else field.contents()

    def need(self, key):
        v = self.meta(f"{self.arch}.{key}")
        if v is None:
            raise ConvertError(f"{self.path}: GGUF metadata {self.arch}.{key} missing")
        return v

    def src(self, t, row_index=None):
        """ReaderTensor -> SrcTensor with numpy shape [rows, ...] (ggml's ne reversed)."""
        import gguf
        from gguf import GGMLQuantizationType as QT

        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        if isinstance(t, gguf_bitnet.BitnetTensor):
            if t.tensor_type == gguf_bitnet.I2_S:
                raise ConvertError(f"{self.path}: tensor {t.name!r} is I2_S, read only for the linear projections")
            raise gguf_bitnet.refuse(t, self.path)
        qt = QT(t.tensor_type)
        if qt in (QT.F32, QT.F16, QT.F64):
            return SrcTensor(t.data.reshape(shape), qt.name, row_index=row_index)
        if qt == QT.BF16:
            return SrcTensor(t.data.view(np.uint16).reshape(shape), "BF16", row_index=row_index)
        try:
            gguf.quants.dequantize(t.data[:1], qt)
        except NotImplementedError:
            raise ConvertError(f"{self.path}: tensor {t.name!r} has type {qt.name}, which the gguf package "
                               "cannot dequantize") from None
        return SrcTensor(t.data, "GGML", dequant=lambda raw, qt=qt: gguf.quants.dequantize(raw, qt),
                         shape=shape, row_index=row_index)

    def vector(self, name):
        return self.src(self.get(name))


def _unpermute(n_rows, n_head):
    """Row order that undoes convert_hf_to_gguf.py LlamaModel.permute (NeoX halves ->
    adjacent pairs): gguf row h*D + 2i + j holds HF row h*D + j*D/2 + i."""
    d = n_rows // n_head
    return np.arange(n_rows).reshape(n_head, 2, d // 2).swapaxes(1, 2).reshape(-1).argsort()


def _config(f: _File) -> dict:
    """The .tpk config from the GGUF metadata; unsupported variants are refused."""
    path, arch, meta, tensors = f.path, f.arch, f.meta, f.tensors
    hidden, layers, heads = int(f.need("embedding_length")), int(f.need("block_count")), int(f.need("attention.head_count"))
    if heads <= 0:  # divides the hidden size below
        raise ConvertError(f"{path}: attention.head_count {heads} must be positive")
    if not 0 < layers <= len(tensors):  # every block holds several tensors; bounds what is built per block
        raise ConvertError(f"{path}: block_count {layers} does not fit the file's {len(tensors)} tensors")
    if isinstance(meta(f"{arch}.attention.head_count_kv"), list) or isinstance(meta(f"{arch}.feed_forward_length"), list):
        raise ConvertError(f"{path}: per-layer head counts / FFN sizes are not supported")
    kv_heads = int(meta(f"{arch}.attention.head_count_kv", heads))
    inter = int(f.need("feed_forward_length"))
    head_dim = int(meta(f"{arch}.attention.key_length", hidden // heads))
    rope_dim = int(meta(f"{arch}.rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise ConvertError(f"{path}: partial RoPE ({rope_dim} of {head_dim} dims) is not supported")
    rope_scaling = _rope_scaling(f, head_dim)
    if "token_embd.weight" not in tensors:
        raise ConvertError(f"{path}: missing tensor 'token_embd.weight'")
    embd = [int(d) for d in tensors["token_embd.weight"].shape]  # GGUF order: [hidden, vocab]
    if len(embd) != 2 or embd[0] != hidden or embd[1] <= 0:
        raise ConvertError(f"{path}: token_embd.weight has shape {embd}, not [{hidden}, vocab] "
                           f"(embedding_length {hidden})")
    config = {
        "format_version": tpk.FORMAT_VERSION, "architecture": "llama" if arch == "llama" else "bitnet",
        "hidden_size": hidden, "intermediate_size": inter, "num_layers": layers, "num_heads": heads,
        "num_kv_heads": kv_heads, "head_dim": head_dim, "vocab_size": embd[1],
        "max_position": int(meta(f"{arch}.context_length", 2048)),
        "rms_norm_eps": _f32(meta(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": _f32(meta(f"{arch}.rope.freq_base", 10000.0)), "rope_style": "neox",
        "hidden_act": gguf_bitnet.HIDDEN_ACT.get(arch, "silu"), "sub_norms": arch != "llama",
        # llama.cpp's bitnet graph uses token_embd as the head
        "tie_word_embeddings": "output.weight" not in tensors or arch == "bitnet",
        "scale_mode": "mul", "proj_norm_eps": None,
    }
    if rope_scaling is not None:
        config["rope_scaling"] = rope_scaling
    return config


def _rope_scaling(f: _File, head_dim: int) -> dict | None:
    """The .tpk rope_scaling from llama.cpp's keys ({arch}.rope.scaling.type / .factor /
    .original_context_length) and the rope_freqs tensor. convert_hf_to_gguf.py writes a
    transformers "linear" config as type linear + factor, "yarn" as type yarn + factor +
    original_context_length, and "llama3" as no scaling key but a rope_freqs tensor: the
    per-dimension divisors of inv_freq (LlamaModel.generate_extra_tensors), which llama.cpp
    applies as freq_factors and the engine stores as type freq_factors."""
    path, arch, meta = f.path, f.arch, f.meta
    scaling = meta(f"{arch}.rope.scaling.type", "none")
    factor = float(meta(f"{arch}.rope.scaling.factor", 1.0))
    if "rope_freqs.weight" in f.tensors:
        if scaling not in ("none", "linear") or (scaling == "linear" and factor != 1.0):
            raise ConvertError(f"{path}: rope_freqs together with RoPE scaling {scaling!r} is not supported")
        ff = f.vector("rope_freqs.weight").f32().reshape(-1)
        if ff.size != head_dim // 2:
            raise ConvertError(f"{path}: rope_freqs has {ff.size} values, expected {head_dim // 2}")
        return {"rope_type": "freq_factors", "factors": [float(x) for x in ff]}
    if scaling == "none" or (scaling == "linear" and factor == 1.0):
        return None
    if scaling == "linear":
        return {"rope_type": "linear", "factor": factor}
    if scaling == "yarn":  # transformers' yarn defaults: beta 32 / 1, attention factor 0.1 ln(s) + 1
        orig = int(meta(f"{arch}.rope.scaling.original_context_length", 0) or 0)
        if orig <= 0:
            raise ConvertError(f"{path}: yarn RoPE scaling without {arch}.rope.scaling.original_context_length")
        return {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": orig,
                "beta_fast": 32.0, "beta_slow": 1.0, "truncate": True,
                "attention_factor": 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0}
    raise ConvertError(f"{path}: RoPE scaling {scaling!r} is not supported (none, linear, yarn, rope_freqs)")


def _linears(f: _File, config: dict) -> tuple[dict, set]:
    """-> ({prefix: Linear}, the ternary formats the file's weights are stored in)."""
    from gguf import GGMLQuantizationType as QT

    linears, formats = {}, set()
    for prefix, (n, k) in tpk.linear_shapes(config).items():
        i, proj = prefix.split(".", 2)[1], prefix.split(".", 2)[2]
        base = f"blk.{i}.{GGUF_PROJ[proj]}"
        t = f.get(f"{base}.weight")
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        if shape != (n, k):
            raise ConvertError(f"{f.path}: {base}.weight is {list(shape)}, expected [{n}, {k}]")
        extra_scale = 1.0
        if f"{base}.scale" in f.tensors:
            extra_scale = float(f.vector(f"{base}.scale").f32().reshape(-1)[0])
        row_index = None
        if f.arch == "llama" and proj in ("attn.q", "attn.k"):
            row_index = _unpermute(n, config["num_heads"] if proj == "attn.q" else config["num_kv_heads"])
        if isinstance(t, gguf_bitnet.BitnetTensor):  # bitnet.cpp's I2_S (TL1/TL2 refused)
            if t.tensor_type != gguf_bitnet.I2_S:
                raise gguf_bitnet.refuse(t, f.path)
            formats.add("t2")
            linears[prefix] = Linear(load_ternary=gguf_bitnet.i2s_loader(t, n, k, row_index, extra_scale, f.path))
            continue
        qt = QT(t.tensor_type)
        if qt.name in TERNARY_TYPES:
            formats.add(TERNARY_TYPES[qt.name])
            linears[prefix] = Linear(load_ternary=_tq_loader(f.src(t, row_index), f"{base}.weight", extra_scale))
        else:
            if extra_scale != 1.0:
                raise ConvertError(f"{f.path}: {base}.scale on a non-ternary weight is not supported")
            linears[prefix] = Linear(master=f.src(t, row_index), exact=True)
    return linears, formats


def _vectors(f: _File, config: dict) -> dict:
    """Embedding, norms (and the head when untied) as SrcTensors."""
    vectors = {"embed": f.vector("token_embd.weight"), "norm": f.vector("output_norm.weight")}
    for i in range(config["num_layers"]):
        vectors[f"layers.{i}.attn_norm"] = f.vector(f"blk.{i}.attn_norm.weight")
        vectors[f"layers.{i}.ffn_norm"] = f.vector(f"blk.{i}.ffn_norm.weight")
        if config["sub_norms"]:
            vectors[f"layers.{i}.attn.sub_norm"] = f.vector(f"blk.{i}.attn_sub_norm.weight")
            vectors[f"layers.{i}.mlp.sub_norm"] = f.vector(f"blk.{i}.ffn_sub_norm.weight")
    if not config["tie_word_embeddings"]:
        vectors["lm_head"] = f.vector("output.weight")
    return vectors


def gguf_source(path):
    """Same result as convert.hf_source, for a .gguf file."""
    try:
        return _gguf_source(path)
    except MALFORMED as e:  # e.g. a metadata string that is not UTF-8, a count of the wrong type
        raise ConvertError(f"{path}: malformed GGUF metadata "
                           f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None


def _gguf_source(path):
    f = _File(path)
    config = _config(f)
    linears, formats = _linears(f, config)
    vectors = _vectors(f, config)
    extra = sorted(set(f.tensors) - f.used - {"output.weight"})
    if extra:
        raise ConvertError(f"{path}: unexpected tensor {extra[0]!r}" + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    tokenizer = gguf_tokenizer(f.meta, config["vocab_size"], path)
    default = "t1" if formats == {"t1"} else "t2" if formats else "f16"
    return config, linears, vectors, tokenizer, default


def _f32(x):
    """GGUF stores these as float32: 1e-05 arrives as 9.99999974e-06; take the shortest decimal."""
    return float(str(np.float32(x)))


def _tq_loader(t, name, extra_scale):
    def load():
        w = t.f32()  # the one float copy: dequantized {-d, 0, +d} per 256-weight block
        d = np.abs(w).max(initial=0.0)
        if not np.all((w == 0) | (np.abs(w) == d)):
            raise ConvertError(f"{name}: blocks with different scales: not one ternary scale per tensor")
        scale = np.float32(d if d > 0 else 1.0) * np.float32(extra_scale)
        return np.sign(w).astype(np.int8), scale, "mul"
    return load


# ---------------------------------------------------------------------------------------------
# tokenizers


def gguf_tokenizer(meta, vocab_size, path):
    model = meta("tokenizer.ggml.model")
    tokens = meta("tokenizer.ggml.tokens")
    if model is None or tokens is None:
        raise ConvertError(f"{path}: the GGUF holds no tokenizer")
    types = meta("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    bos, eos = meta("tokenizer.ggml.bos_token_id"), meta("tokenizer.ggml.eos_token_id")
    eot = meta("tokenizer.ggml.eot_token_id")
    if eot is None:
        eot = next((tokens.index(t) for t in EOT_TOKENS if t in tokens), None)
    if model == "llama":
        kind = "sentencepiece"
        data = sentencepiece_proto(
            tokens, meta("tokenizer.ggml.scores") or [0.0] * len(tokens), types,
            add_dummy_prefix=bool(meta("tokenizer.ggml.add_space_prefix", True)),
            unk_id=meta("tokenizer.ggml.unknown_token_id"), bos_id=bos, eos_id=eos,
            pad_id=meta("tokenizer.ggml.padding_token_id"))
        add_bos_default = True
    elif model == "gpt2":
        kind = "hf"
        try:  # llama.cpp: a missing tokenizer.ggml.pre means "default"
            pre = pretokenize.gguf_pre(meta("tokenizer.ggml.pre"))
        except pretokenize.PreTokenizerError as e:
            raise ConvertError(f"{path}: {e}") from None
        data = bpe_tokenizer_json(tokens, meta("tokenizer.ggml.merges") or [], types, pre["ignore_merges"], path)
        add_bos_default = pre["add_bos"]
    else:
        raise ConvertError(f"{path}: GGUF tokenizer model {model!r} is not supported (llama, gpt2)")

    def valid(i):
        return int(i) if i is not None and 0 <= int(i) < vocab_size else None

    template = meta("tokenizer.chat_template")
    config = {"type": kind, "bos_id": valid(bos), "eos_id": valid(eos), "eot_id": valid(eot),
              "add_bos": bool(meta("tokenizer.ggml.add_bos_token", add_bos_default)) and valid(bos) is not None,
              "chat_template": template if isinstance(template, str) else None}
    if kind == "hf":  # the words -> BPE split, by llama.cpp's regexes (engine/runtime/pretokenize.py)
        config["pre_split"] = pre["type"]
    return config, data


def _varint(n):
    n &= (1 << 64) - 1  # negative int32 -> ten-byte two's complement, as protobuf does
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _pb(field, value):
    """One protobuf field: int/bool -> varint, float -> fixed32, bytes/str -> length-delimited."""
    if isinstance(value, float):
        return _varint(field << 3 | 5) + struct.pack("<f", value)
    if isinstance(value, (bool, int)):
        return _varint(field << 3) + _varint(int(value))
    if isinstance(value, str):
        value = value.encode("utf-8")
    return _varint(field << 3 | 2) + _varint(len(value)) + value


def sentencepiece_proto(pieces, scores, types, add_dummy_prefix, unk_id, bos_id, eos_id, pad_id):
    """A SentencePiece ModelProto (sentencepiece_model.proto) of a BPE model with these pieces.

    ModelProto: pieces = 1 {piece = 1, score = 2, type = 3}, trainer_spec = 2 {model_type = 3
    (BPE = 2), vocab_size = 4, byte_fallback = 35, unk_id = 40, bos_id = 41, eos_id = 42,
    pad_id = 43}, normalizer_spec = 3 {name = 1, add_dummy_prefix = 3, remove_extra_whitespaces
    = 4, escape_whitespaces = 5}. llama.cpp's SPM tokenizer merges by score like SentencePiece
    BPE and does no normalization beyond the space prefix and '▁' escaping, hence "identity".
    """
    out = bytearray()
    for piece, score, typ in zip(pieces, scores, types):
        out += _pb(1, _pb(1, piece) + _pb(2, float(score)) + _pb(3, int(typ)))
    trainer = _pb(3, 2) + _pb(4, len(pieces)) + _pb(35, BYTE in types)
    for field, value in ((40, unk_id), (41, bos_id), (42, eos_id), (43, pad_id)):
        trainer += _pb(field, -1 if value is None else int(value))
    normalizer = _pb(1, "identity") + _pb(3, bool(add_dummy_prefix)) + _pb(4, False) + _pb(5, True)
    out += _pb(2, trainer) + _pb(3, normalizer)
    return bytes(out)


def bpe_tokenizer_json(tokens, merges, types, ignore_merges, path):
    """A byte-level BPE tokenizer.json (GPT-2 / Llama-3 style) from GGUF vocab and merges.

    Its pre-tokenizer only maps bytes to GPT-2's printable characters: the split into words
    before it is llama.cpp's, done by engine.runtime.pretokenize (the .tpk tokenizer config's
    pre_split), because llama.cpp's regex dialect is not the one tokenizers runs.
    ignore_merges: a word found whole in the vocabulary is one token (llama.cpp's flag)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    pre_tok = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    vocab = {}
    for i, tok in enumerate(tokens):
        vocab.setdefault(tok, i)
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    try:  # tokenizers raises a bare Exception (or panics) on e.g. a merge of unknown tokens
        tk = Tokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=ignore_merges))
        tk.pre_tokenizer = pre_tok
        tk.decoder = decoders.ByteLevel()
        special = [AddedToken(tokens[i], special=True, normalized=False) for i, t in enumerate(types) if t == CONTROL]
        user = [AddedToken(tokens[i], special=False, normalized=False) for i, t in enumerate(types) if t == USER_DEFINED]
        tk.add_special_tokens(special)
        tk.add_tokens(user)
        text = tk.to_str()
    except BaseException as e:
        if isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        raise ConvertError(f"{path}: the GGUF vocabulary and merges do not make a BPE tokenizer: "
                           f"{' '.join(str(e).split())[:200]}") from None
    return json.dumps(json.loads(text), ensure_ascii=False).encode("utf-8")
