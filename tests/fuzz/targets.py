"""The fuzz targets: name -> harness script; the seed corpus and saved crashes live under
corpus/<name>/ and regressions/<name>/."""
import importlib.util
import os

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = {
    "tpk": "fuzz_tpk.py",                        # engine/formats/tpk.py + Engine load + one step
    "gguf": "fuzz_gguf.py",                      # engine/convert/gguf.py via ternary-convert
    "hf": "fuzz_hf.py",                          # engine/convert/__init__.py: config.json + safetensors
    "sentencepiece": "fuzz_sentencepiece.py",    # engine/runtime/tokenizer.py, .model bytes
    "tokenizer_json": "fuzz_tokenizer_json.py",  # engine/runtime/tokenizer.py, tokenizer.json bytes
}


def script(target):
    return os.path.join(HERE, TARGETS[target])


def load(target):
    """The harness module of `target` (its check(data) is what the fuzzer calls)."""
    spec = importlib.util.spec_from_file_location(f"fuzz_harness_{target}", script(target))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def inputs(kind, target):
    """Paths of the saved inputs of `target`: kind "corpus" (seeds) or "regressions"."""
    d = os.path.join(HERE, kind, target)
    if not os.path.isdir(d):
        return []
    return sorted(os.path.join(d, f) for f in os.listdir(d) if not f.startswith("."))
