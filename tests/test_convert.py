"""ternary-convert against transformers: every checkpoint kind of FORMATS.md, built here.

Criteria (issue 4), on every prompt position: top-1 agreement >= 99 %, max |logit diff| <=
1e-2 * max |logit|, and the first 32 greedy tokens identical.
"""
import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import checkpoints as C  # noqa: E402
import engine.convert as conv  # noqa: E402
from engine.formats import tpk  # noqa: E402

PROMPT_LEN = 12
GREEDY = 32
# Prompts whose top-1 margins, on the prompt and on the greedy path, are >= 0.5 % of max|logit|
# (FORMATS.md: an int8 rounding flip moves logits by up to ~0.5 %; fp32 noise is ~1e-6).
MIN_MARGIN = 0.005


def _model_forward():
    try:
        from engine.runtime.model import Model
    except ImportError as e:  # the forward pass lands separately (issue 4, item 3)
        pytest.skip(f"engine.runtime.model not importable: {e}")
    return Model


def engine_logits(path, ids):
    Model = _model_forward()
    return Model(tpk.read(path), ctx=128, kv_dtype="f32").forward(np.asarray(ids))


def engine_greedy(path, prompt, n):
    """Greedy decoding through the KV cache: prefill once, then one token per step."""
    Model = _model_forward()
    m = Model(tpk.read(path), ctx=128, kv_dtype="f32")
    logits = m.forward(np.asarray(prompt), last_only=True)[-1]
    out = []
    for _ in range(n):
        out.append(int(np.argmax(logits)))
        logits = m.forward(np.asarray([out[-1]]), start_pos=len(prompt) + len(out) - 1)[-1]
    return out


def check_logits(got, ref):
    """The issue-4 criteria; returns (max |diff| / max |ref|, top-1 agreement) for reports."""
    assert got.shape == ref.shape, (got.shape, ref.shape)
    rel = float(np.abs(got - ref).max() / np.abs(ref).max())
    agree = float(np.mean(got.argmax(-1) == ref.argmax(-1)))
    assert agree >= 0.99, f"top-1 agreement {agree:.3f}"
    assert rel <= 1e-2, f"max |logit diff| = {rel:.2e} x max |logit|"
    return rel, agree


# ---------------------------------------------------------------------------------------------
# reference: transformers, float32, eager


def _ref_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([list(ids)])).logits[0].float().numpy()


def pick_prompt(model, vocab, stop_ids, seed=0, tries=12):
    """A prompt (and its greedy continuation) with no razor-thin top-1 margin and no stop token."""
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(tries):
        prompt = [int(i) for i in rng.integers(3, vocab, PROMPT_LEN)]
        seq = list(prompt)
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), max_new_tokens=GREEDY, do_sample=False,
                                 eos_token_id=None, pad_token_id=0)
        seq = [int(i) for i in out[0]]
        logits = _ref_logits(model, seq)  # positions of the prompt and of the greedy path
        top2 = np.sort(logits, axis=-1)[:, -2:]
        margin = float(((top2[:, 1] - top2[:, 0]) / np.abs(logits).max()).min())
        greedy_ok = all(int(logits[len(prompt) - 1 + j].argmax()) == seq[len(prompt) + j] for j in range(GREEDY))
        ok = greedy_ok and not set(seq[len(prompt):]) & set(stop_ids)
        if ok and (best is None or margin > best[0]):
            best = (margin, prompt, seq[len(prompt):])
        if best and best[0] >= MIN_MARGIN:
            break
    assert best is not None, "no usable prompt"
    return best[1], best[2]


class Case:
    def __init__(self, ck, tmp, args=(), name=None):
        self.ck, self.name = ck, name or ck.kind
        model = ck.reference()
        stop = C.SPECIALS_IDS[1:]
        self.prompt, self.ref_greedy = pick_prompt(model, ck.dims.vocab, stop)
        self.ref_logits = _ref_logits(model, self.prompt)
        del model
        self.tpk = os.path.join(tmp, "model.tpk")
        assert conv.main([ck.path, "-o", self.tpk, "-q", *args]) == 0


