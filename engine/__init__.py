"""ternary-engine: CPU inference for ternary (BitNet b1.58) language models.

    from engine import Engine
    eng = Engine("model.tpk")            # or Engine() for the embedded default model
    eng.generate("prompt", max_new_tokens=64, temperature=0.0)   # -> str (the continuation)
    eng.generate([1, 2, 3], max_new_tokens=8, temperature=0)     # ids in -> new ids out
    for piece in eng.stream("prompt"): ...                       # text pieces as they are made
    eng.forward(ids)                     # -> np.float32 [len(ids), vocab] logits
    eng.chat([{"role": "user", "content": "Hi"}])                # the model's chat template

This file only re-exports. Packages (docs/architecture.md): runtime (model, KV cache,
sampling, tokenizer, generation, batching), formats (.tpk), convert (HF / GGUF -> .tpk),
serve (HTTP), kernels.py (the one C++ boundary), quant.py (the quantizers).
"""
from engine.runtime.generate import (DEFAULT_MODEL, Engine, GenerationStats, StopStrings,
                                     decode_one_token, prefill)
from engine.runtime.kvcache import ContextError  # a user error
from engine.runtime.sampling import SamplingParams

__all__ = ["Engine", "ContextError", "SamplingParams", "DEFAULT_MODEL",
           "prefill", "decode_one_token", "GenerationStats", "StopStrings"]
