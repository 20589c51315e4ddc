""".tpk model files: one safetensors file, opened by mmap (layout: docs/CONTRACTS.md).

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON
({name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}), then the
tensor data; offsets count from the first data byte, and the tensors tile the data with no
gap or overlap. The .tpk config is JSON in __metadata__["tpk"].

Reading parses the header here (no safetensors package, no torch) and hands out read-only
numpy views into one mmap: nothing is copied, so opening a multi-GB model costs milliseconds.
Every problem with the bytes on disk raises TpkError with one line saying what is wrong.
"""
import json
import math
import mmap
import os
import struct

import numpy as np
from engine import quant as q4
from engine import kernels
from engine.kernels import FORMATS as TERNARY_FORMATS  # the one list of packed ternary formats

FORMAT_VERSION = 1
ARCHITECTURES = ("bitnet", "llama")

# Safetensors dtype names <-> numpy. bf16 has no numpy dtype; a .tpk never holds it, but HF
# checkpoints do (read_safetensors returns it as uint16: the top half of a float32).
DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U64": np.dtype("<u8"), "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_NAME_OF = {np.dtype("<f4"): "F32", np.dtype("<f2"): "F16", np.dtype("u1"): "U8",
            np.dtype("i1"): "I8", np.dtype("<i2"): "I16"}

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit
MAX_LAYERS = 4096  # far beyond any released model (hundreds); bounds the per-layer tensor table
_ALIGN = 64                           # data start and every big tensor start on a cache line

ATTN_PROJS = ("q", "k", "v", "o")
MLP_PROJS = ("gate", "up", "down")
# The one list of weight formats (ternary packings + unpacked f16) and of lm_head formats;
# converter, model, bench and synthetic generator all check against these.
WEIGHT_FORMATS = (*TERNARY_FORMATS, "f16")
LM_HEAD_FORMATS = ("f16", "int8", "q4")


class TpkError(Exception):
    """A file that is not a valid .tpk: the message says what is wrong, in one line."""


def row_bytes(fmt, k):
    """Bytes of one packed row of k ternary weights (t2: 256 weights, t1: 320 per 64 bytes,
    tl2: 48 per 10 bytes; tl2 rows are interleaved in tiles of 32, docs/formats.md).
    The C++ packer (csrc/ternary.h) owns the layout, so it alone gives the number."""
    return kernels.row_bytes(fmt, int(k))


# ---------------------------------------------------------------------------------------------
# safetensors container


def read_safetensors(path, error=TpkError):
    """Parse a safetensors file -> (metadata, tensors {name: read-only np view}, dtypes {name: str}).

    The views share one read-only mmap of the file; dtypes holds the safetensors dtype names
    ("BF16" arrays come back as uint16).
    Raises `error` (TpkError by default) with one line for any malformed input.
    """
    try:
        f = open(path, "rb")
    except OSError as e:
        raise error(f"{path}: cannot open: {e.strerror or e}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise error(f"{path}: not a safetensors file ({size} bytes, too short for a header)")
        (n,) = struct.unpack("<Q", f.read(8))
        if n > MAX_HEADER_BYTES or n < 2:
            raise error(f"{path}: not a safetensors file (header length {n} is bogus)")
        if 8 + n > size:
            raise error(f"{path}: truncated: header says {n} bytes, file has {size - 8} after the length")
        raw = f.read(n)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise error(f"{path}: not a safetensors file (header is not JSON)") from None
        if not isinstance(header, dict):
            raise error(f"{path}: not a safetensors file (header is not a JSON object)")
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict):
            raise error(f"{path}: malformed header: __metadata__ is not an object")

        data_start, data_len = 8 + n, size - 8 - n
        spans = []
        entries = {}
        for name, info in header.items():
            try:
                dtype = DTYPES[info["dtype"]]
                shape = tuple(info["shape"])
                begin, end = info["data_offsets"]
                if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
                    raise TypeError
                if not all(isinstance(o, int) and not isinstance(o, bool) for o in (begin, end)):
                    raise TypeError
            except (KeyError, TypeError, ValueError):
                raise error(f"{path}: malformed header entry for tensor {name!r}: {info!r:.200}") from None
            nbytes = math.prod(shape) * dtype.itemsize
            if not 0 <= begin <= end or end - begin != nbytes:
                raise error(f"{path}: tensor {name!r}: data_offsets [{begin}, {end}] do not hold "
                            f"{info['dtype']}{list(shape)} ({nbytes} bytes)")
            if end > data_len:
                raise error(f"{path}: truncated: tensor {name!r} ends at byte {end} of the data, "
                            f"the file holds {data_len}")
            spans.append((begin, end, name))
            entries[name] = (dtype, shape, begin)
        spans.sort()
        pos = 0
        for begin, end, name in spans:
            if begin < pos:
                raise error(f"{path}: tensor {name!r} overlaps the tensor before it (offset {begin} < {pos})")
            if begin > pos:
                raise error(f"{path}: gap in the data before tensor {name!r} (offset {begin}, expected {pos})")
            pos = end
        if pos != data_len:
            raise error(f"{path}: {data_len - pos} bytes after the last tensor (data ends at {pos})")

        # mmap of an empty range is an error on Linux; a file with no tensor data maps nothing.
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size > data_start else b""
    tensors = {}
    for name, (dtype, shape, begin) in entries.items():
        count = math.prod(shape)
        arr = np.frombuffer(buf, dtype=dtype, count=count, offset=data_start + begin if count else 0)
        tensors[name] = arr.reshape(shape)
    return metadata, tensors, {name: header[name]["dtype"] for name in entries}


