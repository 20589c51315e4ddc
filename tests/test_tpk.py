""".tpk read/write (engine/formats/tpk.py): round trip, zero-copy mmap, and one TpkError per malformation."""
import json
import mmap
import os
import struct
import time

import numpy as np
import pytest

from engine.formats import tpk
from engine.formats.tpk import TpkError

TOKENIZER = b'{"version": "1.0", "model": {"type": "BPE"}}'


def tiny_config(**over):
    c = {"format_version": 1, "architecture": "bitnet", "hidden_size": 64, "intermediate_size": 96,
         "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "head_dim": 16, "vocab_size": 77,
         "max_position": 128, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "rope_style": "neox",
         "hidden_act": "relu2", "sub_norms": True, "tie_word_embeddings": True, "weight_format": "t2",
         "lm_head_format": "f16", "scale_mode": "mul", "proj_norm_eps": None,
         "tokenizer": {"type": "hf", "bos_id": 0, "eos_id": 1, "eot_id": None, "add_bos": True,
                       "chat_template": None}}
    c.update(over)
    return c


def tiny_tensors(config, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for name, (dt, shape) in tpk.expected_tensors(config, "F16", len(TOKENIZER)).items():
        dtype = tpk.DTYPES[dt]
        if name == "tokenizer":
            out[name] = np.frombuffer(TOKENIZER, np.uint8)
        elif dtype.kind == "f":
            out[name] = rng.standard_normal(shape).astype(dtype)
        else:
            out[name] = rng.integers(0, 100, shape).astype(dtype)
    return out


@pytest.fixture
def written(tmp_path):
    path = str(tmp_path / "m.tpk")
    config, tensors = tiny_config(), tiny_tensors(tiny_config())
    tpk.write(path, config, tensors)
    return path, config, tensors


def _split(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _join(path, header, data):
    h = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)


def _edit(path, fn):
    header, data = _split(path)
    data = fn(header, data) or data
    _join(path, header, data)


def _edit_config(path, **over):
    def fn(header, _):
        c = json.loads(header["__metadata__"]["tpk"])
        c.update(over)
        header["__metadata__"]["tpk"] = json.dumps(c)
    _edit(path, fn)


def _expect(path, *fragments):
    with pytest.raises(TpkError) as e:
        tpk.read(path)
    msg = str(e.value)
    assert "\n" not in msg
    for frag in fragments:
        assert frag in msg, msg
    return msg


# ---------------------------------------------------------------------------------------------


def test_round_trip(written):
    path, config, tensors = written
    t = tpk.read(path)
    assert t.config == config
    assert set(t.tensors) == set(tensors)
    for name, arr in tensors.items():
        assert t.tensors[name].dtype == arr.dtype and t.tensors[name].shape == arr.shape
        np.testing.assert_array_equal(t.tensors[name], arr)
    assert t.tokenizer_bytes == TOKENIZER
    assert "lm_head.weight" not in t.tensors  # tied, f16 embed


def test_views_are_read_only_mmap_and_aligned(written):
    t = tpk.read(written[0])
    header, _ = _split(written[0])
    for name, arr in t.tensors.items():
        assert not arr.flags.writeable
        base = arr
        while isinstance(base, (np.ndarray, memoryview)):
            base = base.obj if isinstance(base, memoryview) else base.base
        assert isinstance(base, mmap.mmap), name  # a view of the file, not a copy
        assert arr.ctypes.data % arr.dtype.itemsize == 0, name
    # every packed matrix starts on a 64-byte boundary of the file
    data_start = 8 + struct.unpack("<Q", open(written[0], "rb").read(8))[0]
    assert data_start % 64 == 0
    for name, info in header.items():
        if name.endswith(".weight") and info["dtype"] == "U8":
            assert (data_start + info["data_offsets"][0]) % 64 == 0, name


def test_is_plain_safetensors(written):
    from safetensors.numpy import load_file, save_file

    path, config, tensors = written
    loaded = load_file(path)  # the reference implementation accepts our files
    for name, arr in tensors.items():
        np.testing.assert_array_equal(loaded[name], arr)
    other = path + ".st"  # and we read files it writes
    save_file(tensors, other, metadata={"tpk": json.dumps(config)})
    assert tpk.read(other).config == config


@pytest.mark.parametrize("over", [
    {"weight_format": "t1"}, {"weight_format": "f16"}, {"lm_head_format": "int8"},
    {"tie_word_embeddings": False}, {"proj_norm_eps": 1e-6, "sub_norms": False, "architecture": "llama",
                                     "hidden_act": "silu", "scale_mode": "div"}])
def test_variants_round_trip(tmp_path, over):
    config = tiny_config(**over)
    tensors = tiny_tensors(config)
    tpk.write(tmp_path / "v.tpk", config, tensors)
    t = tpk.read(tmp_path / "v.tpk")
    assert set(t.tensors) == set(tensors) and t.config == config


def test_row_bytes_formula():
    assert [tpk.row_bytes("t2", k) for k in (1, 256, 257, 2560, 6912)] == [64, 64, 128, 640, 1728]
    assert [tpk.row_bytes("t1", k) for k in (1, 320, 321, 2560, 6912)] == [64, 64, 128, 512, 1408]


def test_open_is_fast_and_copies_nothing(tmp_path):
    """A BitNet-2B-shaped .tpk (sparse file: the header is real, the data holes) opens in ms."""
    config = tiny_config(hidden_size=2560, intermediate_size=6912, num_layers=30, num_heads=20,
                         num_kv_heads=5, head_dim=128, vocab_size=128256, max_position=4096)
    specs = tpk.expected_tensors(config, "F16", 1000)
    path = str(tmp_path / "big.tpk")
    w = tpk.Writer(path, config, specs)
    w._pending.clear()  # leave the data as a hole: nothing to write, nothing to read
    w.close()
    assert os.path.getsize(path) > 1e9
    t0 = time.perf_counter()
    t = tpk.read(path)
    dt = time.perf_counter() - t0
    assert t.tensors["embed"].shape == (128256, 2560)
    assert dt < 0.5, f"opening took {dt:.3f} s"


def test_writer_is_atomic(tmp_path):
    config = tiny_config()
    path = tmp_path / "a.tpk"
    with pytest.raises(RuntimeError):
        with tpk.Writer(path, config, {n: (dt, s) for n, (dt, s) in
                                       tpk.expected_tensors(config, "F16", 5).items()}) as w:
            w.write_tensor("norm", np.ones(64, np.float32))
            raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []
    with pytest.raises(TpkError, match="missing tensor"):
        tpk.write(tmp_path / "b.tpk", config, {"embed": np.zeros((77, 64), np.float16)})
    with pytest.raises(ValueError, match="planned"):
        with tpk.Writer(path, config, tpk.expected_tensors(config, "F16", 5)) as w:
            w.write_tensor("norm", np.ones(63, np.float32))


# ---------------------------------------------------------------------------------------------
# malformed files: one TpkError each, never a crash


def test_not_safetensors(tmp_path):
    for name, content in (("empty", b""), ("short", b"abc"), ("text", b"hello world, this is text" * 10),
                          ("gguf", b"GGUF\x03\x00\x00\x00" + bytes(64))):
        (tmp_path / name).write_bytes(content)
        msg = _expect(str(tmp_path / name), str(tmp_path / name))
        assert "safetensors" in msg or "truncated" in msg
    _expect(str(tmp_path / "does-not-exist"), "cannot open")
    _expect(str(tmp_path), "directory")


def test_bogus_header_length(written):
    path = written[0]
    raw = open(path, "rb").read()
    for n in (0, 1, 2**63, 2**40, len(raw)):
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", n) + raw[8:])
        _expect(path)


def test_header_not_json(written):
    path = written[0]
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    with open(path, "wb") as f:
        f.write(raw[:8] + b"\xff" + raw[9:])
    _expect(path, "not JSON")
    with open(path, "wb") as f:
        f.write(raw[:8] + b"[" + b" " * (n - 2) + b"]" + raw[8 + n:])
    _expect(path, "not a JSON object")


@pytest.mark.parametrize("cut", [0.5, 0.999, "header"])
def test_truncated(written, cut):
    path = written[0]
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    keep = 8 + n // 2 if cut == "header" else 8 + n + int((len(raw) - 8 - n) * cut)
    with open(path, "wb") as f:
        f.write(raw[:keep])
    _expect(path, "truncated")


def test_offsets(written):
    path = written[0]
    header, data = _split(path)

    def set_offsets(name, b, e):
        h = json.loads(json.dumps(header))
        h[name]["data_offsets"] = [b, e]
        _join(path, h, data)

    b, e = header["norm"]["data_offsets"]
    set_offsets("norm", b + len(data), e + len(data))
    _expect(path, "truncated", "'norm'")
    set_offsets("norm", e, b)
    _expect(path, "'norm'", "data_offsets")
    set_offsets("norm", b, e + 4)
    _expect(path, "'norm'", "data_offsets")
    set_offsets("norm", -4, e - b - 4)
    _expect(path, "'norm'")
    set_offsets("norm", "0", 4)
    _expect(path, "malformed header entry")
    # overlap: two tensors of the same size sharing one range
    other = next(n for n, i in header.items() if n != "norm" and n != "__metadata__"
                 and i["data_offsets"][1] - i["data_offsets"][0] == e - b)
    set_offsets(other, b, e)
    _expect(path, "overlaps")


def test_garbage_after_data(written):
    path = written[0]
    with open(path, "ab") as f:
        f.write(b"\0" * 16)
    _expect(path, "bytes after the last tensor")


def test_missing_extra_shape_dtype(written, tmp_path):
    path, config, tensors = written
    from safetensors.numpy import save_file

    def save(ts):
        p = str(tmp_path / "t.tpk")
        save_file(ts, p, metadata={"tpk": json.dumps(config)})
        return p

    ts = dict(tensors)
    del ts["layers.1.mlp.down.scale"]
    _expect(save(ts), "missing tensor 'layers.1.mlp.down.scale'")
    ts = dict(tensors, **{"layers.0.attn.q.bias": np.zeros(64, np.float32)})
    _expect(save(ts), "unexpected tensor 'layers.0.attn.q.bias'")
    ts = dict(tensors, **{"layers.0.attn.q.weight": np.zeros((64, 128), np.uint8)})
    _expect(save(ts), "'layers.0.attn.q.weight'", "U8[64, 128]", "expected U8[64, 64]")
    ts = dict(tensors, **{"norm": np.zeros(64, np.float16)})
    _expect(save(ts), "'norm'", "F16[64]", "expected F32[64]")
    ts = dict(tensors, **{"embed": np.zeros((77, 64), np.int8)})
    _expect(save(ts), "'embed'", "I8")
    ts = dict(tensors, **{"tokenizer": np.zeros((0,), np.uint8)})
    _expect(save(ts), "'tokenizer'")


def test_config_problems(written):
    path = written[0]
    raw = open(path, "rb").read()

    def restore():
        with open(path, "wb") as f:
            f.write(raw)

    _edit_config(path, format_version=2)
    _expect(path, "format_version 2")
    restore()
    _edit_config(path, architecture="gpt2")
    _expect(path, "unknown architecture 'gpt2'")
    restore()
    _edit_config(path, weight_format="q4")
    _expect(path, "'weight_format'")
    restore()
    _edit_config(path, num_kv_heads=3)
    _expect(path, "num_kv_heads")
    restore()
    _edit_config(path, hidden_size="64")
    _expect(path, "'hidden_size'")
    restore()
    _edit_config(path, tokenizer={"type": "hf", "bos_id": 10**6})
    _expect(path, "bos_id")
    restore()
    _edit_config(path, num_layers=1_358_954_497)   # found by a long fuzz run (as GGUF block_count)
    _expect(path, "'num_layers' = 1358954497 is beyond")
    restore()

    def drop_meta(header, _):
        del header["__metadata__"]
    _edit(path, drop_meta)
    _expect(path, "not a .tpk")
    restore()

    def bad_meta(header, _):
        header["__metadata__"]["tpk"] = "{not json"
    _edit(path, bad_meta)
    _expect(path, "config is not JSON")
    restore()
    _edit_config(path)
    assert tpk.read(path).config["hidden_size"] == 64


def test_fuzz_never_crashes(written):
    """Random byte flips anywhere in the header: TpkError or a valid file, nothing else."""
    path = written[0]
    raw = bytearray(open(path, "rb").read())
    (n,) = struct.unpack("<Q", raw[:8])
    rng = np.random.default_rng(0)
    for _ in range(300):
        bad = bytearray(raw)
        for pos in rng.integers(0, 8 + n, 3):
            bad[pos] = int(rng.integers(0, 256))
        with open(path, "wb") as f:
            f.write(bad)
        try:
            tpk.read(path)
        except TpkError:
            pass
