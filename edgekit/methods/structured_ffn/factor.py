"""Structured linear layers (LowRank, BlockDense, BlockShuffle) and their Frobenius-optimal projections.

Spec: shared/methods/structured_ffn.md §2-§4. Every layer maps x (..., N) -> y (..., M) with small factor
matrices only, written as plain (batched) matmuls + reshapes/transposes so the ONNX export stores the factors
and nothing else (block-diagonal products become one broadcast MatMul of a (K, n, p) tensor, no Gather).
`dense_weight()` gives the equivalent (M, N) matrix S(I)ᵀ: the guide init for self-guided training and the
pre-merged form. An optional dense guide (SGT) mixes in as  α·(W_g x) + (1-α)·S(x) + b.

Factor layouts (math layout, as the paper's code):
* LowRank(r):        v (r, N), u (M, r)                          y = u (v x)
* BlockDense(K, r):  blk (K, q=r/K, p=N/K), u (M, r)             y = u [blk_1 x_1; ...; blk_K x_K]
* BlockShuffle(K):   w1 (K, q, p), w2 (K, s=M/K, q), q = min(N, M)/K
  z = bd(w1) x (flat index i = k·q + j);  block ℓ = i mod K takes z_i at position ⌊i/K⌋;  u_ℓ = w2_ℓ z'_ℓ;
  y[σ·K + ℓ] = u_ℓ[σ].  Equivalently W = P_out · bd(w2) · P_mid · bd(w1).
"""
from __future__ import annotations

import math

import torch
from torch import nn

Tensor = torch.Tensor


