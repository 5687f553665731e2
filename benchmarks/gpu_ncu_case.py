"""One Triton nearest_code call for Nsight Compute (benchmarks/gpu_run.sh, step ncu): the floors'
shape at width D, float32 randn, no autotuning (SGCVQ_TRITON_AUTOTUNE=0). The first launch of
_nearest_code_search_kernel is the candidate pass, the one to profile (the compile happens before
it and is not part of the profiled launch).

    ncu -k regex:_nearest_code_search_kernel --launch-count 1 python benchmarks/gpu_ncu_case.py 256
"""
import sys

import torch

from sgcvq.kernels.nearest_code import nearest_code_with_stats

D = int(sys.argv[1])
N, K = (262144, 16384) if D <= 16 else (65536, 16384)
g = torch.Generator(device="cuda").manual_seed(0)
x = torch.randn(N, D, device="cuda", generator=g)
codebook = torch.randn(K, D, device="cuda", generator=g)
nearest_code_with_stats(x, codebook)
torch.cuda.synchronize()
