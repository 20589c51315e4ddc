"""The C++ kernels (engine._kernels), re-exported. API and layouts: docs/CONTRACTS.md, csrc/ternary.h.

Dispatch: the best ISA of this CPU is chosen at import; TERNARY_ISA=ref|avx2|avx512|neon overrides.
"""
import os

from engine import _kernels
from engine._kernels import (  # noqa: F401  (the public kernel API)
    active_isa,
    attention,
    available_isas,
    f16_linear,
    f16_linear_fused,
    int8_linear,
    kv_store_int8,
    pack,
    physical_cores,
    q4_linear,
    quantize_rows,
    rmsnorm,
    rmsnorm_quantize_rows,
    rope_neox,
    sample_cut_draw,
    sample_top_k,
    row_bytes,
    set_isa,
    set_threads,
    ternary_linear,
    ternary_linear_fused,
    ternary_matmul_i32,
    threads,
    unpack,
)

FORMATS = ("t2", "t1", "tl1", "tl2")

_requested = os.environ.get("TERNARY_ISA")
if _requested and _requested not in _kernels.available_isas():
    raise ImportError(
        f"TERNARY_ISA={_requested!r} is not available on this CPU "
        f"(available: {', '.join(_kernels.available_isas())})"
    )
