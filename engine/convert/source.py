"""What every converter source shares: source tensors read lazily in row chunks, the Linear
description of one projection, the ternarizers, and ConvertError. The HF reader
(engine.convert) and the GGUF reader (engine.convert.gguf) both import this module and not
each other, so there is no import cycle.
"""
import numpy as np

from engine import quant

CHUNK_ELEMS = 1 << 22   # elements per row chunk of float work: stays in L2/L3, not a full copy
EOT_TOKENS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endofturn|>")


# What a JSON field of the wrong type raises where the code expects a number, string, list or
# object (int("x"), None["k"], [].get, ...): in a user's file that is a malformed file.
MALFORMED = (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError)


class ConvertError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


# ---------------------------------------------------------------------------------------------
# source tensors: numpy views of the file (bf16 as uint16) converted to float32 in row chunks


class SrcTensor:
    """One source tensor, read lazily in row chunks as float32.

    arr: numpy view of the stored data, first axis = rows; dtype: "BF16" | "F16" | "F32" | "F64"
    (bf16 arrives as uint16) or "GGML" for GGUF block-quantized rows, which dequant(raw rows)
    turns into float32. row_index: a row permutation applied on reading (GGUF Q/K rows).
    """

    def __init__(self, arr, dtype, dequant=None, shape=None, row_index=None):
        self.arr, self.dtype, self.dequant, self.row_index = arr, dtype, dequant, row_index
        self.shape = tuple(shape if shape is not None else arr.shape)

    @property
    def size(self):
        return int(np.prod(self.shape))

    def f32(self, rows=slice(None)):
        if self.row_index is not None:
            rows = self.row_index[rows]
        a = self.arr[rows] if self.arr.ndim else self.arr  # a 0-d tensor (e.g. a weight_scale) has no rows
        if self.dtype == "BF16":  # bf16 is the top half of a float32
            return (a.astype(np.uint32) << 16).view(np.float32)
        if self.dtype in ("F16", "F32", "F64"):
            return a.astype(np.float32)
        if self.dtype == "GGML":
            return self.dequant(a).astype(np.float32, copy=False).reshape((-1,) + self.shape[1:])
        raise ConvertError(f"a tensor of dtype {self.dtype} where float weights were expected")

    def row_chunks(self):
        rows = self.shape[0] if self.shape else 1
        if self.size == 0:  # a 0 in another dim: one empty chunk, not `rows` of them (fuzzer: 7e16 rows)
            yield slice(0, rows)
            return
        step = max(1, CHUNK_ELEMS // max(1, self.size // max(rows, 1)))
        for r0 in range(0, rows, step):
            yield slice(r0, min(rows, r0 + step))

    def abs_median(self):
        """The lower median of |W| (torch.median's choice), found on the bit patterns: for
        non-negative IEEE numbers the integer order is the numeric order, so no float copy."""
        width = {"BF16": 16, "F16": 16, "F32": 32}.get(self.dtype)
        if width is None:
            a = np.abs(self.f32().ravel())
            return float(np.partition(a, (a.size - 1) // 2)[(a.size - 1) // 2])
        utype = np.uint16 if width == 16 else np.uint32
        bits = self.arr.view(utype).ravel() & utype((1 << (width - 1)) - 1)
        k = (bits.size - 1) // 2
        m = np.partition(bits, k)[k:k + 1]
        if self.dtype == "BF16":
            return float((m.astype(np.uint32) << 16).view(np.float32)[0])
        return float(m.view(np.float16 if self.dtype == "F16" else np.float32)[0])


def ternarize(t, method):
    """Float weights -> (int8 ternary [N, K], f32 scale) with out = acc / act_scale * scale.

    absmean as transformers WeightQuant (integrations/bitnet.py) and 1bitLLM's weight_quant:
    s = 1 / max(mean|W|, 1e-5) in float32, q = clamp(rint(W * s), -1, 1), W ~ q / s.
    absmedian (BitNet b1.58 Reloaded, arXiv 2407.09527): median|W| in place of the mean.
    """
    if method == "absmean":
        total = 0.0
        for rows in t.row_chunks():
            total += float(np.abs(t.f32(rows)).sum(dtype=np.float64))
        m = total / max(1, t.size)
    elif method == "absmedian":
        m = t.abs_median()
    else:
        raise ConvertError(f"unknown --scale {method!r}")
    s = quant.ternary_inv_scale(m)
    q = np.empty(t.shape, dtype=np.int8)
    for rows in t.row_chunks():
        q[rows] = quant.ternarize_rows(t.f32(rows), s)
    return q, np.float32(1.0) / s


def exact_ternary(t):
    """If t holds only {-a, 0, +a} (ternary weights already dequantized), (q, a); else None."""
    a = 0.0
    for rows in t.row_chunks():
        a = max(a, float(np.abs(t.f32(rows)).max(initial=0.0)))
    q = np.empty(t.shape, dtype=np.int8)
    for rows in t.row_chunks():
        w = t.f32(rows)
        if not np.all((w == 0) | (np.abs(w) == np.float32(a))):
            return None
        q[rows] = np.sign(w)
    return q, np.float32(a if a > 0 else 1.0)


def unpack_hf(packed, n):
    """transformers' packed ternary U8 [n/4, K] -> int8 [n, K].

    integrations/bitnet.py pack_weights: byte[r, c] bits (2i, 2i+1) = W[i*R + r, c] + 1, R = n/4.
    """
    r = packed.shape[0]
    if r * 4 != n:
        raise ConvertError(f"packed weight has {r} rows, expected {n}/4 (out_features must be a multiple of 4)")
    out = np.empty((n, packed.shape[1]), dtype=np.int8)
    for i in range(4):
        codes = (packed >> np.uint8(2 * i)) & np.uint8(3)
        if np.any(codes == 3):
            raise ConvertError("packed weight holds the code 3, which is not a ternary value")
        out[i * r:(i + 1) * r] = codes.view(np.int8) - np.int8(1)
    return out


class Linear:
    """How one linear's weights come out of the source; nothing is read until asked.

    Either load_ternary: () -> (int8 [N, K], scale, scale_mode) for weights stored ternary, or
    master: SrcTensor of float weights. A master is ternarized with --scale (or, exact=True,
    taken as already-ternary {-a, 0, a} when it is) for a ternary output; for an fp16 output it
    is kept as is, unless is_ternary (online / shadow weights: the model is the ternarized one).
    in_norm: SrcTensor of the per-projection RMSNorm (quantization_config use_rms_norm) or None.
    """

    def __init__(self, load_ternary=None, scale_mode="mul", master=None, is_ternary=False,
                 exact=False, in_norm=None):
        self.load_ternary, self.scale_mode = load_ternary, scale_mode
        self.master, self.is_ternary, self.exact, self.in_norm = master, is_ternary, exact, in_norm


class TensorSet:
    """A source's tensors by name, handing each out while recording which were used, so a
    converter can refuse a file with tensors it did not expect. where: named in errors."""

    def __init__(self, where, tensors: dict):
        self.where, self.tensors, self.used = where, tensors, set()

    def has(self, name):
        return name in self.tensors

    def get(self, name):
        t = self.tensors.get(name)
        if t is None:
            raise ConvertError(f"{self.where}: missing tensor {name!r}")
        self.used.add(name)
        return t
