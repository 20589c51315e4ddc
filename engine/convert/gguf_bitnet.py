"""bitnet.cpp's GGUF files (microsoft/BitNet): its I2_S weights and its architecture names.

bitnet.cpp carries its own llama.cpp fork whose ggml adds tensor types the `gguf` package does
not know: I2_S = 36, I8_S = 37 (activations only), TL1 = 38, TL2 = 39 (ggml/include/ggml.h).
39 is MXFP4 in upstream ggml, so in a file of a bitnet.cpp architecture 38/39 are read as
TL1/TL2 and refused, not mis-read as MXFP4.

I2_S, as written by quantize_i2_s (src/ggml-bitnet-mad.cpp, the x86 / default ACT_PARALLEL
path, which llama-quantize calls once over the whole tensor) and by quantize_to_i2_s in
utils/convert-hf-to-gguf-bitnet.py:
  - the tensor's N*K weights in row-major order (ggml ne = [K, N]) are cut into blocks of 128;
  - block b is 32 bytes; weight j of the block is byte b*32 + j % 32, bits 6 - 2*(j // 32)
    (the first 32 weights are the top bit pairs);
  - a code c means the ternary value c - 1 (0 -> -1, 1 -> 0, 2 -> +1; 3 is never written);
  - one float32 scale for the whole tensor follows the N*K/4 packed bytes, and the tensor
    is padded to N*K/4 + 32 bytes (ggml_nbytes); weight = scale * (c - 1), the scale being
    max |w| of the already-ternarized float weights (= the absmean scale).
bitnet.cpp's ARM build (QK_I2_S 64) and its x86 build without ACT_PARALLEL pack differently,
but nothing in the file says which packing it holds; files made by its Python converter or
by the default x86 llama-quantize (the published ones) use the layout above.

TL1/TL2 are lookup-table tilings whose block sizes come from the kernel_config.ini the file
was made for (utils/codegen_tl1.py / codegen_tl2.py), which the file does not record: refused.

Architectures: "bitnet" (1bitLLM bitnet_b1_58, llama.cpp build_bitnet: SiLU, sub-norms) and
"bitnet-b1.58" (BitNet b1.58 2B-4T, build_bitnet_158: squared ReLU, sub-norms); both use
NeoX RoPE and the same tensor names, with the metadata keys prefixed by the architecture name.
"""
import numpy as np

from engine.convert.source import ConvertError

I2_S, I8_S, TL1, TL2 = 36, 37, 38, 39
TYPE_NAMES = {I2_S: "I2_S", I8_S: "I8_S", TL1: "TL1", TL2: "TL2"}
BLOCK = 128  # I2_S weights per 32-byte block
TAIL = 32    # bytes after the packed codes; the scale is the first 4
HIDDEN_ACT = {"bitnet": "silu", "bitnet-b1.58": "relu2"}  # general.architecture -> FFN activation


def is_bitnet_type(raw_type, arch):
    """Whether a tensor type id is one of bitnet.cpp's own (39 only in its architectures)."""
    return raw_type in (I2_S, I8_S, TL1) or (raw_type == TL2 and arch in HIDDEN_ACT)


def reader(path):
    """A gguf.GGUFReader that also lists bitnet.cpp's tensor types (as BitnetTensor)."""
    import gguf

    class _Reader(gguf.GGUFReader):
        def _build_tensors(self, start_offs, fields):
            arch_field = self.fields.get("general.architecture")
            arch = str(bytes(arch_field.parts[-1]), "utf-8", "replace") if arch_field is not None else None
            own = [f for f in fields if is_bitnet_type(int(f.parts[4][0]), arch)]
            extra = [_tensor(self, start_offs, f, path) for f in own]  # first: their own size errors
            super()._build_tensors(start_offs, [f for f in fields if not any(f is o for o in own)])
            names = {t.name for t in self.tensors}
            for t in extra:
                if t.name in names:
                    raise ValueError(f"Found duplicated tensor with name {t.name}")
                names.add(t.name)
            order = {id(f): i for i, f in enumerate(fields)}
            self.tensors = sorted(self.tensors + extra, key=lambda t: order[id(t.field)])

    return _Reader(path)