D_OFFLINE = C.Dims(hidden=128, inter=320, heads=4, kv_heads=4, head_dim=32, vocab=331, tied=True)  # GQA 1
D_ONLINE = C.Dims(hidden=192, inter=256, heads=6, kv_heads=2, head_dim=32, vocab=300, theta=500000.0)  # GQA 3
D_BITLINEAR = C.Dims(hidden=256, inter=384, heads=4, kv_heads=2, head_dim=64, vocab=397, eps=1e-6)  # GQA 2
D_SHADOW = C.Dims(hidden=128, inter=256, heads=2, kv_heads=2, head_dim=64, vocab=331, tied=True)
# theta 12345 so that a lost top-level rope_theta (BitNet default 500000) shows
D_OFFLINE_LEGACY = C.Dims(hidden=128, inter=320, heads=4, kv_heads=4, head_dim=32, vocab=331, tied=True, theta=12345.0)
D_MQA = C.Dims(hidden=128, inter=320, heads=4, kv_heads=1, head_dim=32, vocab=331, tied=True)
D_ODD = C.Dims(hidden=96, inter=300, heads=3, kv_heads=3, head_dim=32, vocab=331, tied=True)  # 96 % 64, 300 % 32
D_ALL = C.Dims(hidden=96, inter=300, heads=3, kv_heads=1, head_dim=32, vocab=331, tied=True, theta=12345.0)
D_PLAIN = C.Dims(hidden=192, inter=256, heads=6, kv_heads=2, head_dim=64, vocab=301, eps=1e-6)  # GQA 3

KINDS = {
    "bitnet-offline": (lambda t: C.bitnet_offline(t, D_OFFLINE), ()),
    "bitnet-offline-t1": (lambda t: C.bitnet_offline(t, D_OFFLINE), ("--weights", "t1")),
    "bitnet-offline-tl2": (lambda t: C.bitnet_offline(t, D_OFFLINE), ("--format", "tl2")),
    "bitnet-offline-int8-head": (lambda t: C.bitnet_offline(t, D_OFFLINE), ("--lm-head", "int8")),
    # issue 16 item 5: the properties of a real "offline" BitNet file, one case each
    "offline-scale-0d-bf16": (lambda t: C.bitnet_offline(t, D_OFFLINE, scale_0d=True), ()),
    "offline-tied-f32-embed": (lambda t: C.bitnet_offline(t, D_OFFLINE, embed_f32=True), ()),
    "offline-tied-f32-embed-int8-head": (lambda t: C.bitnet_offline(t, D_OFFLINE, embed_f32=True),
                                         ("--lm-head", "int8")),
    "offline-tied-lm-head-copy": (lambda t: C.bitnet_offline(t, D_OFFLINE, lm_head_copy=True), ()),
    "offline-legacy-keys": (lambda t: C.bitnet_offline(t, D_OFFLINE_LEGACY, legacy_config=True), ()),
    "offline-mqa": (lambda t: C.bitnet_offline(t, D_MQA), ()),
    "offline-bf16-norms": (lambda t: C.bitnet_offline(t, D_OFFLINE, bf16_norms=True), ()),
    "offline-odd-sizes": (lambda t: C.bitnet_offline(t, D_ODD), ()),
    "offline-all": (lambda t: C.bitnet_offline(t, D_ALL, embed_f32=True, scale_0d=True, legacy_config=True,
                                               lm_head_copy=True, bf16_norms=True), ()),
    "bitnet-online-proj-norm": (lambda t: C.bitnet_online(t, D_ONLINE, use_rms_norm=True), ()),
    "llama-bitlinear": (lambda t: C.llama_bitlinear(t, D_BITLINEAR), ()),
    "bitnet-float-f16": (lambda t: C.bitnet_float(t, D_ONLINE), ()),
    "shadow-absmean": (lambda t: C.shadow(t, D_SHADOW), ()),
    "shadow-absmedian": (lambda t: C.shadow(t, D_SHADOW, scale="absmedian"), ("--scale", "absmedian")),
    "llama-f16": (lambda t: C.llama_plain(t, D_PLAIN), ()),
    "llama-f16-as-t2": (lambda t: C.llama_plain(t, D_PLAIN, ternary_reference=True), ("--weights", "t2")),
}


