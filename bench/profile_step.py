"""Where a decode step goes on the fast path: the model step, the output-projection kernel, the 72 layer
products, and the rest (PyTorch ops, attention, Python), for 1 and 25 sequences.

    python bench/profile_step.py        (prefix `chrt -f 20` on a busy machine)
"""

import time, torch
torch.set_num_threads(2)
import tinygemma
from tinygemma.cache import RowCaches, make_cache
lm = tinygemma.load(); m = lm.model; k = m.lm_head.table.kernels
def med(f, n=30):
    """Median milliseconds of n calls after 3 warm-ups."""
    for _ in range(3): f()
    ts=[]
    for _ in range(n):
        t=time.perf_counter(); f(); ts.append(time.perf_counter()-t)
    return sorted(ts)[n//2]*1e3
with torch.inference_mode():
    for B in (1, 25):
        # As the engine: one cache per sequence (RowCaches), each with a 300-token prompt.
        caches = [make_cache(m.config, 1, m.dtype, 512) for _ in range(B)]
        for c in caches:
            m(torch.randint(1000, 200000, (1, 300)), cache=c, last_only=True)
        tok = torch.randint(1000,200000,(B,1))
        pos = torch.full((B, 1), 300)
        step = med(lambda: m(tok, pos, RowCaches(caches)), 30 if B == 1 else 10)
        x = torch.randn(B, 640); xq = k.quantize(x)
        head = med(lambda: k.matmul_q8_0(xq, m.lm_head.table.q, m.lm_head.table.scales, 262144), 30 if B == 1 else 10)
        lin = [mod for mod in m.modules() if type(mod).__name__ == "NativeInt8Linear"]
        inputs = [k.quantize_rows(torch.randn(B, l.in_features)) for l in lin]
        def layers():
            for l, xi in zip(lin, inputs): k.matmul_rows(xi, l.q, l.scales, l.out_features)
        lay = med(layers, 20 if B == 1 else 10)
        nbytes = sum(l.q.numel() for l in lin)
        print(f"B={B}: step {step:.2f} ms; head kernel {head:.2f} ms; {len(lin)} layer products {lay:.2f} ms ({nbytes/lay/1e6:.1f} GB/s); rest {step-head-lay:.2f} ms")
