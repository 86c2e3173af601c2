"""GPTQ: error-compensating rounding of a Linear weight to a symmetric integer grid, from the layer's input Hessian.

Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers" (ICLR 2023).
The layer's output error on calibration inputs X (tokens x in) is ||W X^T - Q X^T||^2 = tr((W-Q) H (W-Q)^T) with
H = X^T X. Columns are rounded one at a time (the Optimal Brain Quantizer step): the rounding error of column i,
divided by [H^-1]_ii, is spread over the columns not yet rounded through row i of the upper Cholesky factor of H^-1,
so they absorb it. Facts taken from the paper (not code): Cholesky of the inverse Hessian, lazy batch updates in
blocks of 128 columns, dampening of H by 1% of its mean diagonal, columns with zero Hessian diagonal (inputs that
never fire) set to zero.

Decisions, and why:
- The grid is edgekit's RTN grid (symmetric, levels -(2^(b-1)-1)..2^(b-1)-1, per output channel or per group of g
  input weights: quant.codes.symmetric_per_*), so every exporter, MatMulNBits, OpenVINO INT4 and the fused
  onnxruntime-genai decoder take GPTQ's codes unchanged: GPTQ only chooses different codes.
- Group scales are set when the sweep reaches a group's first column, from that group's weights as the earlier
  columns' updates left them (within the current 128-column block too), so the scale fits the weights it rounds.
  Per-channel scales are set once, from the original row.
- Natural column order (no act-order): act-order permutes columns, so group scales would no longer cover
  consecutive input weights, which is what the runtimes' block-wise formats need.
- Float64 for the Hessian's factorisations (a 1536 x 1536 Cholesky is cheap; float32 failed on near-singular H of
  layers with rarely active inputs in testing-size models).
"""
from __future__ import annotations

import torch

from .codes import WeightCode


def hessian(x: torch.Tensor) -> torch.Tensor:
    """H = X^T X / n of a layer's inputs X (tokens x in), float64."""
    x = x.reshape(-1, x.shape[-1]).to(torch.float64)
    return x.T @ x / max(x.shape[0], 1)


def _inverse_cholesky(h: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(upper Cholesky factor of (H + damp * mean(diag H) * I)^-1, mask of dead input columns)."""
    h = h.clone().to(torch.float64)
    dead = torch.diagonal(h) <= 0
    h[dead, dead] = 1.0
    lam = damp * torch.diagonal(h).mean()
    for attempt in range(6):  # a semi-definite H (fewer tokens than inputs) needs the damping; more if it fails
        try:
            hd = h + (lam * (10 ** attempt)) * torch.eye(h.shape[0], dtype=h.dtype)
            l_ = torch.linalg.cholesky(hd)
            hinv = torch.cholesky_inverse(l_)
            return torch.linalg.cholesky(hinv, upper=True), dead
        except RuntimeError:  # torch.linalg.LinAlgError subclasses it
            continue
    raise RuntimeError("GPTQ: the layer's input Hessian is not positive definite even with 10^5 x the damping")


def gptq_quantize(w: torch.Tensor, h: torch.Tensor, bits: int, group_size: int | None = None, block: int = 128,
                  damp: float = 0.01) -> WeightCode:
    """GPTQ codes of a 2-D weight [out, in] for input Hessian `h` [in, in] (module doc); symmetric grid, per output
    channel or per `group_size` consecutive input weights (in must be a multiple of it)."""
    if w.dim() != 2 or h.shape != (w.shape[1], w.shape[1]):
        raise ValueError(f"GPTQ needs a weight [out, in] and a Hessian [in, in]; got {tuple(w.shape)} and "
                         f"{tuple(h.shape)}")
    out, n_in = w.shape
    if group_size is not None and n_in % group_size:
        raise ValueError(f"input size {n_in} is not a multiple of group_size {group_size}")
    qmax = 2 ** (bits - 1) - 1
    u, dead = _inverse_cholesky(h, damp)
    wk = w.detach().to(torch.float64).clone()
    wk[:, dead] = 0.0
    codes = torch.zeros_like(wk)
    if group_size is None:
        amax = wk.abs().amax(dim=1)
        scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
        col_scale = scale
    else:
        scale = torch.ones(out, n_in // group_size, dtype=torch.float64)
    for i1 in range(0, n_in, block):
        i2 = min(i1 + block, n_in)
        w1 = wk[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            c = i1 + i
            if group_size is not None and c % group_size == 0:
                g = c // group_size
                lo, hi = i, min(i + group_size, i2 - i1)  # this block's updated columns of the group ...
                grp = torch.cat([w1[:, lo:hi], wk[:, i1 + hi:c + group_size]], dim=1)  # ... and the rest
                amax = grp.abs().amax(dim=1)
                scale[:, g] = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
                col_scale = scale[:, g]
            col = w1[:, i]
            q = torch.clamp(torch.round(col / col_scale), -qmax, qmax)
            codes[:, c] = q
            e = (col - q * col_scale) / u1[i, i]
            w1[:, i:] -= e.unsqueeze(1) @ u1[i, i:].unsqueeze(0)
            err1[:, i] = e
        wk[:, i2:] -= err1 @ u[i1:i2, i2:]
    return WeightCode(codes.to(torch.int16), scale.to(torch.float32), 0, bits, group_size=group_size)


def output_error(w: torch.Tensor, q: torch.Tensor, h: torch.Tensor) -> float:
    """tr((W - Q) H (W - Q)^T): the layer's mean squared output error per token on the inputs H came from."""
    d = (w.detach().to(torch.float64) - q.detach().to(torch.float64))
    return float(torch.einsum("oi,ij,oj->", d, h.to(torch.float64), d))


__all__ = ["gptq_quantize", "hessian", "output_error"]