def _svd_factors(w: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Balanced rank-`rank` truncated SVD in float64: (A (m, rank), B (rank, n)) with A·B optimal (Eckart-Young)."""
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    k = min(rank, s.numel())
    a = torch.zeros(w.shape[0], rank, dtype=torch.float64)
    b = torch.zeros(rank, w.shape[1], dtype=torch.float64)
    root = s[:k].sqrt()
    a[:, :k] = u[:, :k] * root
    b[:k] = root[:, None] * vh[:k]
    return a, b


class _Structured(nn.Module):
    """Common part: bias, optional SGT guide, mixing weight alpha and the reduce-flop switch."""

    def __init__(self, n: int, m: int, bias: bool):
        super().__init__()
        self.in_features, self.out_features = n, m
        self.bias = nn.Parameter(torch.zeros(m)) if bias else None
        self.guide: nn.Parameter | None = None
        self.alpha = 0.0
        self.sample_guide = False  # reduce_flop: skip the guide with probability 1 - alpha (set by the trainer)

    def structured(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        y = self.structured(x)
        use = self.guide is not None and self.alpha > 0
        if use and (not self.sample_guide or float(torch.rand(())) < self.alpha):
            y = self.alpha * nn.functional.linear(x, self.guide) + (1 - self.alpha) * y
        return y if self.bias is None else y + self.bias

    @torch.no_grad()
    def dense_weight(self) -> Tensor:
        """The (M, N) matrix of the structured product (bias and guide excluded): S(I)ᵀ."""
        p = next(self.parameters())
        eye = torch.eye(self.in_features, dtype=p.dtype, device=p.device)
        return self.structured(eye).T.contiguous()

    def factor_params(self) -> int:
        """Parameters of the factors (+ bias), the guide excluded."""
        return sum(p.numel() for n, p in self.named_parameters() if n != "guide")

    def set_guide(self, w: Tensor | None) -> None:
        """Attach a trainable dense guide (SGT) initialised to `w`, or drop it (None)."""
        ref = next(self.parameters())
        self.guide = None if w is None else nn.Parameter(w.detach().clone().to(device=ref.device, dtype=ref.dtype))
        self.alpha = 1.0 if w is not None else 0.0


class LowRank(_Structured):
    """y = U(Vx): two thin matmuls, r(N + M) parameters."""

    def __init__(self, n: int, m: int, rank: int, bias: bool = True):
        super().__init__(n, m, bias)
        self.rank = rank
        self.v = nn.Parameter(torch.zeros(rank, n))
        self.u = nn.Parameter(torch.zeros(m, rank))

    def structured(self, x: Tensor) -> Tensor:
        return nn.functional.linear(nn.functional.linear(x, self.v), self.u)

    @torch.no_grad()
    def project(self, w: Tensor) -> None:
        """Truncated SVD, V = √S_r V_rᵀ, U = U_r √S_r: the best rank-r approximation of W."""
        a, b = _svd_factors(w, self.rank)
        self.u.copy_(a.to(self.u.dtype))
        self.v.copy_(b.to(self.v.dtype))


class BlockDense(_Structured):
    """y = U · bd(B) x: K independent (q x p) blocks, then one dense (M x r) matmul; r(M + N/K) parameters."""

    def __init__(self, n: int, m: int, blocks: int, rank: int, bias: bool = True):
        super().__init__(n, m, bias)
        if n % blocks or rank % blocks:
            raise ValueError(f"BlockDense needs N ({n}) and r ({rank}) divisible by K ({blocks})")
        self.blocks, self.rank = blocks, rank
        self.blk = nn.Parameter(torch.zeros(blocks, rank // blocks, n // blocks))
        self.u = nn.Parameter(torch.zeros(m, rank))

    def structured(self, x: Tensor) -> Tensor:
        k, q, p = self.blk.shape
        lead = x.shape[:-1]
        z = x.reshape(-1, k, p).transpose(0, 1)  # (K, n, p)
        z = torch.matmul(z, self.blk.transpose(1, 2))  # (K, n, q)
        z = z.transpose(0, 1).reshape(*lead, k * q)
        return nn.functional.linear(z, self.u)

    @torch.no_grad()
    def project(self, w: Tensor) -> None:
        """Column block W_k (M x N/K) ≈ U_k B_k by rank-r/K SVD each; the blocks are independent, so this is optimal."""
        k, q, p = self.blk.shape
        for i in range(k):
            a, b = _svd_factors(w[:, i * p:(i + 1) * p], q)
            self.u[:, i * q:(i + 1) * q] = a.to(self.u.dtype)
            self.blk[i] = b.to(self.blk.dtype)


class BlockShuffle(_Structured):
    """Monarch-style y = P_out bd(W2) P_mid bd(W1) x; min(N, M)(N + M)/K parameters."""

    def __init__(self, n: int, m: int, blocks: int, bias: bool = True):
        super().__init__(n, m, bias)
        if n % blocks or m % blocks:
            raise ValueError(f"BlockShuffle needs N ({n}) and M ({m}) divisible by K ({blocks})")
        k, q = blocks, min(n, m) // blocks
        self.blocks = k
        self.w1 = nn.Parameter(torch.zeros(k, q, n // k))
        self.w2 = nn.Parameter(torch.zeros(k, m // k, q))

    def structured(self, x: Tensor) -> Tensor:
        k, q, p = self.w1.shape
        s = self.w2.shape[1]
        lead = x.shape[:-1]
        z = torch.matmul(x.reshape(-1, k, p).transpose(0, 1), self.w1.transpose(1, 2))  # (K, n, q)
        z = z.transpose(0, 1).reshape(-1, q, k).permute(2, 0, 1)  # shuffle: i = ρ·K + ℓ -> (ℓ, n, ρ)
        u = torch.matmul(z, self.w2.transpose(1, 2))  # (K, n, s)
        return u.permute(1, 2, 0).reshape(*lead, s * k)  # y[σ·K + ℓ] = u_ℓ[σ]

    def groups(self) -> list[tuple[int, int, list[int]]]:
        """(k, ℓ, [j...]): rows j of W1_k that feed W2-block ℓ (at column ⌊(k·q + j)/K⌋); each pair is independent."""
        k, q, _ = self.w1.shape
        out = []
        for kk in range(k):
            for ell in range(k):
                out.append((kk, ell, [j for j in range(q) if (kk * q + j) % k == ell]))
        return out

    @torch.no_grad()
    def project(self, w: Tensor) -> None:
        """Sub-matrix W[ℓ::K, k·p:(k+1)·p] gets the rank-|J(k,ℓ)| SVD of itself: optimal, sub-blocks share nothing."""
        k, q, p = self.w1.shape
        self.w1.zero_()
        self.w2.zero_()
        for kk, ell, js in self.groups():
            if not js:
                continue
            a, b = _svd_factors(w[ell::k, kk * p:(kk + 1) * p], len(js))
            for t, j in enumerate(js):
                self.w1[kk, j] = b[t].to(self.w1.dtype)
                self.w2[ell, :, (kk * q + j) // k] = a[:, t].to(self.w2.dtype)


def permutations(n: int, m: int, blocks: int) -> tuple[Tensor, Tensor]:
    """(P_out (M x M), P_mid (Kq x Kq)) so that BlockShuffle's matrix is P_out·bd(W2)·P_mid·bd(W1)."""
    k, q = blocks, min(n, m) // blocks
    s = m // k
    p_mid = torch.zeros(k * q, k * q)
    for i in range(k * q):  # bd(W1) output i goes to W2-block ℓ = i mod K, position ρ = ⌊i/K⌋ -> row ℓ·q + ρ
        p_mid[(i % k) * q + i // k, i] = 1
    p_out = torch.zeros(m, m)
    for ell in range(k):  # bd(W2) output row ℓ·s + σ goes to y[σ·K + ℓ]
        for sig in range(s):
            p_out[sig * k + ell, ell * s + sig] = 1
    return p_out, p_mid


def structured_params(kind: str, n: int, m: int, rank: int = 0, blocks: int = 1) -> int:
    """Factor parameters (no bias) of one layer, by the spec's table formulas."""
    if kind == "lowrank":
        return rank * (n + m)
    if kind == "blockdense":
        return rank * (m + n // blocks)
    if kind == "blockshuffle":
        return min(n, m) * (n + m) // blocks
    raise ValueError(kind)


def make_layer(kind: str, lin: nn.Linear, rank: int = 0, blocks: int = 1) -> _Structured:
    """A structured layer projected from `lin`'s weight (bias copied), same dtype."""
    n, m = lin.in_features, lin.out_features
    has_b = lin.bias is not None
    layer: _Structured
    if kind == "lowrank":
        layer = LowRank(n, m, rank, has_b)
    elif kind == "blockdense":
        layer = BlockDense(n, m, blocks, rank, has_b)
    elif kind == "blockshuffle":
        layer = BlockShuffle(n, m, blocks, has_b)
    else:
        raise ValueError(kind)
    layer = layer.to(lin.weight.dtype)
    layer.project(lin.weight.detach())
    if has_b:
        layer.bias.data.copy_(lin.bias.detach())
    return layer


def divisors(n: int) -> list[int]:
    """Positive divisors of n, ascending."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


STRUCTURED = (LowRank, BlockDense, BlockShuffle)