@pytest.fixture(scope="module", params=list(KINDS))
def case(request, tmp_path_factory):
    build, args = KINDS[request.param]
    tmp = str(tmp_path_factory.mktemp(request.param))
    return Case(build(tmp), tmp, args, name=request.param)


def test_logits_match_transformers(case):
    got = engine_logits(case.tpk, case.prompt)
    rel, _ = check_logits(got, case.ref_logits)
    print(f"{case.name}: max |logit diff| = {rel:.2e} x max |logit|")
    if case.name.startswith("offline-") and "int8" not in case.name:
        # float32 all the way like the plain offline kind: an f16-rounded f32 embedding gave
        # ~1e-2 here through int8 rounding flips (issue 16 item 5)
        assert rel <= 1e-5, f"{case.name}: {rel:.2e}"
    if "f32-embed" in case.name:
        t = tpk.read(case.tpk)
        assert t.tensors["embed"].dtype == np.float32  # fp16 cannot hold it exactly
        assert ("lm_head.weight" in t.tensors) == ("int8" in case.name)  # tied f16: the f32 embed is the head


def test_greedy_matches_transformers(case):
    assert engine_greedy(case.tpk, case.prompt, GREEDY) == case.ref_greedy


def test_ternary_weights_are_exact(case):
    """The packed weights hold exactly the ternary values and scales transformers computes with."""
    if not case.ck.ternary:
        pytest.skip("no ternary ground truth for this kind")
    from engine import kernels

    t = tpk.read(case.tpk)
    fmt = t.config["weight_format"]
    proj = {v: k for k, v in conv.HF_PROJ.items()}
    for base, (q, s, mode) in case.ck.ternary.items():
        i, name = base.split(".")[2], base.split(".", 3)[3]
        prefix = f"layers.{i}.{proj[name]}"
        got = kernels.unpack(fmt, np.ascontiguousarray(t.tensors[prefix + ".weight"]), q.shape[1])
        np.testing.assert_array_equal(got, q, err_msg=prefix)
        assert t.tensors[prefix + ".scale"][0] == pytest.approx(float(s), rel=1e-6), prefix
        assert t.config["scale_mode"] == mode


def test_q4_head_is_the_checkpoint_head_quantized(tmp_path):
    """--lm-head q4 stores exactly q4.quantize of the checkpoint's head, and the engine's logits
    match transformers running that (dequantized) head: the reference carries the weights' loss.
    The head's int8 tokens (float in transformers) add ~1 % of max |logit| on this random model,
    so the bound is 2 % here (1 % for the other heads); top-1 and greedy criteria unchanged."""
    from engine import quant as q4

    ck = C.bitnet_online(str(tmp_path), D_ONLINE)  # untied head, hidden 192: one padded group
    out = str(tmp_path / "q4.tpk")
    assert conv.main([ck.path, "-o", out, "-q", "--lm-head", "q4"]) == 0
    t = tpk.read(out)
    assert t.config["lm_head_format"] == "q4"
    model = ck.reference()
    head = model.lm_head.weight.detach().float().numpy()
    want = q4.quantize(head)
    for name, w in zip(("lm_head.weight", "lm_head.sub", "lm_head.scale"), want):
        np.testing.assert_array_equal(t.tensors[name], w, err_msg=name)
    with torch.no_grad():
        model.lm_head.weight.copy_(torch.from_numpy(q4.dequantize(*want, head.shape[1])))
    prompt, greedy = pick_prompt(model, ck.dims.vocab, C.SPECIALS_IDS[1:])
    got, ref = engine_logits(out, prompt), _ref_logits(model, prompt)
    assert float(np.abs(got - ref).max() / np.abs(ref).max()) <= 2e-2
    assert float(np.mean(got.argmax(-1) == ref.argmax(-1))) >= 0.99
    assert engine_greedy(out, prompt, GREEDY) == greedy


