"""bitnet.cpp's own GGUF files: I2_S weights written by bitnet.cpp's quantizer.

The fixture tests/data/bitnet_cpp/tiny-i2_s.gguf was made by bitnet.cpp's converter and its
llama-quantize (README.md next to it says how) from the checkpoint that checkpoints.shadow
builds from SEED; the test rebuilds that checkpoint, converts it the safetensors way and the
GGUF way, and compares weights and logits.
"""
import os
import struct

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import checkpoints as C  # noqa: E402
import engine.convert as conv  # noqa: E402
from engine.convert import gguf_bitnet  # noqa: E402
from engine.convert.source import ConvertError  # noqa: E402
from engine.formats import tpk  # noqa: E402
from test_convert import GREEDY, Case, _run_error, check_logits, engine_greedy, engine_logits  # noqa: E402

FIXTURE = os.path.join(os.path.dirname(__file__), "data", "bitnet_cpp", "tiny-i2_s.gguf")
D_I2S = C.Dims(hidden=64, inter=128, layers=2, heads=2, kv_heads=1, head_dim=32, vocab=347, tied=True)
SEED = 16  # the fixture's checkpoint: checkpoints.shadow(dir, D_I2S, seed=SEED, tokenizer="sentencepiece", f32=True)


@pytest.fixture(scope="module")
def i2s(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("i2s"))
    case = Case(C.shadow(tmp, D_I2S, seed=SEED, tokenizer="sentencepiece", f32=True), tmp)  # safetensors -> .tpk
    out = os.path.join(tmp, "i2s.tpk")
    assert conv.main([FIXTURE, "-o", out, "-q"]) == 0
    return case, out, tmp


def test_i2s_same_weights(i2s):
    """The fixture holds the checkpoint's ternary values and scales (bitnet.cpp's scale is torch's
    float32 1 / (1 / mean|w|): a few ulps off ours)."""
    from engine import kernels

    case, out, _ = i2s
    g, h = tpk.read(out), tpk.read(case.tpk)
    assert g.config["weight_format"] == "t2" and g.config["architecture"] == "bitnet"
    same = {k: v for k, v in g.config.items() if k not in ("tokenizer", "max_position")}
    assert same == {k: h.config[k] for k in same}
    assert set(g.tensors) == set(h.tensors)
    linears = tpk.linear_shapes(g.config)
    for prefix, (n, k) in linears.items():
        qg = kernels.unpack("t2", np.ascontiguousarray(g.tensors[prefix + ".weight"]), k)
        qh = kernels.unpack("t2", np.ascontiguousarray(h.tensors[prefix + ".weight"]), k)
        np.testing.assert_array_equal(qg, qh, err_msg=prefix)
        np.testing.assert_allclose(g.tensors[prefix + ".scale"], h.tensors[prefix + ".scale"], rtol=1e-6,
                                   err_msg=prefix)
    for name in set(g.tensors) - {p + s for p in linears for s in (".weight", ".scale")} - {"tokenizer"}:
        np.testing.assert_array_equal(g.tensors[name], h.tensors[name], err_msg=name)


def test_i2s_logits(i2s):
    from engine.runtime.model import Model

    case, out, _ = i2s
    got = engine_logits(out, case.prompt)
    g, h = tpk.read(out), tpk.read(case.tpk)  # the safetensors route with the file's scales: bit-identical
    for prefix in tpk.linear_shapes(h.config):
        h.tensors[prefix + ".scale"] = g.tensors[prefix + ".scale"]
    np.testing.assert_array_equal(got, Model(h, ctx=128, kv_dtype="f32").forward(np.asarray(case.prompt)))
    rel_hf, _ = check_logits(got, engine_logits(case.tpk, case.prompt))
    rel_ref, _ = check_logits(got, case.ref_logits)
    assert rel_hf < 1e-5, rel_hf
    print(f"bitnet.cpp I2_S: max |logit diff| = {rel_hf:.2e} (safetensors route), {rel_ref:.2e} (transformers)"
          " x max |logit|")
    assert engine_greedy(out, case.prompt, GREEDY) == case.ref_greedy


# ---------------------------------------------------------------------------------------------
# a Llama + BitLinear checkpoint (Llama3-8B-1.58 style) through the same pipeline: architecture
# "llama", so the Q/K rows bitnet.cpp's converter permuted are un-permuted after I2_S decoding

LLAMA_FIXTURE = os.path.join(os.path.dirname(__file__), "data", "bitnet_cpp", "tiny-llama-i2_s.gguf")
D_LLAMA_I2S = C.Dims(hidden=64, inter=128, layers=2, heads=2, kv_heads=1, head_dim=32, vocab=347, tied=False)
LLAMA_SEED = 17  # checkpoints.llama_bitlinear(dir, D_LLAMA_I2S, seed=LLAMA_SEED, tokenizer="sentencepiece")


