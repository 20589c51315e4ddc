"""TL1 beside T2 at 1 thread, alternating, best of rounds (min is the figure least hurt by a
shared machine): GEMV hot in cache and from DRAM (copies cycling over 128 MB), an M=8 step from
DRAM, GEMM M=128. Int32 results are validated by benchmarks/bench_kernels.py and the tests;
this only times.  python benchmarks/tl1_vs_t2.py [isa]
"""
import numpy as np, time, sys
from engine import kernels as K
K.set_threads(1); K.set_isa(sys.argv[1] if len(sys.argv)>1 else "avx512")
r=np.random.default_rng(0)
shapes=[(640,2560),(2560,2560),(6912,2560),(2560,6912)]
res={}
def run(fmt,copies,q,k,reps):
    best=1e9
    for _ in range(reps):
        t0=time.perf_counter()
        for c in copies: K.ternary_matmul_i32(fmt,c,k,q)
        best=min(best,(time.perf_counter()-t0)/len(copies))
    return best
for n,k in shapes:
    w=r.integers(-1,2,size=(n,k),dtype=np.int8)
    P={f:K.pack(f,w) for f in ("t2","tl1")}
    nc=max(1,int(128e6/P["t2"].nbytes))
    D={f:[P[f].copy() for _ in range(nc)] for f in P}
    Q={m:r.integers(-127,128,size=(m,k),dtype=np.int8) for m in (1,8,128)}
    out={}
    for rnd in range(5):
        for f in ("t2","tl1"):
            for kind,copies,m in (("hot",[P[f]]*8,1),("dram",D[f],1),("m8",D[f],8),("gemm",[P[f]],128)):
                s=run(f,copies,Q[m],k,3 if kind!="gemm" else 2)
                out[(f,kind)]=min(out.get((f,kind),1e9),s)
    for f in ("t2","tl1"):
        h,d,m8,g=(out[(f,x)] for x in ("hot","dram","m8","gemm"))
        print(f"{n}x{k} {f:4} hot {n*k/h/1e9:6.1f} Gw/s  dram {n*k/d/1e9:6.1f} Gw/s  m8 {m8*1e6:7.0f}us (x{m8/d:4.2f} of dram gemv)  gemm128 {2*n*k*128/g/1e9:6.0f} GOPS", flush=True)