class BitnetTensor:
    """A tensor of a bitnet.cpp type, shaped like gguf's ReaderTensor (data = its raw bytes)."""

    def __init__(self, name, tensor_type, shape, data, field):
        self.name, self.tensor_type, self.shape, self.data, self.field = name, tensor_type, shape, data, field
        self.type_name = TYPE_NAMES[tensor_type]


def _tensor(rd, start_offs, field, path):
    _, name_data, _, dims, raw_type, offset = field.parts
    name = str(bytes(name_data), encoding="utf-8")
    n = int(np.prod(dims.astype(np.uint64), dtype=np.uint64))
    raw_type = int(raw_type[0])
    if raw_type != I2_S:  # TL1/TL2/I8_S: sized when decoded (refused there)
        return BitnetTensor(name, raw_type, dims, np.zeros(0, np.uint8), field)
    start, nbytes = int(start_offs + offset[0]), n // 4 + TAIL
    if start + nbytes > len(rd.data):
        raise ConvertError(f"{path}: I2_S tensor {name!r} ({n} weights) needs {nbytes} bytes at offset "
                           f"{start}, the file ends at {len(rd.data)}: truncated")
    return BitnetTensor(name, raw_type, dims, rd.data[start:start + nbytes], field)


def refuse(t, path):
    """The error for a bitnet.cpp tensor type that is not I2_S."""
    if t.tensor_type in (TL1, TL2):
        return ConvertError(
            f"{path}: tensor {t.name!r} is bitnet.cpp {t.type_name}, a lookup-table tiling whose block sizes "
            "come from the kernel configuration it was generated for, which the file does not record; "
            "convert the checkpoint with bitnet.cpp's --outtype i2_s (or f32) instead")
    return ConvertError(f"{path}: tensor {t.name!r} has bitnet.cpp type {t.type_name}, which is not a weight type")


def decode_i2s(t, n_rows, k, path):
    """I2_S tensor [n_rows, k] -> (int8 ternary [n_rows, k], float32 scale)."""
    n = n_rows * k
    if n % BLOCK:
        raise ConvertError(f"{path}: I2_S tensor {t.name!r} holds {n} weights, not a multiple of the "
                           f"{BLOCK}-weight block")
    raw = np.asarray(t.data, dtype=np.uint8).reshape(-1)
    if raw.size < n // 4 + 4:
        raise ConvertError(f"{path}: I2_S tensor {t.name!r} has {raw.size} bytes, expected {n // 4 + TAIL}")
    blocks = raw[:n // 4].reshape(-1, 1, 32)                       # [blocks, 1, byte]
    shifts = np.array([6, 4, 2, 0], np.uint8).reshape(1, 4, 1)      # weight j: group j // 32
    codes = ((blocks >> shifts) & 3).reshape(n_rows, k)             # [blocks, group, byte] = row-major
    if (codes == 3).any():
        raise ConvertError(f"{path}: I2_S tensor {t.name!r} holds code 3, which is no ternary value")
    scale = raw[n // 4:n // 4 + 4].view("<f4")[0]
    if not np.isfinite(scale) or scale < 0:
        raise ConvertError(f"{path}: I2_S tensor {t.name!r} has scale {scale}, not a finite non-negative number")
    q = codes.astype(np.int8) - np.int8(1)
    if scale == 0:  # quantize_i2_s of an all-zero tensor
        return np.zeros_like(q), np.float32(1.0)
    return q, np.float32(scale)


def i2s_loader(t, n_rows, k, row_index, extra_scale, path):
    """Linear.load_ternary for an I2_S weight (row_index: the GGUF Q/K row permutation undone)."""
    def load():
        q, scale = decode_i2s(t, n_rows, k, path)
        if row_index is not None:
            q = q[row_index]
        return q, np.float32(scale * np.float32(extra_scale)), "mul"
    return load
