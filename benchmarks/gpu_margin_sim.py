"""CPU simulation of the GPU search's certificate: how many tokens have more than R codes within
the margin (they cannot be certified by the candidate pass and go to the re-search).

The terms of the bound of kernels/nearest_code.py and csrc/cuda/nearest_code_sm90.cu (without
their 1% slack factors): centred operands rounded to bf16 or TF32, the measured rounding
residuals, E per token; a code is kept when its score is within 2E of the best. Exact scores in float32 matmul of the rounded operands (the GPU's products
are exact; its accumulation error is far below E's share for it).

    .venv/bin/python benchmarks/gpu_margin_sim.py            # N = 2048 tokens, K = 16384
"""
from __future__ import annotations

import torch


def tf32(t: torch.Tensor) -> torch.Tensor:
    bits = t.view(torch.int32)
    return ((bits + 0x1000) & -8192).view(torch.float32)


def simulate(x: torch.Tensor, e: torch.Tensor, prec: str) -> tuple[torch.Tensor, float]:
    D = x.shape[1]
    mu = e.mean(0)
    xc, ec = x - mu, e - mu
    rnd = (lambda t: t.bfloat16().float()) if prec == "bf16" else tf32
    xb, eb = rnd(xc), rnd(ec)
    rx = (xc - xb).norm(dim=1)
    re = (ec - eb).norm(dim=1).max()
    xn, emax = xc.norm(dim=1), ec.norm(dim=1).max()
    s = (ec * ec).sum(1)[None, :] - 2 * xb @ eb.T
    u = 2.0**-24
    g = (2 * D + 16) * u
    ah = 2 * (xn + rx)
    margin = g * (xn**2 + emax**2) + 2 * rx * emax + ah * re + g * ah * (emax + re) + 13 * u * (xn + emax) ** 2
    best = s.min(1, keepdim=True).values
    within = (s < best + 2 * margin[:, None]).sum(1)
    return within, float(margin.mean())


def main() -> None:
    torch.manual_seed(0)
    N, K = 2048, 16384
    print(f"N = {N}, K = {K}: % of tokens with more than R codes within 2E of their best")
    print(f"{'data':<16} {'cand':<5} {'mean E':>8} " + " ".join(f"{'R=' + str(r):>7}" for r in (2, 4, 8, 16)))
    for D in (256, 8):
        gens = {"randn": lambda n: torch.randn(n, D), "relu": lambda n: torch.relu(torch.randn(n, D)),
                "offset30": lambda n: torch.randn(n, D) + 30}
        for name, gen in gens.items():
            x, e = gen(N), gen(K)
            for prec in ("bf16", "tf32"):
                within, mean_e = simulate(x, e, prec)
                cells = " ".join(f"{float((within > r).float().mean()) * 100:6.2f}%" for r in (2, 4, 8, 16))
                print(f"D={D:<3} {name:<10} {prec:<5} {mean_e:8.3g} {cells}")


if __name__ == "__main__":
    main()