def _layout(specs):
    """Order and offsets for the tensors to write: [(name, dtype_name, shape, begin, end)].

    safetensors allows no gaps, so alignment comes from the order: tensors whose size is a
    multiple of 64 bytes first (every packed matrix: rows are whole 64-byte blocks), then the rest
    by falling itemsize, so every tensor starts aligned to its element size at least.
    """
    items = []
    for name, (dtype_name, shape) in specs.items():
        nbytes = math.prod(shape) * DTYPES[dtype_name].itemsize
        key = (0, 0) if nbytes % _ALIGN == 0 else (1, -DTYPES[dtype_name].itemsize)
        items.append((key, name, dtype_name, tuple(shape), nbytes))
    items.sort(key=lambda t: t[0])  # stable: keeps the caller's order within a group
    out, pos = [], 0
    for _, name, dtype_name, shape, nbytes in items:
        out.append((name, dtype_name, shape, pos, pos + nbytes))
        pos += nbytes
    return out


class Writer:
    """Streams a .tpk to disk one tensor at a time (the converter never holds the whole model).

    specs: {name: (dtype name, shape)} of every tensor, validated against the config up front.
    write_tensor() may come in any order; close() checks that all were written and moves the
    file into place, so an interrupted conversion never leaves a half-written .tpk behind.
    """

    def __init__(self, path, config, specs):
        validate(config, specs, where="write")
        self.path = os.fspath(path)
        self._tmp = self.path + ".partial"
        self._layout = {name: (dt, shape, b, e) for name, dt, shape, b, e in _layout(specs)}
        header = {"__metadata__": {"tpk": json.dumps(config, sort_keys=True)}}
        for name, (dt, shape, b, e) in self._layout.items():
            header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [b, e]}
        hbytes = json.dumps(header, separators=(",", ":")).encode()
        hbytes += b" " * (-(8 + len(hbytes)) % _ALIGN)  # data starts on a 64-byte boundary
        self._data_start = 8 + len(hbytes)
        total = max((e for *_, e in self._layout.values()), default=0)
        self._pending = set(self._layout)
        self._f = open(self._tmp, "wb")
        self._f.write(struct.pack("<Q", len(hbytes)) + hbytes)
        self._f.truncate(self._data_start + total)

    def write_tensor(self, name, arr):
        dt, shape, begin, _ = self._layout[name]
        arr = np.asarray(arr)
        if _NAME_OF.get(arr.dtype) != dt or arr.shape != shape:
            raise ValueError(f"tensor {name}: got {arr.dtype}{list(arr.shape)}, planned {dt}{list(shape)}")
        if name not in self._pending:
            raise ValueError(f"tensor {name} written twice")
        self._f.seek(self._data_start + begin)
        self._f.write(memoryview(np.ascontiguousarray(arr)).cast("B"))
        self._pending.discard(name)

    def close(self):
        self._f.close()
        if self._pending:
            os.unlink(self._tmp)
            raise ValueError(f"tensors never written: {sorted(self._pending)}")
        os.replace(self._tmp, self.path)

    def abort(self):
        self._f.close()
        if os.path.exists(self._tmp):
            os.unlink(self._tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write(path, config, tensors):
    """Write a .tpk holding `tensors` (tokenizer included as tensors['tokenizer'])."""
    specs = {}
    for name, arr in tensors.items():
        arr = np.asarray(arr)
        if arr.dtype not in _NAME_OF:
            raise ValueError(f"tensor {name}: dtype {arr.dtype} cannot go in a .tpk")
        specs[name] = (_NAME_OF[arr.dtype], arr.shape)
    with Writer(path, config, specs) as w:
        for name, arr in tensors.items():
            w.write_tensor(name, arr)


# ---------------------------------------------------------------------------------------------
# config and the tensors it implies

_REQUIRED = {
    "hidden_size": int, "intermediate_size": int, "num_layers": int, "num_heads": int,
    "num_kv_heads": int, "head_dim": int, "vocab_size": int, "max_position": int,
    "rms_norm_eps": float, "rope_theta": float, "rope_style": str, "hidden_act": str,
    "sub_norms": bool, "tie_word_embeddings": bool, "weight_format": str, "lm_head_format": str,
    "scale_mode": str, "tokenizer": dict,
}
_CHOICES = {"rope_style": ("neox",), "hidden_act": ("relu2", "silu"),
            "weight_format": WEIGHT_FORMATS, "lm_head_format": LM_HEAD_FORMATS,
            "scale_mode": ("mul", "div")}


def _is(value, kind):
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def check_config(config):
    """Raise TpkError unless config is a version-1 .tpk config we can run."""
    if not isinstance(config, dict):
        raise TpkError("config is not a JSON object")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise TpkError(f"unknown .tpk format_version {version!r} (this engine reads {FORMAT_VERSION})")
    arch = config.get("architecture")
    if arch not in ARCHITECTURES:
        raise TpkError(f"unknown architecture {arch!r} (known: {', '.join(ARCHITECTURES)})")
    for key, kind in _REQUIRED.items():
        if key not in config:
            raise TpkError(f"config lacks {key!r}")
        if not _is(config[key], kind):
            raise TpkError(f"config {key!r} = {config[key]!r} is not a {kind.__name__}")
        if kind is int and config[key] <= 0:
            raise TpkError(f"config {key!r} = {config[key]} must be positive")
        if kind is float and config[key] <= 0:
            raise TpkError(f"config {key!r} = {config[key]} must be positive")
    if config["num_layers"] > MAX_LAYERS:  # before anything is built per layer
        raise TpkError(f"config 'num_layers' = {config['num_layers']} is beyond this format's {MAX_LAYERS}")
    for key, allowed in _CHOICES.items():
        if config[key] not in allowed:
            raise TpkError(f"config {key!r} = {config[key]!r}, expected one of {', '.join(allowed)}")
    eps = config.get("proj_norm_eps")
    if eps is not None and not (_is(eps, float) and eps > 0):
        raise TpkError(f"config 'proj_norm_eps' = {eps!r} is not a positive number or null")
    check_rope_scaling(config.get("rope_scaling"), config["head_dim"])
    if config["num_heads"] % config["num_kv_heads"]:
        raise TpkError(f"num_heads {config['num_heads']} is not a multiple of num_kv_heads {config['num_kv_heads']}")
    if config["head_dim"] % 2:
        raise TpkError(f"head_dim {config['head_dim']} is odd (RoPE rotates pairs)")
    tok = config["tokenizer"]
    if tok.get("type") not in ("sentencepiece", "hf"):
        raise TpkError(f"tokenizer type {tok.get('type')!r}, expected sentencepiece or hf")
    for key in ("bos_id", "eos_id", "eot_id"):
        v = tok.get(key)
        if v is not None and not (_is(v, int) and 0 <= v < config["vocab_size"]):
            raise TpkError(f"tokenizer {key} = {v!r} is not a token id below vocab_size {config['vocab_size']}")
    if not isinstance(tok.get("add_bos", False), bool):
        raise TpkError("tokenizer add_bos is not a bool")
    if tok.get("chat_template") is not None and not isinstance(tok["chat_template"], str):
        raise TpkError("tokenizer chat_template is not a string or null")


# "rope_scaling" (optional; absent or null: plain RoPE): the resolved parameters of one
# transformers rope type (engine/runtime/rope.py implements them). {type: {key: kind}}.
ROPE_SCALING = {
    "default": {},
    "linear": {"factor": float},
    "dynamic": {"factor": float, "max_position_embeddings": int},
    "yarn": {"factor": float, "original_max_position_embeddings": int, "beta_fast": float,
             "beta_slow": float, "truncate": bool, "attention_factor": float},
    "llama3": {"factor": float, "low_freq_factor": float, "high_freq_factor": float,
               "original_max_position_embeddings": int},
    "longrope": {"short_factor": list, "long_factor": list, "original_max_position_embeddings": int,
                 "attention_factor": float},
    "freq_factors": {"factors": list},  # llama.cpp rope_freqs: inv_freq[i] / factors[i]
}


def check_rope_scaling(rs, head_dim):
    """Raise TpkError unless rs is null or a known rope_scaling dict with valid parameters."""
    if rs is None:
        return
    if not isinstance(rs, dict):
        raise TpkError(f"config 'rope_scaling' = {rs!r} is not an object or null")
    kind = rs.get("rope_type")
    if kind not in ROPE_SCALING:
        raise TpkError(f"unknown rope_scaling type {kind!r} (known: {', '.join(ROPE_SCALING)})")
    for key, k in ROPE_SCALING[kind].items():
        v = rs.get(key)
        if not _is(v, k):
            raise TpkError(f"rope_scaling ({kind}) {key!r} = {v!r} is not a {k.__name__}")
        if k is list:
            if len(v) != head_dim // 2 or not all(_is(x, float) and x > 0 for x in v):
                raise TpkError(f"rope_scaling ({kind}) {key!r}: expected {head_dim // 2} positive numbers")
        elif k is not bool and v <= 0:
            raise TpkError(f"rope_scaling ({kind}) {key!r} = {v} must be positive")
    if kind == "llama3" and rs["high_freq_factor"] <= rs["low_freq_factor"]:
        raise TpkError("rope_scaling (llama3) needs high_freq_factor > low_freq_factor")


def linear_shapes(config):
    """{prefix: (N, K)} of every linear in the model (prefix 'layers.{i}.attn.q' etc.)."""
    h, inter = config["hidden_size"], config["intermediate_size"]
    qd = config["num_heads"] * config["head_dim"]
    kvd = config["num_kv_heads"] * config["head_dim"]
    per_layer = {"attn.q": (qd, h), "attn.k": (kvd, h), "attn.v": (kvd, h), "attn.o": (h, qd),
                 "mlp.gate": (inter, h), "mlp.up": (inter, h), "mlp.down": (h, inter)}
    return {f"layers.{i}.{p}": nk for i in range(config["num_layers"]) for p, nk in per_layer.items()}


def head_matrix(tensors: dict) -> np.ndarray:
    """The lm_head [vocab, hidden] a model's tensors stand for: an f16 head (or the embedding,
    when tied) as stored; int8 and q4 heads dequantized to f32."""
    if "lm_head.sub" in tensors:
        return q4.dequantize(tensors["lm_head.weight"], tensors["lm_head.sub"],
                             tensors["lm_head.scale"], tensors["embed"].shape[1])
    if "lm_head.scale" in tensors:
        return tensors["lm_head.weight"].astype(np.float32) * tensors["lm_head.scale"][:, None]
    return tensors.get("lm_head.weight", tensors["embed"])


def expected_tensors(config, embed_dtype="F16", tokenizer_bytes=None):
    """{name: (dtype name, shape)} of every tensor a .tpk with this config holds.

    embed may be F16 or F32 (the caller says which it has); the tokenizer's length is free
    (None: any).
    """
    h, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    fmt = config["weight_format"]
    specs = {"embed": (embed_dtype, (vocab, h)), "norm": ("F32", (h,)),
             "tokenizer": ("U8", (tokenizer_bytes,))}
    for i in range(config["num_layers"]):
        specs[f"layers.{i}.attn_norm"] = ("F32", (h,))
        specs[f"layers.{i}.ffn_norm"] = ("F32", (h,))
        if config["sub_norms"]:
            specs[f"layers.{i}.attn.sub_norm"] = ("F32", (h,))
            specs[f"layers.{i}.mlp.sub_norm"] = ("F32", (inter,))
    for prefix, (n, k) in linear_shapes(config).items():
        if fmt == "f16":
            specs[f"{prefix}.weight"] = ("F16", (n, k))
        else:
            specs[f"{prefix}.weight"] = ("U8", (n, row_bytes(fmt, k)))
            specs[f"{prefix}.scale"] = ("F32", (1,))
        if config.get("proj_norm_eps") is not None:
            specs[f"{prefix}.in_norm"] = ("F32", (k,))
    if config["lm_head_format"] == "int8":
        specs["lm_head.weight"] = ("I8", (vocab, h))
        specs["lm_head.scale"] = ("F32", (vocab,))
    elif config["lm_head_format"] == "q4":  # layout: engine/quant.py
        if h > q4.MAX_K:
            raise TpkError(f"a q4 lm_head needs hidden_size <= {q4.MAX_K}, got {h}")
        specs["lm_head.weight"] = ("U8", (vocab, q4.groups(h) * q4.GROUP // 2))
        specs["lm_head.sub"] = ("I16", (vocab, q4.groups(h)))
        specs["lm_head.scale"] = ("F32", (vocab,))
    elif not (config["tie_word_embeddings"] and embed_dtype == "F16"):
        specs["lm_head.weight"] = ("F16", (vocab, h))
    return specs


def validate(config, specs, where="read"):
    """Check config, then that specs {name: (dtype name, shape)} are exactly the tensors it needs."""
    check_config(config)
    embed = specs.get("embed")
    if embed is None:
        raise TpkError("missing tensor 'embed'")
    if embed[0] not in ("F16", "F32"):
        raise TpkError(f"tensor 'embed' has dtype {embed[0]}, expected F16 or F32")
    tok = specs.get("tokenizer")
    if tok is not None and (tok[0] != "U8" or len(tok[1]) != 1 or tok[1][0] == 0):
        raise TpkError(f"tensor 'tokenizer' is {tok[0]}{list(tok[1])}, expected non-empty U8[n]")
    expected = expected_tensors(config, embed[0], tok[1][0] if tok else None)
    if embed[0] == "F32" and config["tie_word_embeddings"] and "lm_head.weight" not in specs \
            and config["lm_head_format"] == "f16":
        del expected["lm_head.weight"]  # tied f32 embedding without an f16 copy: the head is embed
    missing = [n for n in expected if n not in specs]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise TpkError(f"missing tensor {missing[0]!r}{more}")
    extra = [n for n in specs if n not in expected]
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise TpkError(f"unexpected tensor {extra[0]!r}{more}")
    for name, (dt, shape) in expected.items():
        got_dt, got_shape = specs[name][0], tuple(specs[name][1])
        if got_dt != dt or got_shape != tuple(shape):
            raise TpkError(f"tensor {name!r} is {got_dt}{list(got_shape)}, expected {dt}{list(shape)}")


# ---------------------------------------------------------------------------------------------
# reading


class Tpk:
    """An opened .tpk: config dict and read-only numpy views into the file's mmap."""

    def __init__(self, path, config, tensors):
        self.path = path
        self.config = config
        self.tensors = tensors

    @property
    def tokenizer_bytes(self):
        return self.tensors["tokenizer"].tobytes()

    def __repr__(self):
        c = self.config
        return (f"Tpk({self.path!r}, {c['architecture']}, {c['num_layers']} layers, "
                f"hidden {c['hidden_size']}, weights {c['weight_format']})")


def read(path):
    """Open a .tpk by mmap and validate it; raises TpkError if it is not a valid .tpk."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise TpkError(f"{path}: is a directory, not a .tpk file")
    metadata, tensors, dtypes = read_safetensors(path)
    if "tpk" not in metadata:
        raise TpkError(f"{path}: a safetensors file but not a .tpk (no 'tpk' config in its metadata)")
    try:
        config = json.loads(metadata["tpk"])
    except (TypeError, ValueError):
        raise TpkError(f"{path}: the .tpk config is not JSON") from None
    specs = {name: (dtypes[name], arr.shape) for name, arr in tensors.items()}
    try:
        validate(config, specs)
    except TpkError as e:
        raise TpkError(f"{path}: {e}") from None
    for name, arr in tensors.items():
        # The kernels take typed arrays and refuse misaligned ones. Our writer aligns every
        # tensor; safetensors itself does not promise it (a file re-saved by another tool may
        # start its data at any byte), so such a tensor is copied into aligned memory.
        if arr.size and arr.ctypes.data % arr.dtype.itemsize:
            tensors[name] = arr.copy()
            tensors[name].flags.writeable = False
    return Tpk(path, config, tensors)