# ---------------------------------------------------------------------------------------------
# format details that need no forward pass


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("offline"))
    return C.bitnet_offline(tmp, D_OFFLINE), tmp


def test_config_and_tokenizer(offline):
    ck, tmp = offline
    out = os.path.join(tmp, "cfg.tpk")
    conv.convert(ck.path, out, progress=False)
    t = tpk.read(out)
    c = t.config
    assert c["architecture"] == "bitnet" and c["hidden_act"] == "relu2" and c["sub_norms"]
    assert (c["num_heads"], c["num_kv_heads"], c["head_dim"], c["vocab_size"]) == (4, 4, 32, 331)
    assert c["weight_format"] == "t2" and c["scale_mode"] == "mul" and c["tie_word_embeddings"]
    assert c["rope_theta"] == 10000.0 and c["rms_norm_eps"] == 1e-5 and c["proj_norm_eps"] is None
    assert "lm_head.weight" not in t.tensors  # tied, fp16 embedding
    tok = c["tokenizer"]
    assert tok["type"] == "hf" and tok["bos_id"] == 0 and tok["eos_id"] == 1 and tok["eot_id"] == 2
    assert tok["add_bos"] is True and tok["chat_template"] == C.CHAT_TEMPLATE
    assert t.tokenizer_bytes == open(os.path.join(ck.path, "tokenizer.json"), "rb").read()


@pytest.mark.parametrize("post", ["template", "sequence", "none", "tokenizer_config"])
def test_add_bos_from_tokenizer_files(offline, tmp_path, post):
    """add_bos: tokenizer_config add_bos_token, else whether the post-processor puts bos first
    (Llama-3 tokenizer.json: Sequence[ByteLevel, TemplateProcessing])."""
    ck, _ = offline
    d = tmp_path / post
    shutil.copytree(ck.path, d)
    tj = json.load(open(d / "tokenizer.json"))
    if post == "sequence":
        tj["post_processor"] = {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            tj["post_processor"]]}
    elif post == "none":
        tj["post_processor"] = None
    elif post == "tokenizer_config":
        tc = json.load(open(d / "tokenizer_config.json"))
        json.dump(dict(tc, add_bos_token=False), open(d / "tokenizer_config.json", "w"))
    json.dump(tj, open(d / "tokenizer.json", "w"))
    tok, _ = conv.hf_tokenizer(str(d), json.load(open(d / "config.json")), 331)
    assert tok["add_bos"] is (post in ("template", "sequence"))


def test_sharded_equals_single(tmp_path_factory, offline):
    ck, _ = offline
    tmp = str(tmp_path_factory.mktemp("sharded"))
    sharded = C.bitnet_offline(tmp, D_OFFLINE, shard_bytes=40_000)
    assert os.path.exists(os.path.join(sharded.path, "model.safetensors.index.json"))
    a, b = os.path.join(tmp, "single.tpk"), os.path.join(tmp, "sharded.tpk")
    conv.convert(ck.path, a, progress=False)
    conv.convert(sharded.path, b, progress=False)
    ta, tb = tpk.read(a), tpk.read(b)
    assert ta.config == tb.config and ta.tensors.keys() == tb.tensors.keys()
    for name in ta.tensors:
        np.testing.assert_array_equal(ta.tensors[name], tb.tensors[name], err_msg=name)


def test_dtype_f16_dequantizes_ternary(offline):
    ck, tmp = offline
    out = os.path.join(tmp, "f16.tpk")
    conv.convert(ck.path, out, dtype="f16", progress=False)
    t = tpk.read(out)
    assert t.config["weight_format"] == "f16" and "layers.0.attn.q.scale" not in t.tensors
    q, s, _ = ck.ternary["model.layers.1.mlp.down_proj"]
    np.testing.assert_array_equal(t.tensors["layers.1.mlp.down.weight"], (q * s).astype(np.float16))