def test_llama_i2s(tmp_path):
    from engine import kernels

    tmp = str(tmp_path)
    case = Case(C.llama_bitlinear(tmp, D_LLAMA_I2S, seed=LLAMA_SEED, tokenizer="sentencepiece"), tmp)
    out = os.path.join(tmp, "llama-i2s.tpk")
    assert conv.main([LLAMA_FIXTURE, "-o", out, "-q"]) == 0
    g, h = tpk.read(out), tpk.read(case.tpk)
    assert g.config["architecture"] == "llama" and g.config["scale_mode"] == "mul" and h.config["scale_mode"] == "div"
    for prefix, (n, k) in tpk.linear_shapes(g.config).items():
        qg = kernels.unpack("t2", np.ascontiguousarray(g.tensors[prefix + ".weight"]), k)
        qh = kernels.unpack("t2", np.ascontiguousarray(h.tensors[prefix + ".weight"]), k)
        np.testing.assert_array_equal(qg, qh, err_msg=prefix)  # Q/K: rows back in HF order
        np.testing.assert_allclose(g.tensors[prefix + ".scale"], 1 / h.tensors[prefix + ".scale"], rtol=1e-6)
    got = engine_logits(out, case.prompt)
    rel_hf, _ = check_logits(got, engine_logits(case.tpk, case.prompt))
    rel_ref, _ = check_logits(got, case.ref_logits)
    assert rel_hf < 1e-5, rel_hf  # scales one float32 rounding apart (a multiplier for a divisor)
    print(f"bitnet.cpp I2_S llama: max |logit diff| = {rel_hf:.2e} (safetensors route), {rel_ref:.2e} "
          "(transformers) x max |logit|")
    assert engine_greedy(out, case.prompt, GREEDY) == case.ref_greedy


# ---------------------------------------------------------------------------------------------
# the fixture's bytes, edited


def _infos(path):
    """{tensor name: (file offset of its type id, file offset of its data, ggml ne)}."""
    r = gguf_bitnet.reader(path)
    out = {}
    for t in r.tensors:
        f = t.field
        n_dims = int(f.parts[2][0])
        type_at = f.offset + 8 + len(t.name.encode()) + 4 + 8 * n_dims
        out[t.name] = (type_at, r.data_offset + int(f.parts[5][0]), [int(d) for d in f.parts[3]])
    return out


def _edited(tmp, name, edit):
    path = os.path.join(tmp, name)
    data = bytearray(open(FIXTURE, "rb").read())
    edit(data, _infos(FIXTURE))
    open(path, "wb").write(bytes(data))
    return path


