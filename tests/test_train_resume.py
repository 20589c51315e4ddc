"""Tokenizer round trip, and an interrupted training run resumes to exactly the
result of an uninterrupted one (tiny corpus, tiny model)."""
import json
import math
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


def test_time_schedule_follows_the_step_schedule():
    tc = qat.TrainConfig()
    total = 10_000
    for step in (150, 199, 200, 1000, 4999, 5000, 7500, 9999):
        lr_s, wd_s = qat.lr_wd_at(step, total, tc, 3e-3)
        lr_t, wd_t = qat.lr_wd_frac(step / total, step, tc, 3e-3)
        assert wd_s == wd_t
        assert lr_t == pytest.approx(lr_s, rel=0.02, abs=3e-6), step
    # stage 1 ends at 0.53 x peak with weight decay; stage 2 restarts at 0.33 x peak without
    assert qat.lr_wd_frac(0.4999, 10**6, tc, 1.0)[0] == pytest.approx(0.53, abs=1e-3)
    assert qat.lr_wd_frac(0.5, 10**6, tc, 1.0) == (pytest.approx(0.33), 0.0)
    assert qat.lr_wd_frac(1.0, 10**6, tc, 1.0)[0] == pytest.approx(0.0, abs=1e-12)
    # warmup counts steps, not seconds: 10 steps into a run that was paused for 40 % of its
    # budget the LR is still 11/200 of the schedule's
    assert qat.lr_wd_frac(0.4, 10, tc, 1.0)[0] == pytest.approx(11 / 200 * qat.lr_wd_frac(0.4, 10**6, tc, 1.0)[0])


def test_time_budget_run_stops_on_the_clock_and_finishes(corpus, tmp_path):
    mk, tk = qat.CONFIGS["test"]
    mc = qat.ModelConfig(**mk)
    tc = qat.TrainConfig(**{**tk, "tokens": 10**9, "time_budget_s": 3.0, "autocast": "bf16"})
    res = qat.train(mc, tc, tmp_path / "timed", corpus, log=lambda s: None, export=False)
    assert res["finished"] and 0 < res["step"] < tc.tokens // (tc.batch_size * tc.seq_len)
    assert 3.0 <= res["elapsed_s"] < 60
    assert math.isfinite(res["val_loss"])
    rows = (tmp_path / "timed" / "log.csv").read_text().splitlines()
    assert int(rows[-1].split(",")[0]) == res["step"]     # the last step is logged
    assert float(rows[-1].split(",")[3]) < 0.33 * tc.lr   # in stage 2 at the end