def test_unpack_hf_matches_transformers():
    from transformers.integrations.bitnet import unpack_weights

    q = np.random.default_rng(0).integers(-1, 2, (4 * 7, 33)).astype(np.int8)
    packed = C.hf_pack(q)
    np.testing.assert_array_equal(conv.unpack_hf(packed, q.shape[0]), q)
    np.testing.assert_array_equal(unpack_weights(torch.from_numpy(packed), torch.int8).numpy(), q)


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32"])
def test_abs_median_on_bit_patterns(dtype):
    w = np.random.default_rng(1).standard_normal((37, 29)).astype(np.float32)
    w[0, 0] = -0.0
    if dtype == "BF16":
        arr = torch.from_numpy(w).to(torch.bfloat16).view(torch.uint16).numpy()
        f = torch.from_numpy(w).to(torch.bfloat16).float()
    else:
        arr = w.astype(np.float16 if dtype == "F16" else np.float32)
        f = torch.from_numpy(arr.astype(np.float32))
    assert conv.SrcTensor(arr, dtype).abs_median() == f.abs().flatten().median().item()


def test_ternarize_matches_weightquant():
    w = np.random.default_rng(2).standard_normal((70, 50)).astype(np.float32) * 0.03
    q, s = conv.ternarize(conv.SrcTensor(w, "F32"), "absmean")
    q_ref, s_ref = C.absmean_quant(w)
    np.testing.assert_array_equal(q, q_ref)
    assert s == pytest.approx(float(s_ref), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# user errors: one line, exit status 2


def _run_error(capsys, argv):
    assert conv.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ternary-convert: error:") and "\n" not in err and "Traceback" not in err
    return err


def test_errors(capsys, tmp_path, offline):
    ck, _ = offline
    out = str(tmp_path / "x.tpk")
    assert "no such file" in _run_error(capsys, [str(tmp_path / "nope"), "-o", out])
    assert "No such file" in _run_error(capsys, [ck.path, "-o", str(tmp_path / "no" / "dir" / "x.tpk")])

    bad = tmp_path / "unknown_type"
    shutil.copytree(ck.path, bad)
    cfg = json.load(open(bad / "config.json"))
    cfg["model_type"] = "gpt_neox"
    json.dump(cfg, open(bad / "config.json", "w"))
    assert "unsupported model_type 'gpt_neox'" in _run_error(capsys, [str(bad), "-o", out])

    huge = tmp_path / "huge_layers"   # a size field no file can back: refused before building per layer
    shutil.copytree(ck.path, huge)
    cfg = json.load(open(huge / "config.json"))
    cfg["num_hidden_layers"] = 1_358_954_497
    json.dump(cfg, open(huge / "config.json", "w"))
    assert "num_hidden_layers 1358954497 does not fit" in _run_error(capsys, [str(huge), "-o", out])

    no_heads = tmp_path / "no_heads"   # the GGUF fuzzer's head_count 0, on the HF route
    shutil.copytree(ck.path, no_heads)
    cfg = json.load(open(no_heads / "config.json"))
    cfg["num_attention_heads"] = 0
    cfg.pop("head_dim", None)
    json.dump(cfg, open(no_heads / "config.json", "w"))
    assert "num_attention_heads 0 must be positive" in _run_error(capsys, [str(no_heads), "-o", out])

    from safetensors.torch import load_file, save_file

    missing = tmp_path / "missing"
    shutil.copytree(ck.path, missing)
    sd = load_file(str(missing / "model.safetensors"))
    del sd["model.layers.1.mlp.up_proj.weight"]
    save_file(sd, str(missing / "model.safetensors"))
    assert "missing tensor 'model.layers.1.mlp.up_proj.weight'" in _run_error(capsys, [str(missing), "-o", out])

    rope = tmp_path / "rope"
    shutil.copytree(ck.path, rope)
    cfg = json.load(open(rope / "config.json"))
    cfg["rope_parameters"] = {"rope_type": "proportional", "rope_theta": 500000.0, "factor": 8.0}
    json.dump(cfg, open(rope / "config.json", "w"))
    assert "RoPE type 'proportional' is not supported" in _run_error(capsys, [str(rope), "-o", out])
    cfg["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0}
    json.dump(cfg, open(rope / "config.json", "w"))
    assert "RoPE type 'llama3': missing or bad parameter 'low_freq_factor'" in _run_error(capsys, [str(rope), "-o", out])

    empty = tmp_path / "empty"
    empty.mkdir()
    assert "config.json" in _run_error(capsys, [str(empty), "-o", out])

    notst = tmp_path / "notst"
    shutil.copytree(ck.path, notst)
    (notst / "model.safetensors").write_bytes(b"garbage, not safetensors")
    assert "not a safetensors file" in _run_error(capsys, [str(notst), "-o", out])
    assert not os.path.exists(out) and not os.path.exists(out + ".partial")


# ---------------------------------------------------------------------------------------------
# GGUF: written here with the gguf package from the checkpoints above, converted, compared

D_GGUF_BITNET = C.Dims(hidden=256, inter=512, heads=4, kv_heads=2, head_dim=64, vocab=347, tied=True)


@pytest.fixture(scope="module")
def gguf_bitnet(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("gguf_bitnet"))
    ck = C.shadow(tmp, D_GGUF_BITNET, tokenizer="sentencepiece")
    case = Case(ck, tmp)  # HF -> .tpk, and the transformers reference
    return case, tmp


@pytest.fixture(scope="module")
def gguf_llama(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("gguf_llama"))
    case = Case(C.llama_plain(tmp, D_PLAIN), tmp)
    return case, tmp


@pytest.mark.parametrize("qtype", ["TQ2_0", "TQ1_0"])
def test_gguf_bitnet_ternary(gguf_bitnet, qtype):
    case, tmp = gguf_bitnet
    src, out = os.path.join(tmp, f"m-{qtype}.gguf"), os.path.join(tmp, f"gguf-{qtype}.tpk")
    C.write_gguf_bitnet(case.ck, src, qtype)
    assert conv.main([src, "-o", out, "-q"]) == 0
    g, h = tpk.read(out), tpk.read(case.tpk)
    assert g.config["weight_format"] == {"TQ2_0": "t2", "TQ1_0": "t1"}[qtype]
    same = {k: v for k, v in g.config.items() if k not in ("weight_format", "tokenizer", "max_position")}
    assert same == {k: h.config[k] for k in same}
    from engine import kernels

    for prefix, (n, k) in tpk.linear_shapes(g.config).items():  # same ternary values, fp16-rounded scales
        qg = kernels.unpack(g.config["weight_format"], np.ascontiguousarray(g.tensors[prefix + ".weight"]), k)
        qh = kernels.unpack("t2", np.ascontiguousarray(h.tensors[prefix + ".weight"]), k)
        np.testing.assert_array_equal(qg, qh, err_msg=prefix)
        assert g.tensors[prefix + ".scale"][0] == np.float16(h.tensors[prefix + ".scale"][0]), prefix
    # TQ blocks carry the scale as fp16: the logits move by int8 re-rounding, within the criteria
    got = engine_logits(out, case.prompt)
    rel, _ = check_logits(got, case.ref_logits)
    check_logits(got, engine_logits(case.tpk, case.prompt))
    print(f"gguf bitnet {qtype}: max |logit diff| = {rel:.2e} x max |logit|")
    assert engine_greedy(out, case.prompt, GREEDY) == case.ref_greedy


def test_gguf_bitnet_tokenizer(gguf_bitnet):
    import sentencepiece as spm

    case, tmp = gguf_bitnet
    src, out = os.path.join(tmp, "tok.gguf"), os.path.join(tmp, "tok.tpk")
    C.write_gguf_bitnet(case.ck, src)
    conv.convert(src, out, progress=False)
    t = tpk.read(out)
    tok = t.config["tokenizer"]
    assert tok["type"] == "sentencepiece" and tok["add_bos"] and (tok["bos_id"], tok["eos_id"]) == (1, 2)
    ours = spm.SentencePieceProcessor(model_proto=t.tokenizer_bytes)
    orig = spm.SentencePieceProcessor(model_file=os.path.join(case.ck.path, "tokenizer.model"))
    for text in C.SENTENCES + ["  two  spaces\tand tab\n", "unseen: qzxj ☃ 𝄞 Ωmega", ""]:
        assert ours.encode(text) == orig.encode(text), text
        assert ours.decode(orig.encode(text)) == orig.decode(orig.encode(text))


def test_gguf_llama_equals_hf(gguf_llama):
    """Q/K rows un-permuted, fp16 tensors bit-identical to the HF route, same logits."""
    case, tmp = gguf_llama
    src, out = os.path.join(tmp, "m.gguf"), os.path.join(tmp, "gguf.tpk")
    C.write_gguf_llama(case.ck, src)
    assert conv.main([src, "-o", out, "-q"]) == 0
    g, h = tpk.read(out), tpk.read(case.tpk)
    assert g.config["weight_format"] == "f16" and g.config["architecture"] == "llama"
    assert set(g.tensors) == set(h.tensors)
    for name in g.tensors:
        if name != "tokenizer":
            np.testing.assert_array_equal(g.tensors[name], h.tensors[name], err_msg=name)
    np.testing.assert_array_equal(engine_logits(out, case.prompt), engine_logits(case.tpk, case.prompt))


def test_gguf_llama_tokenizer(gguf_llama):
    from tokenizers import Tokenizer

    case, tmp = gguf_llama
    src, out = os.path.join(tmp, "tok.gguf"), os.path.join(tmp, "tok.tpk")
    C.write_gguf_llama(case.ck, src)
    conv.convert(src, out, progress=False)
    t = tpk.read(out)
    tok = t.config["tokenizer"]
    assert tok["type"] == "hf" and (tok["bos_id"], tok["eos_id"], tok["eot_id"]) == (0, 1, 2)
    assert tok["add_bos"] and tok["chat_template"] == C.CHAT_TEMPLATE
    ours = Tokenizer.from_str(t.tokenizer_bytes.decode())
    orig = Tokenizer.from_file(os.path.join(case.ck.path, "tokenizer.json"))
    for text in C.SENTENCES + ["  two  spaces\tand tab\n", "<|eot_id|>User: hi<|end_of_text|>", "ÿ☃ 𝄞"]:
        assert ours.encode(text, add_special_tokens=False).ids == orig.encode(text, add_special_tokens=False).ids
        ids = orig.encode(text, add_special_tokens=False).ids
        assert ours.decode(ids, skip_special_tokens=False) == orig.decode(ids, skip_special_tokens=False)


def test_gguf_llama_q8_0(gguf_llama):
    """Types other than TQ are dequantized: a Q8_0 FFN still meets the criteria."""
    case, tmp = gguf_llama
    src, out = os.path.join(tmp, "q8.gguf"), os.path.join(tmp, "q8.tpk")
    C.write_gguf_llama(case.ck, src, q8_0=("mlp.down_proj",))
    assert conv.main([src, "-o", out, "-q"]) == 0
    rel, _ = check_logits(engine_logits(out, case.prompt), case.ref_logits)
    print(f"gguf llama Q8_0 FFN: max |logit diff| = {rel:.2e} x max |logit|")


def test_gguf_errors(capsys, tmp_path, gguf_llama):
    import gguf

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    assert "GGUF" in _run_error(capsys, [str(bad), "-o", str(tmp_path / "x.tpk")])
    w = gguf.GGUFWriter(str(tmp_path / "arch.gguf"), "gpt2")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert "architecture 'gpt2'" in _run_error(capsys, [str(tmp_path / "arch.gguf"), "-o", str(tmp_path / "x.tpk")])
