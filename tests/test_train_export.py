"""The trainer's model is transformers' BitNet graph: an exported checkpoint loads in
transformers and gives the same logits as the trainer's quantized forward."""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

from ternary_train import qat  # noqa: E402


def _tiny(quant, num_kv_heads=1):
    cfg = qat.ModelConfig(vocab_size=301, hidden_size=64, intermediate_size=160, num_layers=2,
                          num_heads=2, num_kv_heads=num_kv_heads, head_dim=32, max_position=48,
                          quant=quant, init_std=0.1)
    model = qat.build_model(cfg, seed=0)
    # non-trivial norms, so a misplaced sub-norm shows up in the logits
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.mark.parametrize("quant,kv", [("absmean", 1), ("absmedian", 2), ("none", 1)])
def test_hf_export_matches_trainer(tmp_path, quant, kv):
    model = _tiny(quant, kv)
    qat.export_hf(model, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, dtype=torch.float32, attn_implementation="eager").eval()
    ids = torch.from_numpy(np.random.default_rng(0).integers(3, 301, size=(2, 40)))
    with torch.no_grad():
        ours = model(ids)
        theirs = hf(ids).logits.float()
    # int8 activation rounding can flip on float noise; demand near-identity overall
    diff = (ours - theirs).abs()
    assert diff.mean().item() < 1e-3 * ours.abs().mean().item()
    assert (ours.argmax(-1) == theirs.argmax(-1)).float().mean().item() > 0.97


def test_pack_layout_matches_transformers():
    from transformers.integrations.bitnet import unpack_weights
    t = torch.from_numpy(np.random.default_rng(1).integers(-1, 2, size=(12, 7))).float()
    packed = qat._pack_hf(t)
    assert packed.shape == (3, 7) and packed.dtype == torch.uint8
    assert torch.equal(unpack_weights.__wrapped__(packed, torch.float32)
                       if hasattr(unpack_weights, "__wrapped__")
                       else unpack_weights(packed, torch.float32), t)


def test_act_quant_is_transformers_actquant():
    from transformers.integrations.bitnet import ActQuant
    x = torch.randn(5, 33) * 3
    x[0, :4] = torch.tensor([0.5, -1.5, 2.5, 127.0]) / 127 * 4   # exact ties
    ref = ActQuant.forward.__wrapped__(None, x) if hasattr(ActQuant.forward, "__wrapped__") \
        else ActQuant.apply(x)
    assert torch.equal(qat.act_quant(x), ref)


def test_ste_gradients_flow():
    model = _tiny("absmean").train()
    ids = torch.randint(3, 301, (2, 16))
    loss = torch.nn.functional.cross_entropy(model(ids).reshape(-1, 301), ids.reshape(-1))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


def test_hf_tokenizer_matches_sentencepiece(tmp_path):
    pytest.importorskip("google.protobuf")   # transformers reads tokenizer.model through it
    from ternary_train import tokenizer
    rng = np.random.default_rng(0)
    words = "the cat sat on a mat and it was good so we ran to town".split()
    (tmp_path / "train.txt").write_text(
        "".join(" ".join(rng.choice(words, 20)) + ".\n" for _ in range(300)))
    sp_model = tokenizer.train_tokenizer(tmp_path / "train.txt", tmp_path / "tok300", vocab_size=300)
    qat.export_hf(_tiny("absmean"), tmp_path / "hf", sp_model)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    sp = tokenizer.load(sp_model)
    text = "The cat ran  to town.\nIn 1811, Ünï."
    ids = tok(text)["input_ids"]
    assert ids == [1] + sp.encode(text)
    assert tok.decode(ids, skip_special_tokens=True) == text