def test_i2s_malformed(capsys, tmp_path):
    tmp, out = str(tmp_path), str(tmp_path / "x.tpk")
    q = "blk.0.attn_q.weight"
    size = os.path.getsize(FIXTURE)
    cut = _edited(tmp, "cut.gguf", lambda d, i: d.__delitem__(slice(i[q][1] + 100, None)))
    assert os.path.getsize(cut) < size
    assert "truncated" in _run_error(capsys, [cut, "-o", out])

    def code3(d, i):
        d[i[q][1] + 5] = 0xFF
    assert "code 3" in _run_error(capsys, [_edited(tmp, "code3.gguf", code3), "-o", out])

    def nan_scale(d, i):
        n = i[q][2][0] * i[q][2][1]
        d[i[q][1] + n // 4:i[q][1] + n // 4 + 4] = struct.pack("<f", float("nan"))
    assert "scale nan" in _run_error(capsys, [_edited(tmp, "nan.gguf", nan_scale), "-o", out])

    def shape(d, i):  # ne[1] of attn_q 64 -> 32: the header no longer matches the config
        at = i[q][0] - 8
        d[at:at + 8] = struct.pack("<Q", 32)
    assert "[32, 64], expected [64, 64]" in _run_error(capsys, [_edited(tmp, "shape.gguf", shape), "-o", out])

    def norm_i2s(d, i):  # an I2_S where a float vector belongs
        at = i["output_norm.weight"][0]
        d[at:at + 4] = struct.pack("<I", gguf_bitnet.I2_S)
    err = _run_error(capsys, [_edited(tmp, "norm.gguf", norm_i2s), "-o", out])
    assert "'output_norm.weight' is I2_S, read only for the linear projections" in err
    assert not os.path.exists(out) and not os.path.exists(out + ".partial")


@pytest.mark.parametrize("tid,name", [(gguf_bitnet.TL1, "TL1"), (gguf_bitnet.TL2, "TL2")])
def test_tl_refused(capsys, tmp_path, tid, name):
    """38/39 in a bitnet.cpp file are its TL1/TL2, refused by name (39 is not read as MXFP4)."""
    def retype(d, i):
        at = i["blk.1.ffn_up.weight"][0]
        d[at:at + 4] = struct.pack("<I", tid)
    path = _edited(str(tmp_path), f"{name}.gguf", retype)
    err = _run_error(capsys, [path, "-o", str(tmp_path / "x.tpk")])
    assert f"'blk.1.ffn_up.weight' is bitnet.cpp {name}" in err and "i2_s" in err


def test_decode_i2s_sizes():
    """Direct: a weight count off the 128 block, and too few bytes for the scale."""
    class T:
        name, data = "w", np.full(96 // 4 + 32, 0x55, np.uint8)  # 0x55: codes 1 = zeros
    with pytest.raises(ConvertError, match="not a multiple of the 128-weight block"):
        gguf_bitnet.decode_i2s(T, 2, 48, "f")
    T.data = np.full(128 // 4 + 2, 0x55, np.uint8)
    with pytest.raises(ConvertError, match="has 34 bytes, expected 64"):
        gguf_bitnet.decode_i2s(T, 2, 64, "f")
    T.data = np.concatenate([np.full(32, 0x9A, np.uint8), np.frombuffer(struct.pack("<f", 0.5), np.uint8),
                             np.zeros(28, np.uint8)])
    q, s = gguf_bitnet.decode_i2s(T, 1, 128, "f")  # 0x9A = codes 2, 1, 2, 2: weight j in group j // 32
    assert s == np.float32(0.5)
    np.testing.assert_array_equal(q[0], np.repeat(np.array([1, 0, 1, 1], np.int8), 32))


# ---------------------------------------------------------------------------------------------
# "bitnet-b1.58": the fixture's metadata and I2_S bytes under bitnet.cpp's 2B-4T architecture


def _as_b158(src, dst, lm_head=None):
    """Rewrite src with general.architecture "bitnet-b1.58" and its keys renamed; I2_S tensors
    are copied byte for byte (written as I8 raw bytes, then their type id set to 36)."""
    import gguf

    r = gguf_bitnet.reader(src)
    w = gguf.GGUFWriter(dst, "bitnet-b1.58")
    for key, fld in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vt = fld.types[0]
        w.add_key_value("bitnet-b1.58." + key[len("bitnet."):] if key.startswith("bitnet.") else key,
                        fld.contents(), vt, sub_type=fld.types[1] if vt == gguf.GGUFValueType.ARRAY else None)
    i2 = []
    for t in r.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        if isinstance(t, gguf_bitnet.BitnetTensor):
            i2.append(t.name)
            w.add_tensor(t.name, np.asarray(t.data).view(np.int8).copy(), raw_shape=shape,
                         raw_dtype=gguf.GGMLQuantizationType.I8)
        else:
            w.add_tensor(t.name, np.asarray(t.data).reshape(shape).copy())
    if lm_head is not None:
        w.add_tensor("output.weight", lm_head)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    data = bytearray(open(dst, "rb").read())
    infos = _infos(dst)
    for name in i2:
        at = infos[name][0]
        assert struct.unpack_from("<I", data, at)[0] == gguf.GGMLQuantizationType.I8
        data[at:at + 4] = struct.pack("<I", gguf_bitnet.I2_S)
    open(dst, "wb").write(bytes(data))


def test_b158(i2s):
    """Squared ReLU, the keys under "bitnet-b1.58.", and an output.weight that unties the head."""
    from engine.runtime.model import Model

    case, out, tmp = i2s
    g = tpk.read(out)
    head = (np.asarray(g.tensors["embed"], np.float16)[::-1] * np.float16(0.5)).copy()
    src, out2 = os.path.join(tmp, "b158.gguf"), os.path.join(tmp, "b158.tpk")
    _as_b158(FIXTURE, src, lm_head=head)
    assert conv.main([src, "-o", out2, "-q"]) == 0
    b = tpk.read(out2)
    assert b.config["hidden_act"] == "relu2" and b.config["architecture"] == "bitnet"
    assert b.config["tie_word_embeddings"] is False
    np.testing.assert_array_equal(b.tensors["lm_head.weight"], head)
    for name in g.tensors:
        if name != "tokenizer":
            np.testing.assert_array_equal(b.tensors[name], g.tensors[name], err_msg=name)
    g.config.update(hidden_act="relu2", tie_word_embeddings=False)  # the same model, by hand
    g.tensors["lm_head.weight"] = b.tensors["lm_head.weight"]
    want = Model(g, ctx=128, kv_dtype="f32").forward(np.asarray(case.prompt))
    np.testing.assert_array_equal(engine_logits(out2, case.prompt), want)
