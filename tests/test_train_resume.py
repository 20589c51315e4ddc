"""Tokenizer round trip, and an interrupted training run resumes to exactly the
result of an uninterrupted one (tiny corpus, tiny model)."""
import json
import random

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("sentencepiece")

from ternary_train import qat, tokenizer  # noqa: E402

WORDS = ("the cat sat on a mat and it was good so we ran to town with her dog "
         "which barked at birds in trees while rain fell").split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    paras = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 60))).capitalize() + "."
             for _ in range(600)]
    paras.append("A long one: " + " ".join(rng.choice(WORDS) for _ in range(3000)) + ".")
    (d / "train.txt").write_text("".join(p + "\n" for p in paras))
    (d / "val.txt").write_text("".join(p + "\n" for p in paras[:40]))
    model = tokenizer.train_tokenizer(d / "train.txt", d / "tok300", vocab_size=300)
    tokenizer.tokenize_corpus(d, model)
    return d


def test_tokenizer_round_trip(corpus):
    sp = tokenizer.load(corpus / "tok300.model")
    text = "Hello,  world!\nDigits 1234 and ünïcödé — ok\n"
    assert sp.decode(sp.encode(text)) == text
    assert len(sp.encode("12")) == 2                      # split_digits
    # the file stream is the tokenization of the whole file
    ids = np.load(corpus / "tok300.val.npy")
    assert ids.tolist() == sp.encode((corpus / "val.txt").read_text())


def test_resume_is_exact(corpus, tmp_path):
    mk, tk = qat.CONFIGS["test"]
    mc, tc = qat.ModelConfig(**mk), qat.TrainConfig(**tk)
    full = qat.train(mc, tc, tmp_path / "full", corpus, log=lambda s: None, export=False)
    part = qat.train(mc, tc, tmp_path / "part", corpus, max_seconds=0.0, log=lambda s: None,
                     export=False)
    assert not part["finished"] and part["step"] < full["step"]
    done = qat.train(mc, tc, tmp_path / "part", corpus, resume=True, log=lambda s: None,
                     export=False)
    assert done["finished"] and done["step"] == full["step"]
    assert done["val_loss"] == full["val_loss"]
    assert json.loads((tmp_path / "part" / "final.json").read_text())["val_loss"] == full["val_loss"]
