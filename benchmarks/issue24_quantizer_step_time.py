"""Issue 24: CPU time of one FastSemanticQuantizer training step, fixed groups vs rebalancing + split re-seeds.

The demo's token shape (16 images x 8 x 8 tokens, D = 32, 9 frequency-sized groups) at K = 128 and 8192;
the two quantizers alternate call by call (200 calls each) and the medians of the thread CPU time are
compared, so other load on the machine shifts both alike.

    python benchmarks/issue24_quantizer_step_time.py
"""
import time, statistics, torch
torch.set_num_threads(1)
from sgcvq import FastSemanticQuantizer
from sgcvq.config import demo_config
cfg = demo_config(9, 10).model
for K in (128, 8192):
    thr = 0.1 if K == 128 else 0.0016
    idle = 20 if K == 128 else 40
    qs = {}
    for name, kw in (("today", {}), ("rebal_split", dict(rebalance_every=10, reseed_split=True))):
        torch.manual_seed(0)
        qs[name] = FastSemanticQuantizer(32, K, num_classes=9, group_sizes="frequency", class_frequencies=list(cfg.class_frequencies),
                                         min_codes_per_class=2, threshold_dead=thr, max_idle_steps=idle, kmeans_init=True,
                                         level_weights=[1.0, 1.0], level_dims=[16, 16], check_labels=False, **kw)
        qs[name].train()
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(16, 8, 8, 32, generator=g) for _ in range(20)]
    ls = [torch.randint(0, 9, (16, 8, 8), generator=g) for _ in range(20)]
    for q in qs.values():
        for i in range(3): q(xs[i], ls[i])
    t = {n: [] for n in qs}
    for rep in range(200):
        for n, q in qs.items():
            x, l = xs[rep % 20], ls[rep % 20]
            s = time.thread_time(); q(x, l); t[n].append(time.thread_time() - s)
    m = {n: statistics.median(v) * 1e3 for n, v in t.items()}
    print(f"K={K}: median quantizer train step today {m['today']:.3f} ms, rebal_split {m['rebal_split']:.3f} ms, ratio {m['rebal_split']/m['today']:.2f}")
